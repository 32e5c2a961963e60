"""`POST /load/{kind}`: a batch of a shop's records, idempotent on each record's key (ingest/, docs/data.md).

The answer counts the batch's records: accepted (inserted + updated), duplicate (already there as
sent) and refused, with each refusal's row (the record's index in `records`), field, rule and
reason. The batch's valid records are written in one transaction, all or none; a refused record
writes nothing. The shop is the key's: a record naming another shop is refused (R-API-KEY).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Request
from pydantic import BaseModel, Field
from sluice.api.deps import ErrorBody, KeyShop
from sluice.ingest.kinds import KINDS, load_batch
from sluice.ingest.records import KINDS as KIND_NAMES

LOAD_PREFIX = "/load/"
MAX_LOAD_RECORDS = 10_000  # R-LOAD-SIZE
MAX_LOAD_BYTES = 8 * 1024 * 1024  # R-LOAD-SIZE: the body of one batch (api/gate.py, per route)

router = APIRouter()


class LoadBatch(BaseModel):
    records: list[Any] = Field(min_length=1, max_length=MAX_LOAD_RECORDS,
                                          description="the records, each a JSON object of the kind (docs/data.md)")


class Refused(BaseModel):
    row: int = Field(description="index of the record in `records`")
    field: str
    rule: str
    message: str


class LoadAnswer(BaseModel):
    kind: str
    received: int
    accepted: int = Field(description="inserted + updated")
    inserted: int
    updated: int
    duplicate: int = Field(description="already stored exactly as sent: nothing changed")
    refused: int = Field(description="records refused (each with its reasons in `errors`)")
    errors: list[Refused]


@router.post(
    "/load/{kind}",
    response_model=LoadAnswer,
    responses={401: {"model": ErrorBody}, 413: {"model": ErrorBody}, 422: {"model": ErrorBody}},
)
async def load(
    request: Request, shop: KeyShop, kind: Literal[KIND_NAMES], batch: Annotated[LoadBatch, Body()]  # type: ignore[valid-type]
) -> LoadAnswer:
    """Load a batch of records of one kind into the key's shop (up to 10,000 records, 8 MiB)."""
    spec = KINDS[kind]
    async with request.app.state.pool.acquire() as conn:
        out = await load_batch(conn, spec, shop, batch.records)
    return LoadAnswer(
        kind=kind, received=len(batch.records), accepted=out.accepted, inserted=out.inserted, updated=out.updated,
        duplicate=out.duplicate, refused=out.refused_rows, errors=[Refused(**r.as_dict()) for r in out.refused],
    )
