"""One record model per kind of loaded data: what a row must be before anything is written.

Models are strict (an id is a JSON integer, a flag a JSON boolean: "12" or 1 for true are refused)
and closed (an unknown field is refused). A record is the whole row: a field left out takes its
default, so resending a record with a field left out resets that field. Times are ISO 8601 with a
UTC offset; amounts are decimal numbers or strings with at most two decimals. The shop is the
API key's (or `sluice load --shop`): a record may name it in `shop_id`, and a record naming any
other shop is refused (R-API-KEY).

Every check here is pure (no database); what needs the database (a reference to a customer, an id
another shop owns) is checked set-based by ingest/kinds.py.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from sluice.audiences.custom import BEHAVIOUR_KINDS
from sluice.schemas.campaign import DATE_MAX, DATE_MIN
from sluice.schemas.rules import is_iana_zone, rule_error
from sluice.schemas.text import text_problem

# Rule ids of loading (docs/rules.md).
RULE_SHOP = "R-API-KEY"  # a key (or --shop) writes its own shop only
RULE_CONTACT = "R-LOAD-CONTACT"
RULE_ZONE = "R-WIN-1"  # a time zone is an IANA name
RULE_KEY = "R-LOAD-KEY"
RULE_REF = "R-LOAD-REF"
RULE_VALUE = "R-LOAD-VALUE"

MAX_ID = 2**63 - 1
MAX_TAGS = 50
ORDER_STATUSES = ("pending", "paid", "refunded")

# E.164-ish: an optional +, then 6 to 15 digits (the seed's numbers are 11 national digits).
PHONE_PATTERN = re.compile(r"\+?[0-9]{6,15}")
# A mailbox: no spaces or control characters, one @, a dotted domain with an alphabetic top level.
EMAIL_PATTERN = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
                           r"[A-Za-z]{2,63}")
LOCALE_PATTERN = r"^[a-z]{2,3}(?:-[A-Za-z0-9]{2,8})*$"  # BCP 47, e.g. zh-CN, en-US
REF_PATTERN = r"^[A-Za-z0-9_.:@-]{1,128}$"  # client ids: event, agent, coupon, chat ids


# Texts that pass the text rule at a glance: printable ASCII and CJK ideographs (U+4E00..U+9FFF: letters,
# none refused, none blank), with a visible character. Most names are; the rest go through text_problem
# (a per-character Unicode lookup, a third of a customer's validation). tests/test_load.py checks the two
# agree on every character of the class.
PLAIN_TEXT = re.compile("[ ]*[!-~\u4e00-\u9fff][ -~\u4e00-\u9fff]*")


def _text(value: str) -> str:
    if PLAIN_TEXT.fullmatch(value):
        return value
    problem = text_problem(value)
    if problem:
        raise rule_error(RULE_VALUE, problem)
    return value


def _phone(value: str) -> str:
    if not PHONE_PATTERN.fullmatch(value):
        raise rule_error(RULE_CONTACT, "a phone number is an optional + and 6 to 15 digits (E.164)")
    return value


def _email(value: str) -> str:
    if len(value) > 254 or not EMAIL_PATTERN.fullmatch(value):
        raise rule_error(RULE_CONTACT, "not an e-mail address (local@domain.tld)")
    return value


def _zone(value: str) -> str:
    if not is_iana_zone(value):
        raise rule_error(RULE_ZONE, f"{value[:60]!r} is not an IANA time zone name (for example Asia/Shanghai)")
    return value


def _timestamp(value):
    """An ISO 8601 string (JSON, CSV) or a datetime; it must carry a UTC offset."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise rule_error(RULE_VALUE, "not an ISO 8601 time (2025-03-01T10:00:00+08:00)") from None
    if isinstance(value, datetime) and value.tzinfo is None:
        raise rule_error(RULE_VALUE, "a time needs its UTC offset (+08:00 or Z)")
    # Bounded, so every accepted instant is one PostgreSQL and asyncpg can hold (year 1 at +05:00 is not).
    if isinstance(value, datetime) and not DATE_MIN <= value.date() <= DATE_MAX:
        raise rule_error(RULE_VALUE, f"a time between {DATE_MIN} and {DATE_MAX}")
    return value


def _money(value):
    """A JSON number or a decimal string as a Decimal (a float goes through its shortest repr: 19.9 is 19.90)."""
    if isinstance(value, bool):
        return value  # refused by the strict Decimal
    if isinstance(value, int | float | str):
        try:
            value = Decimal(str(value).strip())
        except InvalidOperation:
            raise rule_error(RULE_VALUE, "not a decimal amount") from None
        if not value.is_finite():
            raise rule_error(RULE_VALUE, "not a finite amount")
    return value


Id = Annotated[int, Field(ge=1, le=MAX_ID)]
Count = Annotated[int, Field(ge=0, le=2**31 - 1)]
Ref = Annotated[str, Field(pattern=REF_PATTERN)]
Name = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_text)]
Word = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_text)]
Tag = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_text)]
Phone = Annotated[str, Field(max_length=16), AfterValidator(_phone)]
Email = Annotated[str, Field(max_length=254), AfterValidator(_email)]
Zone = Annotated[str, Field(max_length=64), AfterValidator(_zone)]
Locale = Annotated[str, Field(pattern=LOCALE_PATTERN, max_length=35)]
Timestamp = Annotated[datetime, BeforeValidator(_timestamp)]
Money = Annotated[Decimal, BeforeValidator(_money), Field(ge=0, max_digits=12, decimal_places=2)]


class Record(BaseModel):
    """A loaded row. KIND names it (the route and the CLI argument); KEY is what makes a resend idempotent."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)
    KIND: ClassVar[str]
    KEY: ClassVar[tuple[str, ...]]

    shop_id: str | None = Field(default=None, max_length=64, description="the key's shop; any other is refused")


class ShopRecord(Record):
    KIND = "shops"
    KEY = ("shop_id",)
    name: Name
    timezone: Zone
    industry: Word
    sms_signature: Name | None = None
    virtual_category: bool = False


class CustomerRecord(Record):
    """A customer of the shop: contacts, per-channel opt-outs (unsub_<channel>), blacklist, deletion, zone,
    locale, tags. consumer_id is the platform's id of the person (shared by every shop they buy from)."""

    KIND = "customers"
    KEY = ("consumer_id",)
    consumer_id: Id
    nick: Name | None = None
    phone: Phone | None = None
    email: Email | None = None
    chat_id: Ref | None = None
    phone_valid: bool = True
    email_valid: bool = True
    locale: Locale = "zh-CN"
    timezone: Zone | None = None
    is_member: bool = False
    is_fan: bool = False
    blacklisted: bool = False
    deleted: bool = False
    unsub_chat: bool = False
    unsub_sms: bool = False
    unsub_email: bool = False
    unsub_inbox: bool = False
    tags: Annotated[list[Tag], Field(max_length=MAX_TAGS)] = Field(default_factory=list)  # not a [] copied per record
    created_at: Timestamp | None = Field(default=None, description="customer since; left out: kept, or now for a new one")


class ProductRecord(Record):
    KIND = "products"
    KEY = ("product_id",)
    product_id: Id
    title: Name
    category: Word
    price: Money
    repurchase_cycle_days: Annotated[int, Field(ge=1, le=3650)] | None = None
    on_shelf: bool = True


class CouponRecord(Record):
    KIND = "coupons"
    KEY = ("coupon_id",)
    coupon_id: Ref
    name: Name
    valid_from: Timestamp
    valid_to: Timestamp
    stock: Count
    product_id: Id | None = None

    @model_validator(mode="after")
    def _window(self):
        if self.valid_from >= self.valid_to:
            raise rule_error(RULE_VALUE, "valid_from must be before valid_to")
        return self


class OrderRecord(Record):
    KIND = "orders"
    KEY = ("order_id",)
    order_id: Id
    consumer_id: Id
    created_at: Timestamp
    paid_at: Timestamp | None = None
    amount: Money
    status: Literal[ORDER_STATUSES] = "paid"  # type: ignore[valid-type]


class OrderItemRecord(Record):
    """A line of an order (its unit price; the order's amount is what was paid)."""

    KIND = "order_items"
    KEY = ("order_id", "product_id")
    order_id: Id
    product_id: Id
    quantity: Annotated[int, Field(ge=1, le=1_000_000)]
    price: Money


class EventRecord(Record):
    """A behaviour event; event_id is the client's own id of it, which makes a resend idempotent."""

    KIND = "events"
    KEY = ("event_id",)
    event_id: Ref
    consumer_id: Id
    kind: Literal[BEHAVIOUR_KINDS]  # type: ignore[valid-type]
    product_id: Id | None = None
    occurred_at: Timestamp


class AgentRecord(Record):
    """A chat agent of the shop and whether it is online (R-PH-5)."""

    KIND = "agents"
    KEY = ("agent_id",)
    agent_id: Ref
    name: Name
    online: bool = False
    updated_at: Timestamp | None = Field(default=None, description="when the presence was seen; left out: now")


class CustomerAgentRecord(Record):
    """The agent who last served a customer (R-PH-5)."""

    KIND = "customer_agents"
    KEY = ("consumer_id",)
    consumer_id: Id
    agent_id: Ref
    served_at: Timestamp


MODELS: dict[str, type[Record]] = {
    m.KIND: m
    for m in (ShopRecord, CustomerRecord, ProductRecord, CouponRecord, OrderRecord, OrderItemRecord, EventRecord,
              AgentRecord, CustomerAgentRecord)
}  # fmt: skip
KINDS = tuple(MODELS)  # also the order to load a shop in: a record's references come before it
