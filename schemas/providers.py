"""Providers' rate limits, shared by every worker, and the send task queue of each (docs/scaling.md,
"Provider rate limits and fairness").

A campaign whose plan says `provider_queues` sends its slices on the task queue of its channel's
provider, `<task queue>-send-<channel>`. The workers polling that queue set Temporal's queue-wide
activity rate (`max_task_queue_activities_per_second`), which the server enforces over all pollers,
so the limit holds however many workers run. Temporal counts activities, not messages: a slice on a
limited queue carries at most `slice_max` recipients, and the queue's rate is the provider's
messages/s divided by it (an upper bound: smaller slices hand over fewer).
"""

from __future__ import annotations

from dataclasses import dataclass

from sluice.schemas.campaign import Channel


@dataclass(frozen=True)
class Provider:
    channel: str
    messages_per_second: float | None  # the default; SLUICE_PROVIDER_RATES overrides it per channel
    slice_max: int  # most recipients in one send activity on this provider's queue


# One definition per channel. The outbox channels (chat, inbox) write our own table: no provider
# limit by default. SMS gateways and SMTP relays take a few hundred to a few thousand messages/s.
PROVIDERS: dict[str, Provider] = {
    Channel.chat.value: Provider(Channel.chat.value, None, 20_000),
    Channel.inbox.value: Provider(Channel.inbox.value, None, 20_000),
    Channel.sms.value: Provider(Channel.sms.value, 1_000.0, 2_000),
    Channel.email.value: Provider(Channel.email.value, 200.0, 500),
}


def provider(channel: str) -> Provider:
    try:
        return PROVIDERS[str(channel)]
    except KeyError:
        raise ValueError(f"no provider is defined for channel {channel!r}") from None


def send_queue(task_queue: str, channel: str) -> str:
    """The task queue of a channel's send activities, next to the workflow's own queue."""
    return f"{task_queue}-send-{channel}"


def parse_rates(text: str) -> dict[str, float | None]:
    """SLUICE_PROVIDER_RATES, e.g. "sms=500,email=50,chat=none": messages/s per channel (none: unlimited)."""
    rates: dict[str, float | None] = {}
    for item in (i.strip() for i in text.split(",") if i.strip()):
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip().lower()
        if not sep or name not in PROVIDERS:
            raise ValueError(f"SLUICE_PROVIDER_RATES: {item!r} is not <channel>=<messages/s> for one of {sorted(PROVIDERS)}")
        if value in ("none", "unlimited", ""):
            rates[name] = None
            continue
        try:
            rate = float(value)
        except ValueError:
            raise ValueError(f"SLUICE_PROVIDER_RATES: {item!r}: the rate is not a number") from None
        if rate <= 0:
            raise ValueError(f"SLUICE_PROVIDER_RATES: {item!r}: the rate must be positive")
        rates[name] = rate
    return rates


def rates(overrides: str = "") -> dict[str, float | None]:
    """Messages/s per channel: the defaults above with the overrides applied."""
    return {name: p.messages_per_second for name, p in PROVIDERS.items()} | parse_rates(overrides)


def queue_rate(messages_per_second: float | None, slice_max: int) -> float | None:
    """Activities/s for the queue so that full slices hand over at most `messages_per_second`."""
    return None if messages_per_second is None else messages_per_second / slice_max


def slice_size(channel: str, planned: int) -> int:
    """Recipients per send activity on the provider's queue: the plan's, capped by the provider's `slice_max`."""
    return min(planned, provider(channel).slice_max)
