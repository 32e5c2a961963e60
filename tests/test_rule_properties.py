"""Hypothesis properties of the pure rule functions (issue 4).

schemas/campaign.py: illegal_characters (R-OC-10), the card text length
(R-OC-3), send-time windows (R-WIN-1, R-PH-2), phase order (R-PH-1).
workflows/calendar.py day_window: sending starts at or after 08:00 local and
before the close, which is 22:00 local - in random IANA zones on random days,
with the days of DST transitions drawn on purpose.
"""

from __future__ import annotations

import unicodedata
import zoneinfo
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from pydantic import TypeAdapter, ValidationError
from sluice.kinds import CampaignSpec
from sluice.kinds.phased import PHASE_ORDER, PhasedSpec, PhaseName, PhaseSpec
from sluice.schemas.campaign import illegal_characters
from sluice.schemas.rules import WINDOW_CLOSE, WINDOW_OPEN, error_details
from sluice.schemas.text import BLANK_LOOKALIKES, is_blank
from sluice.workflows.calendar import day_window

PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ILLEGAL = {"Cc", "Cf", "Co", "Cs", "Cn"}
ALLOWED = {"\n", "\u200d", "\ufe0f", "\ufe0e"}
EMOJI = ["🎁", "🙂", "👍🏽", "👨‍👩‍👧", "❤️", "🇨🇳", "☺︎", "🧑🏻‍💻"]
ZONES = sorted(zoneinfo.available_timezones() - {"localtime", "posixrules", "Factory"})
SPEC = TypeAdapter(CampaignSpec)


def _errors(exc: ValidationError) -> list[tuple[str, str]]:
    return [(d["field"], d["rule"]) for d in error_details(exc.errors())]


# ---------------------------------------------------------------- R-OC-10


@PROPS
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=60))
def test_illegal_characters_are_exactly_the_illegal_categories(text):
    expected = [f"U+{ord(c):04X}" for c in text if c not in ALLOWED and unicodedata.category(c) in ILLEGAL]
    assert illegal_characters(text) == expected


@PROPS
@given(st.lists(st.sampled_from(EMOJI) | st.text(alphabet=st.characters(categories=["L", "N", "P", "Zs"]),
                                                 max_size=5), max_size=10))
def test_emoji_and_ordinary_text_are_legal(parts):
    assert illegal_characters("".join(parts)) == []


@PROPS
@given(st.text(alphabet=st.characters(categories=["L", "N"]), min_size=1, max_size=20),
       st.characters(categories=["Cc", "Cf", "Co", "Cn"], exclude_characters="".join(ALLOWED)),
       st.integers(min_value=0, max_value=20))
def test_one_illegal_character_anywhere_refuses_every_text_field(text, bad, at):
    dirty = text[:at] + bad + text[at:]
    for field in ("card_text", "body", "scene", "title"):
        spec = _oldcust(**{field: dirty[:30]})
        if bad not in spec[field]:
            continue
        with pytest.raises(ValidationError) as exc:
            SPEC.validate_python(spec)
        assert (field, "R-OC-10") in _errors(exc.value)


# ---------------------------------------------------------------- R-OC-3


def _oldcust(**over) -> dict:
    spec = {"kind": "K-OLDCUST", "shop_id": "s1", "campaign_id": "c1", "scene": "Spring",
            "card_text": "Hello", "send_date": "2030-05-01"}
    spec.update(over)
    return spec


@PROPS
@given(st.lists(st.sampled_from(EMOJI) | st.characters(categories=["L", "N", "P", "Zs"], exclude_characters=BLANK_LOOKALIKES),
                min_size=1, max_size=80))
def test_card_text_is_refused_exactly_when_over_50_characters(parts):
    text = "".join(parts)
    assume(not is_blank(text))  # a blank card is R-OC-10's refusal (tests/test_input_rules.py)
    if len(text) <= 50:
        assert SPEC.validate_python(_oldcust(card_text=text)).card_text == text
    else:
        with pytest.raises(ValidationError) as exc:
            SPEC.validate_python(_oldcust(card_text=text))
        assert _errors(exc.value) == [("card_text", "R-OC-3")]


# ---------------------------------------------------------------- R-WIN-1 / R-PH-2 send times


@PROPS
@given(st.times())
@example(time(21, 59, 59))
@example(time(22, 0))
def test_oldcust_send_time_is_accepted_exactly_inside_08_00_to_22_00(t):
    ok = WINDOW_OPEN <= t < WINDOW_CLOSE  # 21:59:59 is inside: the window closes at 22:00
    if ok:
        assert SPEC.validate_python(_oldcust(send_time=t.isoformat())).send_time == t
    else:
        with pytest.raises(ValidationError) as exc:
            SPEC.validate_python(_oldcust(send_time=t.isoformat()))
        assert _errors(exc.value) == [("send_time", "R-WIN-1")]


@PROPS
@given(st.times())
def test_phase_send_time_is_accepted_exactly_inside_08_00_to_21_00(t):
    phase = {"name": "promote", "start_date": "2030-05-01", "end_date": "2030-05-02", "text": "x",
             "send_time": t.isoformat()}
    if WINDOW_OPEN <= t <= time(21, 0):
        assert PhaseSpec.model_validate(phase).send_time == t
    else:
        with pytest.raises(ValidationError) as exc:
            PhaseSpec.model_validate(phase)
        assert [(d["field"], d["rule"]) for d in error_details(exc.value.errors())] == [("send_time", "R-PH-2")]


@PROPS
@given(st.times(timezones=st.timezones()).filter(lambda t: t.tzinfo is not None and t.utcoffset() is not None))
def test_a_send_time_with_an_offset_is_refused_not_crashed(t):
    with pytest.raises(ValidationError) as exc:
        SPEC.validate_python(_oldcust(send_time=t.isoformat()))
    assert _errors(exc.value) == [("send_time", "R-WIN-1")]


# ---------------------------------------------------------------- R-PH-1 phase order


@st.composite
def phase_lists(draw):
    names = draw(st.lists(st.sampled_from(list(PhaseName)), min_size=1, max_size=3))
    start = date(2030, 1, 1) + timedelta(days=draw(st.integers(0, 300)))
    phases = []
    for name in names:
        start += timedelta(days=draw(st.integers(-3, 4)))
        length = draw(st.integers(0, 5))
        phases.append({"name": name.value, "start_date": start.isoformat(),
                       "end_date": (start + timedelta(days=length)).isoformat(), "text": "x"})
        start += timedelta(days=length)
    return phases


@PROPS
@given(phase_lists())
def test_phases_are_accepted_exactly_when_in_order_once_each_with_promote_and_no_overlap(phases):
    names = [PhaseName(p["name"]) for p in phases]
    in_order = names == sorted(set(names), key=PHASE_ORDER.index)
    no_overlap = all(date.fromisoformat(b["start_date"]) > date.fromisoformat(a["end_date"])
                     for a, b in zip(phases, phases[1:], strict=False))
    ok = PhaseName.promote in names and in_order and no_overlap
    spec = {"kind": "K-PHASED", "shop_id": "s1", "campaign_id": "p1", "phases": phases}
    if ok:
        parsed = SPEC.validate_python(spec)
        assert isinstance(parsed, PhasedSpec) and [p.name for p in parsed.phases] == names
    else:
        with pytest.raises(ValidationError) as exc:
            SPEC.validate_python(spec)
        assert _errors(exc.value) == [("body", "R-PH-1")]


# ---------------------------------------------------------------- day_window


@lru_cache(maxsize=4096)
def _transition_days(tz: str, year: int) -> tuple[date, ...]:
    """Local days of `tz` in `year` on which the UTC offset changes (DST or a zone's rule change)."""
    z = zoneinfo.ZoneInfo(tz)
    days, prev = [], datetime(year, 1, 1, tzinfo=UTC).astimezone(z).utcoffset()
    for h in range(0, 366 * 24, 6):
        instant = datetime(year, 1, 1, tzinfo=UTC) + timedelta(hours=h)
        off = instant.astimezone(z).utcoffset()
        if off != prev:  # the change lies within the last 6 hours: both local days around it
            days += [(instant - timedelta(hours=6)).astimezone(z).date(), instant.astimezone(z).date()]
            prev = off
    return tuple(sorted(set(days)))


@st.composite
def zone_days(draw):
    tz = draw(st.sampled_from(ZONES))
    year = draw(st.integers(2000, 2099))
    transitions = _transition_days(tz, year)
    if transitions and draw(st.booleans()):
        day = draw(st.sampled_from(transitions)) + timedelta(days=draw(st.integers(-1, 1)))
    else:
        day = date(year, 1, 1) + timedelta(days=draw(st.integers(0, 364)))
    return tz, day


def _exists(day: date, at: time, z: zoneinfo.ZoneInfo) -> bool:
    """Whether wall-clock `at` on `day` occurs in z (not skipped by a forward jump)."""
    local = datetime.combine(day, at, tzinfo=z)
    return local.astimezone(UTC).astimezone(z).replace(tzinfo=None) == local.replace(tzinfo=None)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(zone_days(), st.times(max_value=time(21, 59)))
@example(("America/New_York", date(2026, 3, 8)), time(8, 0))  # spring forward
@example(("America/New_York", date(2026, 11, 1)), time(9, 30))  # fall back
@example(("Europe/Berlin", date(2026, 3, 29)), time(2, 30))  # a send time inside the gap
@example(("America/Nuuk", date(2022, 3, 26)), time(21, 30))  # the jump happens at 22:00 local
@example(("Asia/Kathmandu", date(2026, 6, 1)), time(21, 59))
@example(("Pacific/Kiritimati", date(2026, 1, 1)), time(0, 0))
@example(("Pacific/Apia", date(2011, 12, 30)), time(10, 0))  # a day Samoa skipped entirely
def test_day_window_opens_at_or_after_08_00_and_closes_at_22_00_local(zone_day, send_time):
    tz, day = zone_day
    z = zoneinfo.ZoneInfo(tz)
    assume(_exists(day, time(12, 0), z))  # a calendar day the zone skipped has no window to speak of
    w = day_window(day, send_time, tz)
    send_local, close_local = w.send_at.astimezone(z), w.close_at.astimezone(z)

    assert w.send_at.tzinfo is not None and w.close_at.tzinfo is not None
    assert send_local.date() == day and close_local.date() == day
    assert send_local.time() >= WINDOW_OPEN
    assert w.send_at < w.close_at
    # Never sends at or after 22:00: the close is the first instant whose wall clock reads 22:00 or later.
    assert close_local.time() >= WINDOW_CLOSE
    assert (w.close_at - timedelta(microseconds=1)).astimezone(z).time() < WINDOW_CLOSE
    if _exists(day, WINDOW_CLOSE, z):
        assert close_local.time() == WINDOW_CLOSE
    start = max(send_time, WINDOW_OPEN)
    if _exists(day, start, z):
        assert send_local.time() == start
    else:  # a wall-clock time a forward jump skipped is sent at the jump, never earlier
        assert send_local.time() > start
    assert w.snapshot_at <= w.send_at
    assert w.snapshot_at.astimezone(z).date() == day
