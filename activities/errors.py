"""What activities raise, as types the workflow's retry policies can name.

Temporal retries an activity until its policy says stop. Two kinds of failure
are not worth retrying, because another attempt meets the same input and
fails the same way: input the activity cannot act on (an unknown audience, a
channel no worker is configured for). They are raised as non-retryable
`ApplicationError`s whose `type` the retry policies list
(workflows/policies.py), so a bad input fails at once instead of retrying
forever; the workflow then halts the campaign with the reason (see
docs/reliability.md).

Everything else (Postgres down, a provider's 5xx, a lost connection, a
cap reading racing a concurrent campaign) is retried, within the limits the
policies give.
"""

from __future__ import annotations

from temporalio.exceptions import ApplicationError

INVALID_INPUT = "InvalidActivityInput"
NOT_CONFIGURED = "ChannelNotConfigured"
CAP_READING_RACED = "CapReadingRaced"
PROVIDER_REFUSED = "ProviderRefused"

# The `type`s no retry policy retries.
NOT_WORTH_RETRYING = (INVALID_INPUT, NOT_CONFIGURED, PROVIDER_REFUSED)


def invalid_input(field: str, message: str) -> ApplicationError:
    """An activity input it cannot act on: the field and what is wrong with it."""
    return ApplicationError(f"{field}: {message}", {"field": field}, type=INVALID_INPUT, non_retryable=True)


def not_configured(channel: str) -> ApplicationError:
    """No adapter for the channel on this worker (a deployment error; fix the worker, then resume)."""
    return ApplicationError(
        f"no channel configured for {channel!r} on this worker",
        {"channel": channel},
        type=NOT_CONFIGURED,
        non_retryable=True,
    )


def cap_reading_raced(message: str) -> ApplicationError:
    """The cap reading after the reservation disagrees with it (a concurrent commit between the two
    statements): the chunk's transaction rolls back and a retry decides it afresh."""
    return ApplicationError(message, type=CAP_READING_RACED, non_retryable=False)



def provider_refused(channel: str, message: str) -> ApplicationError:
    """The provider refuses the request itself (a 4xx other than 429: bad credentials, a malformed
    batch): every retry would meet the same answer, so the campaign halts with it (fix, then resume)."""
    return ApplicationError(f"{channel}: {message}", {"channel": channel}, type=PROVIDER_REFUSED, non_retryable=True)
