"""The report's pure parts: rates, ROI, the day change, and the opaque page cursors (docs/reports.md).

Nothing here touches the database: the SQL counts, these functions decide
what the counts mean, and tests check them on their own.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import date
from decimal import Decimal

from sluice.schemas.activities import HELD_OUT
from sluice.schemas.rules import RuleViolation

# The ledger's states (deliveries.state, its CHECK: db/migrations/0001_core.sql, 0011_outcomes.sql): what the
# per-buyer detail filters on. Failures are the decisions that reached nobody, each with its reason (a held-out
# buyer of a control group is not one).
DELIVERY_STATES = ("reserved", "sent", "failed", "unknown", "suppressed", "not_sent", HELD_OUT)
FAILURE_STATES = ("failed", "unknown", "suppressed", "not_sent")
# The counts a report row carries; the money ones are Decimal.
COUNTS = ("sent", "failed", "reached", "replied", "converted", "orders")
MONEY = ("revenue", "cost")
# R-ED-5: the funnel's stages in order (report_funnels' columns), and the phase of a funnel's campaign row.
FUNNEL_STAGES = ("potential", "reached", "handshake", "ordered", "repurchased")
CAMPAIGN_FUNNEL = -1
# Pages of the per-buyer detail and of the campaign list.
DEFAULT_PAGE = 100
MAX_PAGE = 1000


def rate(part: int, whole: int) -> float | None:
    """part / whole, or None when there is no whole (nobody reached: no rate, not 0%)."""
    return part / whole if whole > 0 else None


def funnel_stages(counts) -> list[tuple[str, int, float | None]]:
    """(stage, count, conversion) in R-ED-5's order from a mapping of the stages' counts: the conversion is the
    count over the previous stage's (None for the first stage, or after a stage of nobody). Each stage is counted
    on its own (docs/reports.md), so a conversion may pass 1 (buyers who ordered without replying)."""
    out: list[tuple[str, int, float | None]] = []
    before = None
    for stage in FUNNEL_STAGES:
        n = counts[stage]
        out.append((stage, n, None if before is None else rate(n, before)))
        before = n
    return out


def roi(revenue: Decimal, cost: Decimal) -> float | None:
    """(revenue - cost) / cost when the campaign cost something; None otherwise (R-REP-1)."""
    return float((revenue - cost) / cost) if cost > 0 else None


def change(today: dict, yesterday: dict) -> dict:
    """Today's figure minus yesterday's, for each count and amount (R-REP-2: today's change)."""
    return {k: today[k] - yesterday[k] for k in (*COUNTS, *MONEY)}


def encode_cursor(key: tuple) -> str:
    """An opaque page cursor for a row's sort key (ints, strings and dates)."""
    parts = [v.isoformat() if isinstance(v, date) else v for v in key]
    return base64.urlsafe_b64encode(json.dumps(parts, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, shape: tuple[type, ...], field: str = "after") -> tuple:
    """The sort key a cursor of `encode_cursor` holds, checked against `shape`; a RuleViolation otherwise."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        parts = json.loads(raw)
        if not isinstance(parts, list) or len(parts) != len(shape):
            raise ValueError("wrong length")
        out = []
        for value, kind in zip(parts, shape, strict=True):
            if kind is date:
                out.append(date.fromisoformat(value))
            elif kind is int:
                if not isinstance(value, int) or isinstance(value, bool) or not -(2**63) <= value < 2**63:
                    raise ValueError("not an int")
                out.append(value)
            else:
                if not isinstance(value, str):
                    raise ValueError("not a string")
                out.append(value)
        return tuple(out)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise RuleViolation(field, "R-REP-1", "not a cursor this API returned (use the `next` of the last page)") from None
