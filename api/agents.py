"""`PUT /agents/{agent_id}/presence`: a chat agent of the key's shop goes online or offline (R-PH-5).

The chat platform reports presence as it changes; the send path reads it when it decides a chunk
(channels/chat.py). A report carries the instant it was seen (`at`, default: now; never later than
now): a report older than the stored presence changes nothing (`applied` false), so reports that
arrive out of order leave the newest. Repeating a report is harmless. Agents themselves are loaded
with `POST /load/agents` (docs/data.md), which sets presence too (a whole record: name and online).
"""

from __future__ import annotations

from datetime import UTC, datetime, time
from typing import Annotated

from fastapi import APIRouter, Body, HTTPException, Path, Request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictBool
from sluice.api.deps import ErrorBody, KeyShop
from sluice.channels.chat import set_presence
from sluice.ingest.records import REF_PATTERN
from sluice.schemas.campaign import DATE_MAX, DATE_MIN

router = APIRouter()
PRESENCE_PATH = "/agents/{agent_id}/presence"


class Presence(BaseModel):
    model_config = ConfigDict(extra="forbid")

    online: StrictBool
    # Bounded, so every accepted instant is one PostgreSQL and asyncpg can hold (year 1 at +05:00 is not).
    at: AwareDatetime | None = Field(
        default=None,
        ge=datetime.combine(DATE_MIN, time.min, UTC),
        le=datetime.combine(DATE_MAX, time.min, UTC),
        description="when the presence was seen (ISO 8601 with offset, 2000 to 2100); default now",
    )


class PresenceAnswer(BaseModel):
    agent_id: str
    online: bool = Field(description="the stored presence")
    updated_at: datetime = Field(description="when the stored presence was seen")
    applied: bool = Field(description="false: the stored presence was seen later than this report, which changed nothing")


@router.put(
    PRESENCE_PATH,
    response_model=PresenceAnswer,
    responses={401: {"model": ErrorBody}, 404: {"model": ErrorBody, "description": "not an agent of this shop"},
               422: {"model": ErrorBody}},
)  # fmt: skip
async def put_presence(
    request: Request,
    shop: KeyShop,
    agent_id: Annotated[str, Path(pattern=REF_PATTERN, description="an agent of the key's shop (loaded with /load/agents)")],
    presence: Annotated[Presence, Body()],
) -> PresenceAnswer:
    """Set a chat agent of the key's shop online or offline (R-PH-5: who may send the shop's chat messages)."""
    async with request.app.state.pool.acquire() as conn:
        row = await set_presence(conn, shop, agent_id, presence.online, presence.at)
    if row is None:
        raise HTTPException(status_code=404, detail="agent not found")
    return PresenceAnswer(agent_id=agent_id, online=row["online"], updated_at=row["updated_at"], applied=row["applied"])
