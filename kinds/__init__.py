"""The campaign kinds sluice runs, one module each (kinds/base.py says what a kind is).

Everything that differs between kinds is decided here, from the registry: the
spec union the API and the CLI validate (and the OpenAPI schema shows), the
database checks, the compile step. Nothing outside a kind's module asks which
kind a spec or a plan is (tests/test_kinds.py scans for it).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Union

from pydantic import Field
from sluice.kinds.acquire import Acquire
from sluice.kinds.base import Kind, Shop, SpecBase
from sluice.kinds.edm import Edm
from sluice.kinds.oldcust import OldCustomer
from sluice.kinds.phased import Phased
from sluice.kinds.repurchase import Repurchase
from sluice.schemas.campaign import CampaignPlan, workflow_id_for

# The registry: adding a kind is one module and one line here.
KINDS: dict[str, Kind] = {k.name: k for k in (OldCustomer(), Phased(), Repurchase(), Acquire(), Edm())}

# The spec of any registered kind, told apart by its `kind` field.
CampaignSpec = Annotated[Union[tuple(k.spec for k in KINDS.values())], Field(discriminator="kind")]  # noqa: UP007


def kind_of(spec: SpecBase) -> Kind:
    return KINDS[spec.kind]


def compile_plan(spec: SpecBase, *, campaign_db_id: int, shop: Shop, now: datetime) -> CampaignPlan:
    kind = kind_of(spec)
    # R-ATT-1: a phase whose compile left its attribution window unset gets the kind's (`Kind.attribution`, which
    # honours the spec's `attribution_days`), so no kind can accept that field and then ignore it.
    phases = [p if "attribution" in p.model_fields_set else p.model_copy(update={"attribution": kind.attribution(spec)})
              for p in kind.compile(spec, shop, now)]  # fmt: skip
    workflow_id = workflow_id_for(spec.shop_id, spec.campaign_id)
    return CampaignPlan(
        campaign_db_id=campaign_db_id,
        workflow_id=workflow_id,
        shop_id=spec.shop_id,
        campaign_id=spec.campaign_id,
        kind=spec.kind,
        timezone=shop.timezone,
        phases=phases,
        precedence=kind.precedence(spec),
        holdout_percent=spec.holdout_percent,  # R-HO-1
        holdout_key=workflow_id,  # R-HO-1: the control group's key, known to a preview too
        budget=spec.budget,  # R-COST-BUDGET
    )


__all__ = ["KINDS", "CampaignSpec", "Kind", "Shop", "SpecBase", "compile_plan", "kind_of"]
