"""Prometheus metrics: sluice's own counters and the Temporal SDK's, on one endpoint per process.

Every sluice metric name and label is defined here and nowhere else (docs/observability.md).
The counters are incremented right after the transaction that wrote the ledger (or the
claims) committed, by the number of rows that statement changed, so a counter equals the
ledger's count of what this process decided (a rolled-back chunk counts nothing; a re-read
chunk counts only rows it decided itself).

Labels carry only bounded, non-personal values: a channel, a ledger state, a reason
constant, a claim state, a load kind. Never a shop, campaign or consumer id.

The Temporal SDK's own metrics (worker polls, task latencies, client RPCs) are bridged:
the SDK's Runtime records them into a MetricBuffer, which `TemporalCollector` drains into
this process's registry, so the worker's /metrics and the API's GET /metrics serve both
(no second port). Counters keep the SDK's names with Prometheus's `_total`; durations are
in seconds.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping

from prometheus_client import REGISTRY, Counter, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from temporalio.runtime import (
    BUFFERED_METRIC_KIND_COUNTER,
    BUFFERED_METRIC_KIND_GAUGE,
    LogForwardingConfig,
    LoggingConfig,
    MetricBuffer,
    MetricBufferDurationFormat,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)

# -- sluice's counters: the one definition of their names and labels

DELIVERIES = Counter(
    "sluice_deliveries",
    "Ledger rows that reached a settled state (sent, failed, suppressed, not_sent, held_out), per channel;"
    " state=failed are the sends a provider refused or never had.",
    ["state", "channel"],
)
SUPPRESSIONS = Counter(
    "sluice_suppressed",
    "Deliveries recorded suppressed, per reason (the ledger's reason constants) and channel.",
    ["reason", "channel"],
)
CLAIMS = Counter(
    "sluice_claims",
    "Coupon units by what happened to them: held (taken with a send), claimed, expired, released.",
    ["state"],
)
DISPATCHED = Counter(
    "sluice_dispatched",
    "Outbox messages by what the outbox dispatcher recorded for them (channels/dispatcher.py): handed_off (the"
    " provider took it), failed (refused for good), unknown (it may or may not have gone out), not_sent (its"
    " batch's window ended before it could go, R-WIN-1), per channel.",
    ["outcome", "channel"],
)
LOAD_ROWS = Counter(
    "sluice_load_rows",
    "Rows of loaded data per kind and outcome (accepted, duplicate, refused).",
    ["kind", "outcome"],
)

# The ledger's settled states (deliveries.state) a DELIVERIES series is labelled with.
SENT, FAILED, SUPPRESSED, NOT_SENT = "sent", "failed", "suppressed", "not_sent"
LOAD_ACCEPTED, LOAD_DUPLICATE, LOAD_REFUSED = "accepted", "duplicate", "refused"
# What the dispatcher recorded for an outbox message (DISPATCHED's outcome; FAILED as above).
HANDED_OFF, UNKNOWN = "handed_off", "unknown"


def count_deliveries(channel: str, state: str, n: int = 1) -> None:
    """`n` ledger rows of `channel` reached `state` (a committed transaction's count)."""
    if n:
        DELIVERIES.labels(state=state, channel=channel).inc(n)


def count_suppressed(channel: str, reasons: Mapping[str, int]) -> None:
    """Suppressed rows a committed transaction wrote, per reason."""
    total = 0
    for reason, n in reasons.items():
        if n:
            SUPPRESSIONS.labels(reason=reason, channel=channel).inc(n)
            total += n
    count_deliveries(channel, SUPPRESSED, total)


def count_claims(state: str, n: int = 1) -> None:
    """`n` claims rows a committed statement moved to `state` (activities/offers.py's HELD, CLAIMED, ...)."""
    if n:
        CLAIMS.labels(state=state).inc(n)


def count_dispatched(channel: str, outcome: str, n: int = 1) -> None:
    """`n` outbox messages of `channel` the dispatcher recorded with `outcome` (a committed transaction's count)."""
    if n:
        DISPATCHED.labels(outcome=outcome, channel=channel).inc(n)


def count_load_rows(kind: str, *, accepted: int = 0, duplicate: int = 0, refused: int = 0) -> None:
    """For the loaders: the rows of one committed batch of `kind` (one of the loader's kinds, a fixed set)."""
    for outcome, n in ((LOAD_ACCEPTED, accepted), (LOAD_DUPLICATE, duplicate), (LOAD_REFUSED, refused)):
        if n:
            LOAD_ROWS.labels(kind=kind, outcome=outcome).inc(n)


# -- the Temporal SDK's metrics, bridged

# Upper bounds, in seconds, of the bridged latency histograms (poll latencies reach a minute).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# Updates the buffer holds between two drains; a full buffer drops updates (and the SDK logs it).
BUFFER_SIZE = 100_000
DRAIN_EVERY_S = 1.0


class TemporalCollector(Collector):
    """The Temporal SDK's metrics from a MetricBuffer, as Prometheus families.

    Counters arrive as deltas and are summed; gauges keep their last value; histograms
    arrive as single observations and are bucketed here. Drained by a daemon thread every
    DRAIN_EVERY_S and at every scrape, so the buffer never fills.
    """

    def __init__(self, buffer: MetricBuffer):
        self.buffer = buffer
        self._lock = threading.Lock()
        self._counters: dict[tuple, float] = {}
        self._gauges: dict[tuple, float] = {}
        # (name, labels) -> [per-bucket counts..., +Inf count, sum]
        self._histograms: dict[tuple, list[float]] = {}
        self._help: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain_loop, name="temporal-metrics-drain", daemon=True)

    def start(self) -> TemporalCollector:
        self._thread.start()
        return self

    def _drain_loop(self) -> None:
        while not self._stop.wait(DRAIN_EVERY_S):
            try:
                self.drain()
            except Exception:  # never let the drain thread die; the next scrape tries again
                logging.getLogger("sluice.metrics").exception("draining the Temporal metric buffer failed")

    def drain(self) -> None:
        with self._lock:
            for update in self.buffer.retrieve_updates():
                metric = update.metric
                key = (metric.name, tuple(sorted((k, str(v)) for k, v in update.attributes.items())))
                self._help.setdefault(metric.name, metric.description or metric.name)
                if metric.kind == BUFFERED_METRIC_KIND_COUNTER:
                    self._counters[key] = self._counters.get(key, 0) + update.value
                elif metric.kind == BUFFERED_METRIC_KIND_GAUGE:
                    self._gauges[key] = update.value
                else:
                    h = self._histograms.setdefault(key, [0.0] * (len(LATENCY_BUCKETS) + 2))
                    for i, bound in enumerate(LATENCY_BUCKETS):
                        if update.value <= bound:
                            h[i] += 1
                    h[-2] += 1
                    h[-1] += update.value

    def collect(self) -> Iterable:
        self.drain()
        with self._lock:
            yield from _families(self._counters, self._help, CounterMetricFamily)
            yield from _families(self._gauges, self._help, GaugeMetricFamily)
            families: dict[str, HistogramMetricFamily] = {}
            for (name, labels), h in sorted(self._histograms.items()):
                family = families.get(name)
                if family is None:
                    family = families[name] = HistogramMetricFamily(name, self._help[name], labels=[k for k, _ in labels])
                buckets = [(str(b), h[i]) for i, b in enumerate(LATENCY_BUCKETS)] + [("+Inf", h[-2])]
                family.add_metric([v for _, v in labels], buckets, h[-1])
            yield from families.values()

    def describe(self) -> Iterable:
        return []  # families appear as the SDK records them


def _families(values: dict[tuple, float], help_: dict[str, str], kind) -> Iterable:
    families = {}
    for (name, labels), value in sorted(values.items()):
        family = families.get(name)
        if family is None:
            family = families[name] = kind(name, help_[name], labels=[k for k, _ in labels])
        family.add_metric([v for _, v in labels], value)
    return families.values()


_runtime_lock = threading.Lock()
_runtime: Runtime | None = None


def temporal_runtime() -> Runtime:
    """This process's Temporal Runtime: metrics into the bridged buffer, core logs into `temporalio.core`.

    One per process (a Runtime owns a thread pool); pass it to Client.connect for the worker's
    and the API's clients. CLI commands keep the SDK's default runtime (nothing to scrape).
    """
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            buffer = MetricBuffer(BUFFER_SIZE, duration_format=MetricBufferDurationFormat.SECONDS)
            _runtime = Runtime(
                telemetry=TelemetryConfig(
                    metrics=buffer,
                    # The SDK core's own log lines go through logging, hence structlog's JSON and masking.
                    logging=LoggingConfig(
                        filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
                        forwarding=LogForwardingConfig(logger=logging.getLogger("temporalio.core")),
                    ),
                )
            )
            REGISTRY.register(TemporalCollector(buffer).start())
        return _runtime


class MetricsServer:
    """The worker's /metrics: prometheus_client's HTTP server on its own thread."""

    def __init__(self, host: str, port: int):
        self.server, self.thread = start_http_server(port, addr=host)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
