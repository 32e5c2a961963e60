"""The channel interface, what a delivery looks like to a provider, and the provider error classes.

A channel takes deliveries that the ledger has already committed `reserved` and
hands them to a provider, one batch at a time, answering one `Outcome` per
message with the provider's reference. It is idempotent per delivery key: after a
crash the same reserved delivery is offered again, and the channel first asks the
provider by reference (`reconcile`) instead of sending twice (docs/channels.md).

The error classes say what the caller may do next:
- `Throttled` (429, "slow down") and `Transient` (5xx, refused or dropped
  connection before the request was taken) are retried with backoff, no sooner
  than the provider's Retry-After (`retrying`);
- `Permanent` is one recipient's refusal (invalid contact, opted out at the
  provider): recorded `failed` with its reason, never retried;
- `Ambiguous` (a timeout or a drop after the request left) leaves the message
  `unknown`: it is reconciled by reference, never blindly resent (`send_and_settle`
  sends again, under the same reference, only what the provider's lookup says it
  does not have).
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Literal, Protocol, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Outbound:
    campaign_id: int
    phase: int
    consumer_id: int
    day: date
    channel: str
    address: str
    body: str
    # R-PH-5: the chat agent the message goes out from (channels/chat.py); None: no agent (the shop's account).
    sender: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    consumer_id: int
    state: Literal["sent", "failed", "unknown"]
    provider_ref: str | None = None
    reason: str | None = None


class Channel(Protocol):
    name: str

    async def send(self, messages: list[Outbound]) -> list[Outcome]:
        """Hand messages to the provider; one Outcome per message, in any order. A message whose fate
        is not known (`Ambiguous`) comes back `unknown`; `Throttled`/`Transient` that outlast the
        channel's own retries are raised (the activity is retried, reconciling first)."""
        ...

    async def reconcile(self, messages: list[Outbound]) -> list[Outcome]:
        """Ask the provider which of these it already has, by delivery reference; returns outcomes
        only for the ones it knows (`unknown` for those it cannot tell about)."""
        ...


def delivery_key(m: Outbound) -> str:
    """The delivery's business key, stable across retries and workers: the provider reference we give."""
    return f"{m.campaign_id}-{m.phase}-{_yyyymmdd(m.day)}-{m.consumer_id}-{m.channel}"


@functools.lru_cache(maxsize=64)
def _yyyymmdd(day: date) -> str:
    """The day in a delivery key (a chunk's messages share one or two days: strftime per message was 2 us)."""
    return f"{day:%Y%m%d}"


class ChannelError(Exception):
    """The provider did not answer the batch usefully."""


class Throttled(ChannelError):
    """The provider asks us to slow down (HTTP 429, SMTP 421/451 rate replies): retried after `retry_after`."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class Transient(ChannelError):
    """A temporary failure before the provider took the request (5xx, refused or dropped connection,
    SMTP 4xx): retried with backoff."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class Ambiguous(ChannelError):
    """The request left and no answer came back (a timeout or a drop after sending): the provider may
    have it. Left `unknown` and reconciled by reference; never resent blindly."""


class Permanent(ChannelError):
    """One recipient refused for good (invalid contact, opted out at the provider): `failed`, never retried."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# Reasons of permanent per-recipient failures, stored in deliveries.reason.
INVALID_CONTACT = "invalid_contact"
OPTED_OUT_AT_PROVIDER = "opted_out_at_provider"
REJECTED_BY_PROVIDER = "rejected_by_provider"
AMBIGUOUS = "ambiguous"


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP-date (RFC 9110 10.2.3); None when absent
    or unreadable. A date in the past is 0."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def classify_http(status: int, retry_after: str | None = None) -> ChannelError | None:
    """What an HTTP status of a batch request means: None for 2xx; `Throttled` for 429; `Transient`
    for 408 and 5xx (the batch is resent with the same references, which the provider deduplicates);
    `Permanent` for any other 4xx (a request the provider will refuse again however often it comes)."""
    if 200 <= status < 300:
        return None
    delay = parse_retry_after(retry_after)
    if status == 429:
        return Throttled(f"HTTP {status}", delay)
    if status == 408 or status >= 500:
        return Transient(f"HTTP {status}", delay)
    return Permanent(f"http_{status}")


def classify_smtp(code: int, message: str = "") -> ChannelError | None:
    """What an SMTP reply code means for one recipient (RFC 5321 4.2.1): None for 2xx/3xx; 421 and 4xx
    rate replies `Throttled`, other 4xx `Transient`; 5xx `Permanent` with the code and text as reason."""
    if code < 400:
        return None
    text = " ".join(message.split())[:200]
    if code < 500:
        rate = code == 421 or code == 450 and "rate" in text.lower() or code == 451 and "rate" in text.lower()
        return (Throttled if rate else Transient)(f"SMTP {code} {text}".strip())
    return Permanent(f"smtp_{code}: {text}" if text else f"smtp_{code}")


@dataclass(frozen=True)
class Backoff:
    """Retries of a throttled or transient batch: up to `attempts` tries in all, exponential from
    `base_s` with full jitter up to `cap_s`, and never sooner than the provider's Retry-After."""

    attempts: int = 5
    base_s: float = 0.1
    cap_s: float = 10.0

    def delay(self, attempt: int, retry_after: float | None, jitter: float) -> float:
        """Seconds to wait before try `attempt + 1` (attempt counts from 1), `jitter` in [0, 1)."""
        backoff = min(self.cap_s, self.base_s * 2 ** (attempt - 1)) * (0.5 + jitter / 2)
        return max(backoff, retry_after or 0.0)


async def retrying(
    call: Callable[[], Awaitable[T]],
    backoff: Backoff,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    rng: random.Random | None = None,
) -> T:
    """`call()`, again after `Throttled`/`Transient` as `backoff` says; the last such error is raised
    once the attempts are spent. Anything else (`Ambiguous`, `Permanent`) goes straight up."""
    rng = rng or random.Random()
    attempt = 1
    while True:
        try:
            return await call()
        except (Throttled, Transient) as exc:
            if attempt >= backoff.attempts:
                raise
            await sleep(backoff.delay(attempt, exc.retry_after, rng.random()))
            attempt += 1


def to_resend(sent: list[Outcome], looked_up: list[Outcome] | None) -> set[int]:
    """Which messages to send again after the provider's lookup: those whose send came back `unknown` and
    that a lookup which itself succeeded (`looked_up` not None) did not mention at all, i.e. the provider
    said it has no such reference. A message the lookup answered `unknown` (a channel that cannot tell,
    such as SMTP) is never resent, nor is anything when the lookup failed (`looked_up` None)."""
    if looked_up is None:
        return set()
    answered = {o.consumer_id for o in looked_up}
    return {o.consumer_id for o in sent if o.state == "unknown" and o.consumer_id not in answered}


async def _look_up(channel: Channel, messages: list[Outbound], ids: set[int]) -> list[Outcome] | None:
    """The provider's answer about `ids` by reference, or None when the lookup itself failed."""
    try:
        return await channel.reconcile([m for m in messages if m.consumer_id in ids])
    except ChannelError:
        return None


def _settle(outcomes: list[Outcome], answers: list[Outcome] | None) -> list[Outcome]:
    """`outcomes` with each one the provider answered definitively (`sent`/`failed`) replaced by that answer."""
    found = {o.consumer_id: o for o in answers or () if o.state != "unknown"}
    return [found.get(o.consumer_id, o) for o in outcomes] if found else outcomes


async def send_and_settle(channel: Channel, messages: list[Outbound]) -> list[Outcome]:
    """Send, then settle at once what can be settled of the messages whose answer was lost (`unknown`).

    1. Ask the provider by reference about them (`reconcile`): those it has take its outcome.
    2. Those a lookup that succeeded says it does NOT have (`to_resend`: a connection dropped before the
       provider took the batch) are sent once more, with the same references. This is not a blind resend
       (the rule for ambiguous outcomes: "reconciled by reference, never blindly resent"): the provider answered it
       has no such reference, and the reference is its idempotency key, so should the first request still
       arrive late, the two are one message (tests/gateway.py, like the providers' `messageId`, answers a
       reference it has seen with its first result and never hands it on twice).
    3. The resent ones are settled by the answer; those still `unknown` are looked up once more.
    What remains `unknown` (the lookup failed, the resend's answer was lost too, a channel that cannot look
    up: SMTP's reconcile answers `unknown`, so nothing is resent) stays `unknown` for the end-of-day
    reconciliation (activities/send.py, reconcile_pending)."""
    outcomes = await channel.send(messages)
    unsure = {o.consumer_id for o in outcomes if o.state == "unknown"}
    if not unsure:
        return outcomes
    looked_up = await _look_up(channel, messages, unsure)
    outcomes = _settle(outcomes, looked_up)
    again = to_resend(outcomes, looked_up)
    if not again:
        return outcomes
    try:
        resent = {o.consumer_id: o for o in await channel.send([m for m in messages if m.consumer_id in again])}
    except ChannelError:  # throttled or failing past the retries: they stay `unknown`, as the lookup left them
        return outcomes
    outcomes = [resent.get(o.consumer_id, o) if o.consumer_id in again else o for o in outcomes]
    still = {i for i in again if resent.get(i) is None or resent[i].state == "unknown"}
    if still:
        outcomes = _settle(outcomes, await _look_up(channel, messages, still))
    return outcomes
