"""Precedence between a shop's campaigns (R-RP-9): who holds a group now.

The decisions (who yields, when to look) are in workflows/precedence.py; this
is the one read they need.
"""

from __future__ import annotations

import asyncpg
from sluice.schemas.activities import PrecedenceInput, PrecedenceResult
from sluice.workflows.precedence import HOLDING_STATES
from temporalio import activity

# The shop's running holder of the group, the earliest first. $1 shop, $2 group, $3 this campaign,
# $4 the holding states. An index range on campaigns_precedence_holders (a few rows per shop).
HOLDER = """
    SELECT workflow_id FROM campaigns
    WHERE shop_id = $1 AND precedence_group = $2 AND takes_precedence AND id <> $3 AND state = ANY($4::text[])
    ORDER BY id LIMIT 1
"""


class PrecedenceActivities:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    @activity.defn
    async def precedence_holder(self, inp: PrecedenceInput) -> PrecedenceResult:
        holder = await self.pool.fetchval(HOLDER, inp.shop_id, inp.group, inp.campaign_db_id, list(HOLDING_STATES))
        return PrecedenceResult(holder=holder)
