"""Per-activity log context: shop, campaign, workflow and run ids on every line."""

from __future__ import annotations

import structlog
from temporalio import activity


def bind_activity_context(**ids) -> structlog.stdlib.BoundLogger:
    info = activity.info()
    return structlog.get_logger("sluice.activity").bind(
        workflow_id=info.workflow_id,
        run_id=info.workflow_run_id,
        activity=info.activity_type,
        attempt=info.attempt,
        **ids,
    )
