"""A real HTTP messaging gateway on loopback, standing in for an SMS provider.

It keeps what it accepted (by client reference, idempotently) and can misbehave
on purpose: throttle (429), fail before or after accepting (5xx), or accept and
then hang past the client's timeout. Tests compare its own per-recipient
counts with the ledger.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


@dataclass
class Chaos:
    throttle: float = 0.0  # 429 before anything is accepted
    fail_before: float = 0.0  # 503 before anything is accepted
    fail_after: float = 0.0  # 500 after the batch was accepted (ambiguous for the client)
    hang_after: float = 0.0  # accept, then answer after hang_s (the client times out first)
    hang_s: float = 2.0
    reject_numbers: set[str] = field(default_factory=set)  # permanent per-message rejection
    seed: int = 1


class Gateway:
    def __init__(self, chaos: Chaos | None = None):
        self.chaos = chaos or Chaos()
        self.rng = random.Random(self.chaos.seed)
        self.accepted: dict[str, dict] = {}  # client_ref -> {"id", "to", "status"}
        self.deliveries = Counter()  # to -> messages actually handed on to the network
        self.requests = Counter()
        self._ids = itertools.count(1)
        self.app = self._build()
        self.port = _free_port()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self, messages: list[dict]) -> list[dict]:
        results = []
        for m in messages:
            ref = m["client_ref"]
            if ref not in self.accepted:
                status = "rejected" if m["to"] in self.chaos.reject_numbers else "accepted"
                self.accepted[ref] = {"id": f"gw-{next(self._ids)}", "to": m["to"], "status": status}
                if status == "accepted":
                    self.deliveries[m["to"]] += 1
            a = self.accepted[ref]
            results.append({"client_ref": ref, "status": a["status"], "id": a["id"],
                            "error": "invalid number" if a["status"] == "rejected" else None})
        return results

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/messages:batch")
        async def batch(request: Request):
            body = await request.json()
            c, roll = self.chaos, self.rng.random()
            self.requests["batch"] += 1
            if roll < c.throttle:
                self.requests["429"] += 1
                return JSONResponse({"error": "slow down"}, status_code=429)
            roll -= c.throttle
            if roll < c.fail_before:
                self.requests["503"] += 1
                return JSONResponse({"error": "unavailable"}, status_code=503)
            roll -= c.fail_before
            results = self._accept(body["messages"])
            if roll < c.fail_after:
                self.requests["500-after-accept"] += 1
                return JSONResponse({"error": "internal"}, status_code=500)
            roll -= c.fail_after
            if roll < c.hang_after:
                self.requests["hang-after-accept"] += 1
                await asyncio.sleep(c.hang_s)
            return {"results": results}

        @app.post("/v1/messages:lookup")
        async def lookup(request: Request):
            body = await request.json()
            self.requests["lookup"] += 1
            found = [{"client_ref": r, **self.accepted[r]} for r in body["client_refs"] if r in self.accepted]
            return {"found": found}

        return app

    def start(self) -> Gateway:
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="error", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise TimeoutError("gateway did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self._server:
            self._server.should_exit = True
            self._thread.join(timeout=5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
