"""structlog as JSON lines, with personal data masked before anything is written.

Context (shop, campaign, workflow and run ids) travels in contextvars, bound
per activity (activities/context.py) and per request (api/http.py); the current
trace's ids are added when a span is open (workers/tracing.py).

Records of the standard library's loggers (temporalio, asyncpg, uvicorn, the
Temporal core's forwarded lines) go through the same chain by structlog's
ProcessorFormatter on the root handler: one JSON line each, exceptions included,
masked the same way.
"""

from __future__ import annotations

import logging
import re
import sys

import structlog
from opentelemetry import trace

_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})")
_PHONE = re.compile(r"(?<!\d)(\+?\d{2,4})\d{4,}(\d{2})(?!\d)")


def mask(text: str) -> str:
    """Keep enough of a phone or email to recognise it, never enough to use it."""
    text = _EMAIL.sub(r"\1***@\2", text)
    return _PHONE.sub(r"\1****\2", text)


_NOT_PERSONAL = {"workflow_id", "run_id", "timestamp", "shop_id", "campaign_id", "trace_id", "span_id", "parent_id"}


def _mask_value(value):
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {k: _mask_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_mask_value(v) for v in value]
    return value


def _mask_processor(_logger, _name, event_dict: dict) -> dict:
    for key, value in event_dict.items():
        if key not in _NOT_PERSONAL:
            event_dict[key] = _mask_value(value)
    return event_dict


def _trace_ids(_logger, _name, event_dict: dict) -> dict:
    """The open span's ids, so a line can be found from its trace and the other way round."""
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event_dict.setdefault("trace_id", trace.format_trace_id(ctx.trace_id))
        event_dict.setdefault("span_id", trace.format_span_id(ctx.span_id))
    return event_dict


# The third-party loggers routed through structlog (their records become masked JSON lines).
THIRD_PARTY_LOGGERS = ("temporalio", "asyncpg", "uvicorn", "uvicorn.error", "uvicorn.access", "httpx")

def configure_logging(level: str = "INFO", stream=None) -> None:
    stream = stream or sys.stderr
    stamp = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _trace_ids,
    ]
    render = [
        structlog.processors.format_exc_info,
        structlog.processors.EventRenamer("msg"),
        _mask_processor,
        structlog.processors.JSONRenderer(default=str),
    ]
    # Every stdlib record (third-party libraries) through the same chain, as one JSON line.
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *stamp],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *render],
        )
    )
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper())
    # The libraries' own loggers reach the root handler whatever configured them before (a dictConfig with
    # disable_existing_loggers, uvicorn's own handlers): no handler of their own, propagating, enabled.
    for name in THIRD_PARTY_LOGGERS:
        lib = logging.getLogger(name)
        for old in lib.handlers[:]:
            lib.removeHandler(old)
        lib.propagate, lib.disabled = True, False
    structlog.configure(
        processors=[*stamp, *render],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
