"""A channel over an HTTP messaging gateway (the shape of common SMS APIs).

The gateway contract the channel relies on:
- `POST /v1/messages:batch` with `{"messages": [{"client_ref", "to", "body"}]}`
  answers per message `{"client_ref", "status": "accepted"|"rejected", "id", "error"}`;
  a `client_ref` the gateway has seen before returns the first answer, never
  a second message (idempotency by reference);
- `POST /v1/messages:lookup` with `{"client_refs": [...]}` answers the known
  ones `{"client_ref", "status", "id"}`: the reconciliation by reference.

Ambiguous outcomes (timeout after the request left, 5xx, 429) raise
ChannelUnavailable: the delivery rows stay `reserved`, the slice activity is
retried by Temporal, and the retry first asks the gateway which references it
already has (reconcile), so nothing is sent blindly twice.
"""

from __future__ import annotations

import httpx
from sluice.activities.channels import Outbound, Outcome


class ChannelUnavailable(Exception):
    """The provider's answer is unknown or temporary; retry after reconciling."""


def client_ref(m: Outbound) -> str:
    """The delivery's business key, stable across retries and workers."""
    return f"{m.campaign_id}-{m.phase}-{m.day:%Y%m%d}-{m.consumer_id}-{m.channel}"


class HttpGatewayChannel:
    def __init__(self, name: str, base_url: str, *, timeout_s: float = 5.0, batch_size: int = 500):
        self.name = name
        self.batch_size = batch_size
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout_s)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _post(self, path: str, payload: dict) -> dict:
        try:
            res = await self._http.post(path, json=payload)
        except httpx.TransportError as exc:  # refused, reset, timed out: the outcome is unknown
            raise ChannelUnavailable(f"{self.name}: {type(exc).__name__}") from exc
        if res.status_code == 429 or res.status_code >= 500:
            raise ChannelUnavailable(f"{self.name}: HTTP {res.status_code}")
        res.raise_for_status()
        return res.json()

    async def send(self, messages: list[Outbound]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for i in range(0, len(messages), self.batch_size):
            part = messages[i : i + self.batch_size]
            by_ref = {client_ref(m): m for m in part}
            body = await self._post(
                "/v1/messages:batch",
                {"messages": [{"client_ref": r, "to": m.address, "body": m.body} for r, m in by_ref.items()]},
            )
            outcomes.extend(self._outcomes(body["results"], by_ref))
        return outcomes

    async def reconcile(self, messages: list[Outbound]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for i in range(0, len(messages), self.batch_size):
            by_ref = {client_ref(m): m for m in messages[i : i + self.batch_size]}
            body = await self._post("/v1/messages:lookup", {"client_refs": list(by_ref)})
            outcomes.extend(self._outcomes(body["found"], by_ref))
        return outcomes

    @staticmethod
    def _outcomes(results: list[dict], by_ref: dict[str, Outbound]) -> list[Outcome]:
        out = []
        for r in results:
            m = by_ref.get(r["client_ref"])
            if m is None:
                continue
            if r["status"] == "accepted":
                out.append(Outcome(m.consumer_id, "sent", r.get("id")))
            else:
                out.append(Outcome(m.consumer_id, "failed", r.get("id"), r.get("error") or "rejected"))
        return out
