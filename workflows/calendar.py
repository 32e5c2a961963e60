"""Send-window and phase-calendar arithmetic: pure functions of instants and IANA zones.

Imported into the workflow sandbox with imports_passed_through(), which lets
ZoneInfo work there (docs/design.md, "Sandbox and ZoneInfo"). Every datetime passed in or
returned is timezone-aware; days are the shop's local calendar days.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from sluice.schemas.rules import WINDOW_CLOSE, WINDOW_OPEN


@lru_cache(maxsize=512)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


@lru_cache(maxsize=1)
def known_zones() -> tuple[str, ...]:
    """Every zone of the bundled tzdata, sorted (the preview judges each recipient's zone from this list; reads
    files: not for workflow code)."""
    return tuple(sorted(available_timezones()))


def known_zone(name: str) -> bool:
    """Whether `name` is a zone of the bundled tzdata (a recipient's zone is data: it may not be)."""
    try:
        zone(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        return False
    return True


def local_instant(day: date, at: time, tz: str) -> datetime:
    """The UTC instant of wall-clock `at` on `day` in `tz` (a gap in DST resolves forward)."""
    naive = datetime.combine(day, at)
    aware = naive.replace(tzinfo=zone(tz))
    return aware.astimezone(UTC)


def local_day(instant: datetime, tz: str) -> date:
    return instant.astimezone(zone(tz)).date()


def local_time(instant: datetime, tz: str) -> time:
    return instant.astimezone(zone(tz)).time()


def first_open_day(now: datetime, tz: str, earliest: date | None = None) -> date:
    """The first day, not before `earliest`, whose send window (until 22:00 local) is still open at `now`."""
    today = local_day(now, tz)
    if earliest is not None and earliest > today:
        return earliest
    return today if local_instant(today, WINDOW_CLOSE, tz) > now else today + timedelta(days=1)


@dataclass(frozen=True)
class DayWindow:
    day: date
    send_at: datetime  # when sending may start: the phase's send time, never before 08:00
    close_at: datetime  # 22:00: whatever is unsent stops for the day (R-PH-2, R-WIN-1)
    snapshot_at: datetime  # 00:00 of the day: the audience is a T+1 snapshot (R-OC-5)
    # 00:00 of the next day (its snapshot instant): a recipient with a zone of their own may be sent until
    # then, inside their own 08:00-22:00 (R-WIN-1); one without waits for the shop's window.
    end_at: datetime


def day_window(day: date, send_time: time, tz: str) -> DayWindow:
    start = max(send_time, WINDOW_OPEN)
    return DayWindow(
        day=day,
        send_at=local_instant(day, start, tz),
        close_at=local_instant(day, WINDOW_CLOSE, tz),
        snapshot_at=local_instant(day, time(0, 0), tz),
        end_at=local_instant(day + timedelta(days=1), time(0, 0), tz),
    )


# What a day's workflow that wakes at an instant may still send (`late_wake`).
WAKE_IN_WINDOW = "in_window"  # everyone: the shop's window is open, or not yet (the timer waits for the send time)
WAKE_ZONED_ONLY = "zoned_only"  # after the shop's 22:00: recipients with a zone of their own, in their own window
WAKE_MISSED = "missed"  # the shop's next day has begun: nobody (`window_missed`)


def late_wake(now: datetime, win: DayWindow) -> str:
    """R-WIN-1: what the day `win` may still send when its workflow wakes at `now` (a worker back after downtime,
    a campaign started late). Before the shop's 22:00, everyone (WAKE_IN_WINDOW). From then until 00:00 of the
    shop's next day (`end_at`), only recipients with a zone of their own, each inside their own 08:00-22:00: the
    shop's window is missed for the others (WAKE_ZONED_ONLY). From `end_at` on, nobody (WAKE_MISSED): the next
    day's snapshot has begun."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if now < win.close_at:
        return WAKE_IN_WINDOW
    return WAKE_ZONED_ONLY if now < win.end_at else WAKE_MISSED


def in_window(local: time) -> bool:
    """R-WIN-1: a wall-clock time inside the send window [08:00, 22:00). The send path's SQL applies the same
    test to each recipient with a zone (`window_deferred_sql`, activities/send.py)."""
    return WINDOW_OPEN <= local < WINDOW_CLOSE


def open_at(instant: datetime, tz: str) -> bool:
    """Whether the send window of zone `tz` is open at `instant`."""
    return in_window(local_time(instant, tz))


def window_closes(tz: str, instant: datetime) -> datetime:
    """The instant zone `tz`'s send window of the local day at `instant` closes (22:00 there). For an instant
    inside the window: how long a message handed over then may still reach its recipient in their own window."""
    return local_instant(local_day(instant, tz), WINDOW_CLOSE, tz)


def batch_window_end(slice_end: datetime, zones, at: datetime) -> datetime:
    """R-WIN-1 for a batch handed to the outbox at `at`: the last instant any of its parts may leave. The slice's
    end (the shop's window) unless a recipient's own zone (`zones`, the distinct zones of the batch's live
    recipients, each inside its window at `at`) closes earlier: the dispatcher then sends nothing of the batch
    after the first of its recipients' windows has closed (a batch is never split by zone)."""
    ends = [window_closes(tz, at) for tz in zones if tz is not None and known_zone(tz)]
    return min([slice_end, *ends])


def window_opens(tz: str, after: datetime, before: datetime) -> datetime | None:
    """The first instant in (after, before) at which zone `tz`'s clock reaches 08:00 (a day whose 08:00 falls in
    a DST gap opens at the gap's end), or None."""
    day = local_day(after, tz)
    while True:
        at = local_instant(day, WINDOW_OPEN, tz)
        if at >= before:
            return None
        if at > after:
            return at
        day += timedelta(days=1)


def first_open(tz: str, at: datetime, before: datetime) -> datetime | None:
    """The first instant at or after `at`, and before `before`, at which zone `tz`'s send window is open."""
    if at >= before or not known_zone(tz):
        return None
    return at if open_at(at, tz) else window_opens(tz, at, before)


def next_window_open(zones, after: datetime, before: datetime, *, open_now: bool = False) -> datetime | None:
    """R-WIN-1: when the workflow next sends recipients waiting for their own window, or None when none of
    `zones` opens before `before` (the day's end). The next instant in (after, before) at which one of the
    zones' windows opens; with `open_now`, `after` itself when one of them is open then (the recipients
    of a pass that stopped before it read them). Names that are not IANA zones never open."""
    known = sorted(z for z in set(zones) if known_zone(z))
    if open_now:
        found = [first_open(z, after, before) for z in known]
    else:
        found = [window_opens(z, after, before) for z in known]
    return min((t for t in found if t is not None), default=None)


def platform_day(instant: datetime, platform_tz: str) -> date:
    """The natural day on which fatigue caps are counted (R-FAT-1..3)."""
    return local_day(instant, platform_tz)


def utc(dt: datetime) -> datetime:
    return dt.astimezone(UTC)


def hours(n: float) -> timedelta:
    return timedelta(hours=n)
