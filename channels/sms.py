"""SMS: the text as billed (signature and unsubscribe text, R-AQ-6), segments (R-AQ-4), price and
credits (R-AQ-5), E.164 numbers, and the adapter for an HTTP SMS gateway.

The gateway API follows the shape of common providers' batch APIs (docs/channels.md):
- `POST /sms/2/text/advanced` with `{"bulkId", "messages": [{"from", "destinations": [{"to",
  "messageId"}], "text"}]}`: `messageId` is our reference per message (the delivery key), and a
  reference the gateway has seen before answers its first result, never a second message. The answer
  has one result per number: `{"messageId", "to", "smsCount", "status": {"groupName", "name",
  "description"}}` with groupName PENDING (taken) or REJECTED (refused for good, `name` says why);
- `GET /sms/1/logs?messageId=...` answers the references it knows, in the same shape: the
  reconciliation by reference.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

import httpx
import phonenumbers
from sluice.channels.base import (
    AMBIGUOUS,
    INVALID_CONTACT,
    OPTED_OUT_AT_PROVIDER,
    REJECTED_BY_PROVIDER,
    Ambiguous,
    Backoff,
    Outbound,
    Outcome,
    Permanent,
    Transient,
    classify_http,
    delivery_key,
    retrying,
)

# R-AQ-4: up to this many characters is one billed message; above it, one per SEGMENT_LONG characters.
SEGMENT_SINGLE = 70
SEGMENT_LONG = 67
# What every marketing SMS ends with (counted in its length, R-AQ-4): how to refuse further messages.
UNSUBSCRIBE_TEXT = " 拒收请回复R"
# R-AQ-6: the platform's industry signatures (public-domain SMS); a shop's industry picks one, never
# the shop's own name. An industry without its own signature uses the platform's general one.
INDUSTRY_SIGNATURES = {
    "beauty": "【美妆行业精选】",
    "food": "【食品行业精选】",
    "pet": "【宠物行业精选】",
    "baby": "【母婴行业精选】",
    "apparel": "【服饰行业精选】",
}
GENERAL_SIGNATURE = "【平台精选】"
# R-AQ-5: price per billed message in fen by the size of one recharge (lower bound of the tier, price).
PRICE_TIERS_FEN = ((150_000, Decimal("4.2")), (60_000, Decimal("4.4")), (15_000, Decimal("4.6")), (0, Decimal("4.8")))
# R-AQ-5: recharged credits can be used for two years, then they are void.
CREDIT_VALIDITY = timedelta(days=730)
# Numbers without a country code are read in this region (the platform's customers).
DEFAULT_REGION = "CN"


def industry_signature(industry: str | None) -> str:
    """R-AQ-6: the signature an SMS of a shop of `industry` carries."""
    return INDUSTRY_SIGNATURES.get(industry or "", GENERAL_SIGNATURE)


def sms_text(body: str, signature: str) -> str:
    """The message exactly as sent and billed: signature, the shop's text, the unsubscribe text."""
    return f"{signature}{body}{UNSUBSCRIBE_TEXT}"


def segments(text: str) -> int:
    """R-AQ-4: billed messages for `text`. Every character counts as one (letter, digit, punctuation,
    CJK alike; no cheaper 7-bit alphabet): up to 70 is one, above that ceil(n / 67)."""
    n = len(text)
    return 1 if n <= SEGMENT_SINGLE else math.ceil(n / SEGMENT_LONG)


def price_fen(recharged: int) -> Decimal:
    """R-AQ-5: the price in fen of one billed message bought in a recharge of `recharged` messages."""
    if recharged <= 0:
        raise ValueError("recharged: a recharge buys at least one message (R-AQ-5)")
    return next(price for floor, price in PRICE_TIERS_FEN if recharged >= floor)


@functools.cache
def _mobile_pattern(region: str) -> tuple[re.Pattern, str]:
    """The region's mobile numbers in national form (phonenumbers' own metadata) and its country code."""
    md = phonenumbers.PhoneMetadata.metadata_for_region(region)
    general, mobile = md.general_desc.national_number_pattern, md.mobile.national_number_pattern
    return re.compile(f"(?=(?:{general})$)(?:{mobile})"), f"+{md.country_code}"


def e164(number: str | None, region: str = DEFAULT_REGION) -> str | None:
    """The number in E.164 (+8613800000000), or None when it is not a valid number.

    A plain national mobile number of `region` is matched against the region's mobile pattern from
    phonenumbers' metadata (the test phonenumbers' is_valid_number makes for it, 40x faster); anything
    else is parsed and validated by phonenumbers in full."""
    if not number:
        return None
    if number.isdigit():
        pattern, prefix = _mobile_pattern(region)
        if pattern.fullmatch(number):
            return prefix + number
    try:
        parsed = phonenumbers.parse(number, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


@dataclass(frozen=True)
class Balance:
    """One unexpired recharge with credits left, in the order they are spent (earliest expiry first)."""

    credit_id: int
    remaining: int
    price_fen: Decimal


@dataclass
class Debit:
    """A chunk's charge: cost in yuan per paid consumer, segments taken per recharge and consumer, the
    consumers refused for want of credit (R-AQ-5), and those the campaign's budget left out (R-COST-BUDGET)."""

    cost: dict[int, Decimal]
    parts: dict[int, list[tuple[int, int]]]
    refused: list[int]
    over_budget: list[int] = field(default_factory=list)

    def taken(self) -> dict[int, int]:
        return {credit: sum(n for _, n in part) for credit, part in self.parts.items()}


def plan_debit(balances: list[Balance], needs: list[tuple[int, int]], budget_left: Decimal | None = None) -> Debit:
    """Charge each (consumer, segments) in order against `balances`, the earliest expiry first, a
    message spanning recharges when one runs out inside it. A message the credits left cannot pay for
    whole is refused (it does not go out); a later, shorter one may still be paid. With `budget_left`
    (yuan, R-COST-BUDGET) the paid messages' costs together stay within it: the first message that does
    not fit and every later one are left out (`over_budget`), their credits untouched."""
    left = [b.remaining for b in balances]
    total = sum(left)
    debit = Debit({}, {}, [])
    spent = Decimal(0)
    i = 0
    prices: dict[tuple, Decimal] = {}  # a message's takes -> its cost (a chunk has a few distinct ones)
    for consumer, need in needs:
        if debit.over_budget:
            debit.over_budget.append(consumer)
            continue
        if need > total:
            debit.refused.append(consumer)
            continue
        # The message's segments from the recharges in order, priced before anything is taken.
        takes, j, rest = [], i, need
        while rest:
            while left[j] == 0:
                j += 1
            n = min(rest, left[j])
            takes.append((j, n))
            rest -= n
            if rest:
                j += 1
        cost = prices.get(key := tuple(takes))
        if cost is None:
            cost = prices[key] = sum((balances[k].price_fen * n for k, n in takes), Decimal(0)) / 100  # fen -> yuan
        if budget_left is not None:
            if spent + cost > budget_left:
                debit.over_budget.append(consumer)
                continue
            spent += cost
        total -= need
        for k, n in takes:
            left[k] -= n
            debit.parts.setdefault(balances[k].credit_id, []).append((consumer, n))
        i = j
        debit.cost[consumer] = cost
    return debit


# The shop's recharges with credits left at $2, locked in expiry order (the same order everywhere), after
# the consumers' and coupons' rows. Primary-key range on (shop_id, credit_id): a shop has a few rows.
_LOCK_CREDITS = """
    SELECT credit_id, remaining, price_fen FROM sms_credits
    WHERE shop_id = $1 AND expires_at > $2 AND remaining > 0
    ORDER BY expires_at, credit_id FOR UPDATE
"""
# The same, read without a lock (the preview prices what a run would charge, R-COST-BUDGET).
_READ_CREDITS = """
    SELECT credit_id, remaining, price_fen FROM sms_credits
    WHERE shop_id = $1 AND expires_at > $2 AND remaining > 0
    ORDER BY expires_at, credit_id
"""
# $1 shop, $2 recharges, $3 segments taken from each.
_DEBIT = """
    UPDATE sms_credits c SET remaining = c.remaining - u.n
    FROM unnest($2::bigint[], $3::int[]) AS u(credit_id, n) WHERE c.shop_id = $1 AND c.credit_id = u.credit_id
"""
# Which recharge paid for whom, one row per chunk and recharge: what a refund gives back.
_RECORD_DEBIT = """
    INSERT INTO sms_debits (shop_id, credit_id, campaign_id, phase, day, consumer_ids, segments)
    SELECT $1, u.credit_id, $5, $6, $7, array_agg(u.consumer_id), array_agg(u.n)
    FROM unnest($2::bigint[], $3::bigint[], $4::int[]) AS u(credit_id, consumer_id, n)
    GROUP BY u.credit_id
"""
# A delivery that did not go out gives its segments back to the recharges that paid for them and loses its
# cost (R-AQ-5: only what is sent is billed). $1 shop, $2 campaign, $3 phase, $4 day, $5 consumers.
# Index sms_debits_day: the phase day's few debit rows, then their arrays.
_REFUND = """
    WITH parts AS (
        SELECT b.credit_id, sum(u.n)::int AS n
        FROM sms_debits b, unnest(b.consumer_ids, b.segments) AS u(consumer_id, n)
        WHERE b.campaign_id = $2 AND b.phase = $3 AND b.day = $4 AND u.consumer_id = ANY($5::bigint[])
        GROUP BY b.credit_id ORDER BY b.credit_id
    ), back AS (
        UPDATE sms_credits c SET remaining = c.remaining + p.n
        FROM parts p WHERE c.shop_id = $1 AND c.credit_id = p.credit_id
    )
    UPDATE deliveries SET cost = NULL
    WHERE campaign_id = $2 AND phase = $3 AND day = $4 AND channel = 'sms' AND consumer_id = ANY($5::bigint[])
      AND cost IS NOT NULL
"""
# A recharge of $2 messages at the tier's price $3, usable until two years after $4. Returns its id.
RECHARGE = """
    INSERT INTO sms_credits (shop_id, bought, remaining, price_fen, purchased_at, expires_at)
    VALUES ($1, $2, $2, $3, $4::timestamptz, $4::timestamptz + $5::interval) RETURNING credit_id
"""
# What the shop can still send at $2: unexpired credits left.
CREDITS_LEFT = "SELECT coalesce(sum(remaining), 0)::bigint FROM sms_credits WHERE shop_id = $1 AND expires_at > $2"
# The shop's industry, for its signature (R-AQ-6). Primary key.
_SHOP_TERMS = "SELECT industry FROM shops WHERE shop_id = $1"


async def recharge(conn, shop_id: str, messages: int, at: datetime) -> int:
    """R-AQ-5: a recharge of `messages` at its tier's price, valid two years from `at`; its id."""
    return await conn.fetchval(RECHARGE, shop_id, messages, price_fen(messages), at, CREDIT_VALIDITY)


async def signature_of(conn, shop_id: str) -> str:
    return industry_signature(await conn.fetchval(_SHOP_TERMS, shop_id))


async def balances(conn, shop_id: str, at: datetime) -> list[Balance]:
    """The shop's recharges with credits left at `at`, in the order they are spent, read without a lock."""
    return [Balance(r["credit_id"], r["remaining"], r["price_fen"]) for r in await conn.fetch(_READ_CREDITS, shop_id, at)]


async def charge(
    conn, shop_id: str, texts: dict[int, str], at: datetime, campaign_id: int, phase: int, day,
    budget_left: Decimal | None = None,
) -> Debit:
    """Debit the segments of `texts` (consumer -> message as sent) from the shop's credits valid at `at`,
    in the caller's transaction (the one that decides the deliveries), consumers in ascending order;
    `budget_left`: what the campaign's budget leaves (R-COST-BUDGET, plan_debit)."""
    rows = await conn.fetch(_LOCK_CREDITS, shop_id, at)
    balances = [Balance(r["credit_id"], r["remaining"], r["price_fen"]) for r in rows]
    debit = plan_debit(balances, [(c, segments(texts[c])) for c in sorted(texts)], budget_left)
    if debit.parts:
        taken = debit.taken()
        await conn.execute(_DEBIT, shop_id, list(taken), list(taken.values()))
        flat = [(k, c, n) for k, part in debit.parts.items() for c, n in part]
        await conn.execute(
            _RECORD_DEBIT, shop_id, [f[0] for f in flat], [f[1] for f in flat], [f[2] for f in flat], campaign_id, phase, day
        )
    return debit


async def refund(conn, shop_id: str, campaign_id: int, phase: int, day, consumer_ids: list[int]) -> None:
    """Give back the credits of deliveries that did not go out (in the transaction that records them)."""
    await conn.execute(_REFUND, shop_id, campaign_id, phase, day, consumer_ids)


def _reject_reason(status: dict) -> str:
    name = (status.get("name") or "").upper()
    if "OPT" in name or "BLOCK" in name or "UNSUB" in name:
        return OPTED_OUT_AT_PROVIDER
    if "DESTINATION" in name or "NUMBER" in name or "PREFIX" in name:
        return INVALID_CONTACT
    return f"{REJECTED_BY_PROVIDER}: {name or 'unknown'}"


class SmsGatewayChannel:
    """The SMS adapter over an HTTP gateway (module docstring). Invalid numbers are refused here
    without a request; throttled and transient batches are retried as `backoff` says (the same
    references again: the gateway answers what it already has); a request whose answer is lost
    leaves its messages `unknown` for the reconciliation."""

    def __init__(
        self, name: str, base_url: str, *, timeout_s: float = 5.0, batch_size: int = 500,
        backoff: Backoff | None = None, lookup_size: int = 100, region: str = DEFAULT_REGION,
    ):  # fmt: skip
        self.name = name
        self.batch_size = batch_size
        self.lookup_size = lookup_size
        self.region = region
        self.backoff = backoff or Backoff()
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout_s)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kw) -> dict:
        try:
            res = await self._http.request(method, path, **kw)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:  # nothing left
            raise Transient(f"{self.name}: {type(exc).__name__}") from exc
        except httpx.TransportError as exc:  # a read timeout or a reset after the request left
            raise Ambiguous(f"{self.name}: {type(exc).__name__}") from exc
        err = classify_http(res.status_code, res.headers.get("retry-after"))
        if isinstance(err, Permanent):
            from sluice.activities import errors

            raise errors.provider_refused(self.name, f"{method} {path}: HTTP {res.status_code} {res.text[:200]}")
        if err is not None:
            raise err
        try:
            return res.json()
        except ValueError as exc:  # a broken answer to a request that arrived
            raise Ambiguous(f"{self.name}: unreadable answer") from exc

    async def send(self, messages: list[Outbound]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        valid: list[tuple[str, str, Outbound]] = []
        for m in messages:
            number = e164(m.address, self.region)
            if number is None:
                outcomes.append(Outcome(m.consumer_id, "failed", None, INVALID_CONTACT))
            else:
                valid.append((delivery_key(m), number, m))
        for i in range(0, len(valid), self.batch_size):
            part = valid[i : i + self.batch_size]
            by_ref = {ref: m for ref, _, m in part}
            # One message per distinct text, its numbers as destinations (the text travels once).
            texts: dict[str, list[dict]] = {}
            for ref, number, m in part:
                texts.setdefault(m.body, []).append({"to": number, "messageId": ref})
            payload = {"bulkId": part[0][0], "messages": [{"destinations": d, "text": t} for t, d in texts.items()]}
            try:
                body = await retrying(lambda p=payload: self._request("POST", "/sms/2/text/advanced", json=p), self.backoff)
            except Ambiguous as exc:
                outcomes += [Outcome(m.consumer_id, "unknown", None, f"{AMBIGUOUS}: {exc}") for m in by_ref.values()]
                continue
            outcomes += self._outcomes(body["messages"], by_ref)
        return outcomes

    async def reconcile(self, messages: list[Outbound]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for i in range(0, len(messages), self.lookup_size):
            by_ref = {delivery_key(m): m for m in messages[i : i + self.lookup_size]}
            body = await retrying(
                lambda r=list(by_ref): self._request("GET", "/sms/1/logs", params=[("messageId", x) for x in r]), self.backoff
            )
            outcomes += self._outcomes(body["results"], by_ref)
        return outcomes

    @staticmethod
    def _outcomes(results: list[dict], by_ref: dict[str, Outbound]) -> list[Outcome]:
        out = []
        append = out.append  # one result per number of the batch: the loop is kept lean
        for r in results:
            ref = r["messageId"]
            m = by_ref.get(ref)
            if m is None:
                continue
            status = r.get("status")
            if status and status.get("groupName") == "REJECTED":
                append(Outcome(m.consumer_id, "failed", ref, _reject_reason(status)))
            else:
                append(Outcome(m.consumer_id, "sent", ref))
        return out
