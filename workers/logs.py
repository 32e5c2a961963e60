"""structlog as JSON lines, with personal data masked before anything is written.

Context (shop, campaign, workflow and run ids) travels in contextvars, bound
per activity (activities/context.py) and per request (api/http.py).
"""

from __future__ import annotations

import logging
import re
import sys

import structlog

_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})")
_PHONE = re.compile(r"(?<!\d)(\+?\d{2,4})\d{4,}(\d{2})(?!\d)")


def mask(text: str) -> str:
    """Keep enough of a phone or email to recognise it, never enough to use it."""
    text = _EMAIL.sub(r"\1***@\2", text)
    return _PHONE.sub(r"\1****\2", text)


_NOT_PERSONAL = {"workflow_id", "run_id", "timestamp", "shop_id", "campaign_id"}


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


def configure_logging(level: str = "INFO", stream=None) -> None:
    stream = stream or sys.stderr
    logging.basicConfig(format="%(message)s", stream=stream, level=level.upper(), force=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.EventRenamer("msg"),
            _mask_processor,
            structlog.processors.JSONRenderer(default=str),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
