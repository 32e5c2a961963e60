"""A real HTTP SMS gateway on loopback, standing in for an SMS provider (the API of channels/sms.py).

It keeps what it accepted by our reference (`messageId`), idempotently: a reference
seen before answers its first result and is never handed on twice. It counts each
message's billed segments its own way (a plain character count, not sluice's
code) and can misbehave on purpose: throttle (429 with Retry-After), fail before or
after accepting (503/500), drop the connection without an answer before or after
accepting, accept and then hang past the client's timeout, refuse numbers for good
(invalid, opted out). Tests compare its own per-recipient counts with the ledger.
`start()` runs it in a thread of the test process; `start_process()` in a process of
its own (benchmarks), its totals then read over HTTP (`counts()`, `per_number()`).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import multiprocessing
import random
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


@dataclass
class Chaos:
    throttle: float = 0.0  # 429 before anything is accepted
    retry_after_s: int = 0  # the 429's Retry-After
    fail_before: float = 0.0  # 503 before anything is accepted
    fail_after: float = 0.0  # 500 after the batch was accepted (the batch is resent with the same references)
    hang_after: float = 0.0  # accept, then answer after hang_s (the client times out first)
    drop_before: float = 0.0  # close the connection without an answer, nothing accepted
    drop_after: float = 0.0  # accept the batch, then close the connection without an answer
    hang_s: float = 2.0
    fail_lookup: float = 0.0  # 503 to a lookup by reference (GET /sms/1/logs)
    reject_numbers: set[str] = field(default_factory=set)  # permanent per-number rejection: invalid number
    opted_out: set[str] = field(default_factory=set)  # permanent per-number rejection: opted out at the provider
    seed: int = 1


def national(number: str) -> str:
    """The number as the shop stores it (tests compare with shop_customers.phone)."""
    return number[3:] if number.startswith("+86") else number


# How long an idle connection stays open, as a provider's server keeps it (uvicorn's 5 s default equals httpx's
# keep-alive expiry: a request sent on a connection the server was closing that instant was lost, its batch
# `unknown`, one chunk in a few 1,000,000 SMS benchmark runs).
KEEP_ALIVE_S = 75
# A result's status by what became of the number (shared by every result, never changed).
_PENDING = {"groupName": "PENDING", "name": "PENDING_ENROUTE", "description": "sent"}
_INVALID = {"groupName": "REJECTED", "name": "REJECTED_DESTINATION", "description": "invalid"}
_OPTED_OUT = {"groupName": "REJECTED", "name": "REJECTED_OPTED_OUT", "description": "opted out"}


def billed_segments(text: str) -> int:
    n = len(text)
    return 1 if n <= 70 else math.ceil(n / 67)


class Gateway:
    def __init__(self, chaos: Chaos | None = None):
        self.chaos = chaos or Chaos()
        self.rng = random.Random(self.chaos.seed)
        self.accepted: dict[str, dict] = {}  # messageId -> the result answered for it
        self.deliveries = Counter()  # national number -> messages actually handed on to the network
        self.segments = Counter()  # national number -> billed segments handed on
        self.requests = Counter()
        self.offered = Counter()  # messageId -> batch requests that carried it and were processed (duplicates included)
        self._ids = itertools.count(1)
        self.app = self._build()
        self.port = _free_port()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._process: multiprocessing.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self, messages: list[dict]) -> list[dict]:
        # The benchmarks' stand-in for a remote provider runs on the sender's cores: per number only dict
        # lookups and one result (the statuses shared, the segments counted once per text, the refusals
        # looked up only when there are any): the process 10.3 -> 8.8 us per number at 400,000 SMS, 6.4 in this handler.
        results = []
        c = self.chaos
        refusing = bool(c.reject_numbers or c.opted_out)
        accepted, offered, deliveries, segments = self.accepted, self.offered, self.deliveries, self.segments
        for m in messages:
            text = m["text"]
            n = billed_segments(text)
            for d in m["destinations"]:
                ref, to = d["messageId"], d["to"]
                offered[ref] = offered.get(ref, 0) + 1
                result = accepted.get(ref)
                if result is None:
                    number = national(to)
                    if refusing and (number in c.reject_numbers or to in c.reject_numbers):
                        status = _INVALID
                    elif refusing and (number in c.opted_out or to in c.opted_out):
                        status = _OPTED_OUT
                    else:
                        status = _PENDING
                        deliveries[number] = deliveries.get(number, 0) + 1
                        segments[number] = segments.get(number, 0) + n
                    result = accepted[ref] = {"messageId": ref, "to": to, "status": status, "smsCount": n,
                                              "id": f"gw-{next(self._ids)}"}
                results.append(result)
        return results

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.post("/sms/2/text/advanced")
        async def batch(request: Request):
            body = await request.json()
            c, roll = self.chaos, self.rng.random()
            self.requests["batch"] += 1
            if roll < c.throttle:
                self.requests["429"] += 1
                return JSONResponse({"error": "slow down"}, status_code=429, headers={"Retry-After": str(c.retry_after_s)})
            roll -= c.throttle
            if roll < c.fail_before:
                self.requests["503"] += 1
                return JSONResponse({"error": "unavailable"}, status_code=503)
            roll -= c.fail_before
            if roll < c.drop_before:
                self.requests["drop-before-accept"] += 1
                return _drop(request)
            roll -= c.drop_before
            results = self._accept(body["messages"])
            if roll < c.fail_after:
                self.requests["500-after-accept"] += 1
                return JSONResponse({"error": "internal"}, status_code=500)
            roll -= c.fail_after
            if roll < c.drop_after:
                self.requests["drop-after-accept"] += 1
                return _drop(request)
            roll -= c.drop_after
            if roll < c.hang_after:
                self.requests["hang-after-accept"] += 1
                await asyncio.sleep(c.hang_s)
            # A plain JSONResponse: FastAPI's encoder over a returned dict costs 10x the gateway's own work.
            return JSONResponse({"bulkId": body.get("bulkId"), "messages": results})

        @app.get("/sms/1/logs")
        async def logs(request: Request):
            self.requests["lookup"] += 1
            if self.chaos.fail_lookup and self.rng.random() < self.chaos.fail_lookup:
                self.requests["lookup-503"] += 1
                return JSONResponse({"error": "unavailable"}, status_code=503)
            refs = request.query_params.getlist("messageId")
            return JSONResponse({"results": [self.accepted[r] for r in refs if r in self.accepted]})

        @app.get("/_test/counts")
        async def counts():
            d = self.deliveries
            return JSONResponse({"numbers": len(d), "messages": sum(d.values()), "max_per_number": max(d.values(), default=0),
                                 "segments": sum(self.segments.values()), "requests": dict(self.requests)})

        @app.get("/_test/per-number")
        async def per_number():
            rejected = {national(r["to"]): r["status"]["name"] for r in self.accepted.values()
                        if r["status"]["groupName"] == "REJECTED"}
            return JSONResponse({"deliveries": dict(self.deliveries), "segments": dict(self.segments), "rejected": rejected})

        return app

    def start(self) -> Gateway:
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="error", lifespan="off",
                                timeout_keep_alive=KEEP_ALIVE_S)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise TimeoutError("gateway did not start")
            time.sleep(0.02)
        return self

    def start_process(self) -> Gateway:
        """Run in a process of its own (no GIL shared with the sender); read its counts with counts()."""
        self._process = multiprocessing.get_context("spawn").Process(
            target=_serve, args=(self.chaos, self.port), daemon=True
        )
        self._process.start()
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"{self.url}/_test/counts", timeout=1)
                return self
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise TimeoutError("gateway did not start") from None
                time.sleep(0.1)

    def counts(self) -> dict:
        return httpx.get(f"{self.url}/_test/counts", timeout=30).json()

    def per_number(self) -> dict:
        """Its own bookkeeping per national number: {"deliveries": {number: messages handed on}, "segments": {...},
        "rejected": {number: the refusal's name}} (a refused number it never saw is not there)."""
        return httpx.get(f"{self.url}/_test/per-number", timeout=60).json()

    def stop(self) -> None:
        if self._server:
            self._server.should_exit = True
            self._thread.join(timeout=5)
        if self._process:
            self._process.terminate()
            self._process.join(timeout=5)


def _drop(request: Request) -> JSONResponse:
    """Close the request's connection with no answer (uvicorn's connection, from the ASGI receive callable):
    the client sees the connection go after its request left. The returned answer goes nowhere."""
    request.receive.__self__.transport.close()
    return JSONResponse({}, status_code=500)


def _serve(chaos: Chaos, port: int) -> None:
    gw = Gateway(chaos)
    uvicorn.run(gw.app, host="127.0.0.1", port=port, log_level="error", lifespan="off", timeout_keep_alive=KEEP_ALIVE_S)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
