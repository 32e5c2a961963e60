"""How long and how often the campaign workflow retries its activities.

Every policy names what is not worth retrying (activities.errors) and how long
retrying may last. The limits are generous: an outage of Postgres or of the
workers shorter than them costs nothing but time, because every activity is
idempotent against the ledger. A failure past a limit does not fail the
campaign: the workflow halts it with the reason and waits for `resume` or
`cancel` (workflows/campaign.py, docs/reliability.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sluice.activities.errors import NOT_WORTH_RETRYING
from temporalio.common import RetryPolicy

RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    non_retryable_error_types=list(NOT_WORTH_RETRYING),
)

# State, report, close-day and reconcile: small statements. Six hours of failing attempts (a long
# Postgres outage) halt the campaign rather than fail it.
BOOKKEEPING_LIMIT = timedelta(hours=6)
BOOKKEEPING_ATTEMPT = timedelta(minutes=10)
# A send attempt heartbeats every chunk; the whole activity never outlives its day's window.
SEND_ATTEMPT = timedelta(hours=2)
# The least a window-bound activity is given, so one scheduled just before 22:00 can still run.
WINDOW_GRACE = timedelta(minutes=5)


@dataclass(frozen=True)
class Limits:
    """The timeouts and retry policy of one activity call, as keyword arguments of execute_activity."""

    start_to_close_timeout: timedelta
    schedule_to_close_timeout: timedelta

    def options(self) -> dict:
        return {
            "start_to_close_timeout": self.start_to_close_timeout,
            "schedule_to_close_timeout": self.schedule_to_close_timeout,
            "retry_policy": RETRY,
        }


BOOKKEEPING = Limits(start_to_close_timeout=BOOKKEEPING_ATTEMPT, schedule_to_close_timeout=BOOKKEEPING_LIMIT)
# The campaign's state row (one UPDATE): an attempt lost with its worker is retried after 30 s, not 10 minutes.
STATE_ATTEMPT = timedelta(seconds=30)
STATE = Limits(start_to_close_timeout=STATE_ATTEMPT, schedule_to_close_timeout=BOOKKEEPING_LIMIT)
# The report refresh after each day (attribution and the report tables, seconds at a 1M shop): a failure
# past half an hour is logged and left to the next refresh, never a halt (reports are a cache).
REPORT = Limits(start_to_close_timeout=timedelta(minutes=10), schedule_to_close_timeout=timedelta(minutes=30))


def until_window_closes(now: datetime, close_at: datetime, attempt: timedelta = BOOKKEEPING_ATTEMPT) -> Limits:
    """Retry until the day's window closes (with a little grace): past 22:00 the work is moot."""
    left = max(close_at - now, timedelta(0)) + WINDOW_GRACE
    return Limits(start_to_close_timeout=min(attempt, left), schedule_to_close_timeout=left)


def send_limits(now: datetime, close_at: datetime) -> Limits:
    return until_window_closes(now, close_at, attempt=SEND_ATTEMPT)


def error_rate_halt(outcomes: Sequence[tuple[int, int]], window: int, threshold: float) -> str | None:
    """Why a campaign should halt itself, from its finished slices' (sent, failed) counts, oldest first:
    over the most recent slices holding at least `window` sends (sent + failed), a failed share above
    `threshold`. None while fewer than `window` sends are known or the share is at most the threshold.
    Suppressed, held-out and still-unknown recipients are no sends: they never count."""
    sent = failed = 0
    for s, f in reversed(outcomes):
        sent, failed = sent + s, failed + f
        if sent + failed >= window:
            break
    total = sent + failed
    if total < window or total == 0 or failed / total <= threshold:
        return None
    return f"error rate {failed / total:.1%} over the last {total:,} sends passed the threshold {threshold:.1%}"
