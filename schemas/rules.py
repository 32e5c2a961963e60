"""Platform rules as constants and the error type that names them.

Every refusal in sluice names the field and the rule id it broke (docs/rules.md), so
a merchant (and a test) can tell which rule was hit.
"""

from __future__ import annotations

import reprlib
from datetime import time

from pydantic_core import PydanticCustomError

# R-WIN-1 / R-PH-2: the system sends only between 08:00 and 22:00 local time.
WINDOW_OPEN = time(8, 0)
WINDOW_CLOSE = time(22, 0)
# R-PH-2: the daily send time a merchant picks lies between 08:00 and 21:00.
PHASED_SEND_TIME_LATEST = time(21, 0)

# R-FAT-2 / R-FAT-3: platform-wide caps per consumer and natural day.
SHOP_DAY_MAX = 2
GLOBAL_DAY_MAX = 10
GLOBAL_SHOPS_MAX = 5


def template_key(shop_id: str, group: str) -> str:
    """The key of a shop's template group in fatigue_day.per_template (R-FAT-1); '' when the phase
    has no template cap. Ids never contain '/' (schemas/campaign.py ID_PATTERN): the view
    fatigue_template splits it there."""
    return f"{shop_id}/{group}" if group else ""


# K-OLDCUST
OLDCUST_TEMPLATE_GROUP = "oldcust-scene"  # R-OC-2: shared by all old-customer scenes
OLDCUST_CAP_PER_DAYS = (1, 7)  # R-OC-2 / R-FAT-1: one per 7 natural days
OLDCUST_MIN_AUDIENCE = 101  # R-OC-4: an audience of 100 or fewer cannot be sent
OLDCUST_CARD_TEXT_MAX = 50  # R-OC-3
OLDCUST_IMAGE_REVIEW_HOURS = 24  # R-OC-3


def rule_error(rule: str, message: str) -> PydanticCustomError:
    """A validation error whose text starts with the rule id; the API also returns it as `rule`."""
    return PydanticCustomError("rule_violation", "{rule}: {message}", {"rule": rule, "message": message})


# A spec (HTTP body or CLI file) is at most this long: R-API-SIZE.
MAX_SPEC_BYTES = 64 * 1024


# Errors whose input is the whole object around the field (or not an input at all): echoing it says nothing.
_NO_ECHO = {"missing", "json_invalid", "union_tag_invalid", "union_tag_not_found"}
ECHO_MAX = 60  # characters of an input a message repeats, at most
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist = 2, 3, 3
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = ECHO_MAX


def _short_repr(value: object) -> str:
    """What was sent, for a message: repr (control and bidi characters escaped), at most ECHO_MAX characters."""
    if isinstance(value, dict):
        return "an object"
    text = _REPR.repr(value)
    return text if len(text) <= ECHO_MAX else text[:ECHO_MAX - 3] + "..."


def error_details(errors) -> list[dict]:
    """pydantic errors as [{"field", "rule", "message"}], the shape every refusal has (API and CLI)."""
    out = []
    for err in errors:
        # "body" is FastAPI's prefix; "K-OLDCUST" the union tag pydantic inserts: fields read like the spec.
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        loc = [p for p in loc if not p.startswith("K-")]
        if err.get("type") == "json_invalid":
            loc = []  # the location is a character offset, not a field
        ctx = err.get("ctx") or {}
        rule = ctx.get("rule") or f"schema:{err.get('type', 'invalid')}"
        message = ctx.get("message") or err.get("msg", "invalid")
        if not ctx.get("rule") and "input" in err and err.get("type") not in _NO_ECHO:
            message = f"{message} (got {_short_repr(err['input'])})"
        out.append({"field": ".".join(loc) or "body", "rule": str(rule), "message": str(message)})
    return out


class RuleViolation(Exception):
    """A rule broken by input that needs the database to check (unknown shop, expired coupon...)."""

    def __init__(self, field: str, rule: str, message: str):
        super().__init__(f"{field}: {rule}: {message}")
        self.field = field
        self.rule = rule
        self.message = message

    def as_dict(self) -> dict:
        return {"field": self.field, "rule": self.rule, "message": self.message}


def is_iana_zone(name: str) -> bool:
    """R-WIN-1: a shop's time zone must be an IANA zone name known to the bundled tzdata."""
    return isinstance(name, str) and name in _iana_zones()


def _iana_zones() -> frozenset[str]:
    global _ZONES
    if _ZONES is None:
        import zoneinfo

        # System folders may add links that are not zones of the IANA database.
        _ZONES = frozenset(zoneinfo.available_timezones()) - {"localtime", "posixrules", "Factory"}
    return _ZONES


_ZONES: frozenset[str] | None = None
