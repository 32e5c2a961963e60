"""What a campaign kind is.

A kind (a playbook: K-OLDCUST, K-PHASED, ...) is one module of this package
holding everything that is particular to it:

- its spec model (`spec`): what a merchant submits, with the rules that need
  nothing but the spec itself, as pydantic validators naming their rule ids;
- `check`: the rules that need the database (a coupon that exists, a window
  that has not closed), run before anything is written or started;
- `compile`: the spec turned into phases (`PhasePlan`s): audience, filters,
  channel, caps, content, coupon. The workflow walks plans and never asks
  which kind it runs;
- the audiences its phases may name (`audiences`, names of the audience
  library in audiences/).

kinds/__init__.py registers the kinds; the API's and the CLI's spec union,
the OpenAPI schema and the checks are built from that registry. Adding a kind
is one module and one line there (docs/playbooks.md).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar

import asyncpg
from pydantic import Field
from sluice.schemas.budget import Budget
from sluice.schemas.campaign import (
    DEFAULT_ATTRIBUTION_DAYS,
    MAX_ATTRIBUTION_DAYS,
    AttributionWindow,
    Ident,
    PhasePlan,
    Precedence,
    Strict,
)

MAX_HOLDOUT_PERCENT = 50  # R-HO-1


class SpecBase(Strict):
    """The fields every kind's spec has; each kind narrows `kind` to its own literal name."""

    kind: str
    shop_id: Ident
    campaign_id: Ident
    holdout_percent: float = Field(
        default=0, ge=0, le=MAX_HOLDOUT_PERCENT,
        description="R-HO-1: percent of each phase's audience kept as a control group: selected, never sent",
    )
    attribution_days: int | None = Field(
        default=None, strict=True, ge=1, le=MAX_ATTRIBUTION_DAYS,
        description="R-ATT-1: count orders created within this many days after the reach; default: the kind's window",
    )
    budget: Budget | None = Field(
        default=None,
        description="R-COST-BUDGET: the most the campaign's deliveries may cost together, in the shop's currency"
                    " (yuan, above 0, at most 2 decimal places); what it cannot pay for is not sent, and the campaign"
                    " ends its sending then. None: no cap",
    )


@dataclass(frozen=True)
class Shop:
    """What the checks and the compile step know of the shop (already checked: exists, IANA zone)."""

    shop_id: str
    timezone: str
    virtual_category: bool


class Kind(ABC):
    name: ClassVar[str]
    spec: ClassVar[type[SpecBase]]
    # The audience names the kind's phases may use (each an entry of audiences.AUDIENCES).
    audiences: ClassVar[tuple[str, ...]]
    # Whether the kind's report carries a funnel (R-ED-5: potential -> reached -> handshake -> ordered ->
    # repurchased, materialised by reports/refresh.py); a kind without one reports `funnel: null`.
    funnel: ClassVar[bool] = False

    @abstractmethod
    async def check(self, conn: asyncpg.Connection, spec: SpecBase, shop: Shop, now: datetime) -> None:
        """Raise schemas.rules.RuleViolation for a rule the spec breaks against the database or the clock."""

    @abstractmethod
    def compile(self, spec: SpecBase, shop: Shop, now: datetime) -> list[PhasePlan]:
        """The phases the workflow will walk."""

    def precedence(self, spec: SpecBase) -> Precedence | None:
        """The precedence group the campaign holds or yields to (R-RP-9); none by default."""
        return None

    def attribution(self, spec: SpecBase) -> AttributionWindow:
        """R-ATT-1: the window of the kind's phases: the spec's `attribution_days` when given, else the
        kind's own default (here: DEFAULT_ATTRIBUTION_DAYS after the reach). Each compile puts it on its phases."""
        return AttributionWindow.after(spec.attribution_days or DEFAULT_ATTRIBUTION_DAYS)
