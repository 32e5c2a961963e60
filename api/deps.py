"""What every route module of the API shares: the key's shop, the error body, the workflow id path.

A domain's routes live in their own module as a FastAPI `APIRouter` taking
`shop: KeyShop` (the shop of the request's API key, checked by the Gate in
api/gate.py before any route runs) and are included by `create_app`
(api/http.py) with one line.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from sluice.api.gate import SHOP_SCOPE_KEY
from sluice.schemas.campaign import WORKFLOW_ID_PATTERN

_bearer = HTTPBearer(auto_error=False, description="an API key from `sluice keys create SHOP`")


class RuleError(BaseModel):
    field: str
    rule: str
    message: str


class ErrorBody(BaseModel):
    detail: list[RuleError] | str


def key_shop(request: Request, _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None) -> str:
    """The shop of the request's API key (the Gate has checked it; the Security part documents it)."""
    shop_id = request.scope.get(SHOP_SCOPE_KEY)
    if shop_id is None:  # only if a route were mounted outside the Gate
        raise HTTPException(status_code=401, detail="a valid API key is required")
    return shop_id


KeyShop = Annotated[str, Depends(key_shop)]
WorkflowId = Annotated[str, Path(pattern=WORKFLOW_ID_PATTERN, max_length=129, description="{shop_id}.{campaign_id}")]
