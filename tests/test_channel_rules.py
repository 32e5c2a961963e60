"""The pure parts of the channels, without network or database: SMS segments (R-AQ-4), prices and the
credit plan (R-AQ-5), signature and unsubscribe text (R-AQ-6), E.164, error classes and backoff, and
the email's headers."""

from __future__ import annotations

import asyncio
import math
import random
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from email import message_from_bytes
from email.policy import default as default_policy

import phonenumbers
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sluice.channels.base import (
    Backoff,
    Outbound,
    Permanent,
    Throttled,
    Transient,
    classify_http,
    classify_smtp,
    delivery_key,
    parse_retry_after,
    retrying,
)
from sluice.channels.email import DEFAULT_SUBJECT, render, split_subject
from sluice.channels.sms import (
    GENERAL_SIGNATURE,
    INDUSTRY_SIGNATURES,
    UNSUBSCRIBE_TEXT,
    Balance,
    e164,
    industry_signature,
    plan_debit,
    price_fen,
    segments,
    sms_text,
)

# --- R-AQ-4: every character counts as one, 70 in one message, above that 67 per message ---


@pytest.mark.parametrize(
    "n, expected", [(1, 1), (69, 1), (70, 1), (71, 2), (134, 2), (135, 3), (201, 3), (202, 4)]
)
def test_segments_at_the_boundaries(n, expected):
    assert segments("a" * n) == expected
    assert segments("短" * n) == expected  # CJK counts the same as a letter


@given(st.text(min_size=1, max_size=600))
def test_segments_formula(text):
    n = len(text)
    assert segments(text) == (1 if n <= 70 else math.ceil(n / 67))


def test_signature_and_unsubscribe_text_are_counted():
    # R-AQ-4 / R-AQ-6: a body that fits alone no longer fits once signed and given the unsubscribe text.
    signature = industry_signature("beauty")
    body = "x" * (70 - len(signature) - len(UNSUBSCRIBE_TEXT))
    assert segments(sms_text(body, signature)) == 1
    assert segments(sms_text(body + "y", signature)) == 2
    assert sms_text("hi", signature).startswith(signature) and sms_text("hi", signature).endswith(UNSUBSCRIBE_TEXT)


def test_signature_is_the_industrys_not_the_shops():
    assert industry_signature("beauty") == INDUSTRY_SIGNATURES["beauty"]
    assert industry_signature("no such industry") == GENERAL_SIGNATURE
    assert industry_signature(None) == GENERAL_SIGNATURE


# --- R-AQ-5: price by recharge tier; credits spent earliest expiry first; no credit, no send ---


@pytest.mark.parametrize(
    "recharged, fen",
    [(1, "4.8"), (14_999, "4.8"), (15_000, "4.6"), (59_999, "4.6"), (60_000, "4.4"), (149_999, "4.4"),
     (150_000, "4.2"), (10**7, "4.2")],
)
def test_price_tiers(recharged, fen):
    assert price_fen(recharged) == Decimal(fen)


def test_price_of_no_recharge_is_refused():
    with pytest.raises(ValueError, match="R-AQ-5"):
        price_fen(0)


def test_debit_spends_the_earliest_recharge_first_and_spans_into_the_next():
    balances = [Balance(1, 3, Decimal("4.8")), Balance(2, 10, Decimal("4.2"))]
    debit = plan_debit(balances, [(10, 2), (11, 2), (12, 1)])
    assert debit.refused == []
    assert debit.parts == {1: [(10, 2), (11, 1)], 2: [(11, 1), (12, 1)]}
    assert debit.cost == {10: Decimal("0.096"), 11: Decimal("0.090"), 12: Decimal("0.042")}
    assert debit.taken() == {1: 3, 2: 2}


def test_debit_refuses_what_the_credits_cannot_pay_whole():
    debit = plan_debit([Balance(1, 3, Decimal("4.8"))], [(10, 2), (11, 2), (12, 1)])
    assert debit.refused == [11]  # 2 segments do not fit in the 1 left; the next 1-segment message does
    assert set(debit.cost) == {10, 12}
    assert plan_debit([], [(10, 1)]).refused == [10]


@given(
    st.lists(st.tuples(st.integers(0, 50), st.sampled_from(["4.8", "4.6", "4.4", "4.2"])), max_size=5),
    st.lists(st.integers(1, 6), max_size=40),
)
def test_debit_never_spends_more_than_there_is_and_prices_every_segment(balances, needs):
    bals = [Balance(i, n, Decimal(p)) for i, (n, p) in enumerate(balances)]
    debit = plan_debit(bals, list(enumerate(needs)))
    taken = debit.taken()
    for b in bals:
        assert 0 <= taken.get(b.credit_id, 0) <= b.remaining
    paid = {c for c in debit.cost}
    assert paid.isdisjoint(debit.refused) and paid | set(debit.refused) == set(range(len(needs)))
    assert sum(taken.values()) == sum(needs[c] for c in paid)
    price = {b.credit_id: b.price_fen for b in bals}
    for c in paid:
        parts = [(k, n) for k, p in debit.parts.items() for cc, n in p if cc == c]
        assert sum(n for _, n in parts) == needs[c]
        assert debit.cost[c] == sum(price[k] * n for k, n in parts) / 100


# --- E.164 ---


def test_e164_accepts_national_and_international_numbers():
    assert e164("13800000007") == "+8613800000007"
    assert e164("+86 138 0000 0007") == "+8613800000007"
    assert e164("+14155550100", "CN") == "+14155550100"


@pytest.mark.parametrize("bad", ["", None, "12345", "10000000000", "138000000071", "not a number"])
def test_e164_refuses_invalid_numbers(bad):
    assert e164(bad) is None


@given(st.from_regex(r"\A1[0-9]{9,11}\Z"))
def test_e164_fast_path_agrees_with_phonenumbers(number):
    try:
        parsed = phonenumbers.parse(number, "CN")
        valid = phonenumbers.is_valid_number(parsed)
    except phonenumbers.NumberParseException:
        valid = False
    expected = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164) if valid else None
    assert e164(number) == expected


# --- error classes and backoff ---


def test_http_classification():
    assert classify_http(200) is None
    throttled = classify_http(429, "7")
    assert isinstance(throttled, Throttled) and throttled.retry_after == 7
    assert isinstance(classify_http(503), Transient) and isinstance(classify_http(500), Transient)
    assert isinstance(classify_http(408), Transient)
    assert isinstance(classify_http(400), Permanent) and isinstance(classify_http(401), Permanent)


def test_smtp_classification():
    assert classify_smtp(250) is None
    refused = classify_smtp(550, "5.1.1 no such user")
    assert isinstance(refused, Permanent) and refused.reason.startswith("smtp_550")
    assert isinstance(classify_smtp(451, "try later"), Transient)
    assert isinstance(classify_smtp(421, "closing"), Throttled)
    assert isinstance(classify_smtp(452, "too many recipients"), Transient)


def test_retry_after_forms():
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert parse_retry_after("120") == 120
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:30 GMT", now) == 30
    assert parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now) == 0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


@given(st.integers(1, 30), st.one_of(st.none(), st.floats(0, 600)), st.floats(0, 0.999))
def test_backoff_honours_retry_after_and_its_cap(attempt, retry_after, jitter):
    b = Backoff(attempts=5, base_s=0.1, cap_s=10)
    d = b.delay(attempt, retry_after, jitter)
    assert d >= (retry_after or 0)
    assert d <= max(10, retry_after or 0)
    assert d >= min(10, 0.1 * 2 ** (attempt - 1)) / 2


def test_retrying_waits_as_told_then_gives_up():
    calls, waits = [], []

    async def sleep(s):
        waits.append(s)

    async def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise Throttled("429", retry_after=5)
        return "ok"

    assert asyncio.run(retrying(flaky, Backoff(attempts=5), sleep=sleep, rng=random.Random(1))) == "ok"
    assert len(calls) == 3 and waits == [5, 5]

    async def down():
        calls.append(1)
        raise Transient("503")

    calls.clear()
    with pytest.raises(Transient):
        asyncio.run(retrying(down, Backoff(attempts=4), sleep=sleep))
    assert len(calls) == 4

    async def permanent():
        calls.append(1)
        raise Permanent("smtp_550")

    calls.clear()
    with pytest.raises(Permanent):
        asyncio.run(retrying(permanent, Backoff(attempts=4), sleep=sleep))
    assert len(calls) == 1  # never retried


# --- email headers ---


def _outbound(body: str) -> Outbound:
    return Outbound(7, 1, 42, date(2026, 3, 1), "email", "ann@example.com", body)


def test_email_headers_and_body():
    now = datetime(2026, 3, 1, 9, tzinfo=UTC)
    m = _outbound("Spring sale\nHello Ann, 20% off.")
    msg = message_from_bytes(render(m, "shop@mail.example", "https://x.example/u", now), policy=default_policy)
    assert msg["From"] == "shop@mail.example" and msg["To"] == "ann@example.com"
    assert msg["Subject"] == "Spring sale"
    assert msg["Message-ID"] == f"<{delivery_key(m)}@mail.example>"
    assert msg["Date"] == "Sun, 01 Mar 2026 09:00:00 +0000"
    assert f"<https://x.example/u?d={delivery_key(m)}>" in msg["List-Unsubscribe"]
    assert "mailto:" in msg["List-Unsubscribe"]
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg.get_content().strip() == "Hello Ann, 20% off."
    # A resend of the same delivery carries the same Message-ID.
    later = render(m, "shop@mail.example", "https://x.example/u", now + timedelta(hours=1))
    assert message_from_bytes(later, policy=default_policy)["Message-ID"] == msg["Message-ID"]


def test_email_non_ascii_subject_and_body_survive():
    m = _outbound("春季会员日\n您好,全场八折。")
    msg = message_from_bytes(render(m, "shop@mail.example", "https://x.example/u", datetime.now(UTC)),
                             policy=default_policy)
    assert msg["Subject"] == "春季会员日"
    assert msg.get_content().strip() == "您好,全场八折。"


def test_email_subject_of_a_one_line_body():
    assert split_subject("just text") == (DEFAULT_SUBJECT, "just text")
    assert split_subject("Title\nline 1\nline 2") == ("Title", "line 1\nline 2")
