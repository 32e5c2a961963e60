"""The channels a worker sends through, by name: the outbox for every channel unless the settings name a
provider for it (an SMS gateway, an SMTP server); and the providers the outbox dispatcher drains into
(SLUICE_DISPATCH_CHANNELS: sent through the outbox, then handed to the provider by channels/dispatcher.py)."""

from __future__ import annotations

from collections.abc import Callable

import asyncpg
from sluice.activities import errors
from sluice.channels.base import Channel
from sluice.channels.outbox import OutboxChannel

CHANNELS = ("chat", "sms", "email", "inbox")


class ChannelRegistry:
    def __init__(self, channels: dict[str, Channel]):
        self._channels = channels

    def get(self, name: str) -> Channel:
        try:
            return self._channels[name]
        except KeyError:
            raise errors.not_configured(name) from None

    @classmethod
    def outbox_for_all(cls, pool: asyncpg.Pool) -> ChannelRegistry:
        return cls({name: OutboxChannel(pool, name) for name in CHANNELS})

    @classmethod
    def from_settings(cls, pool: asyncpg.Pool, settings) -> ChannelRegistry:
        """The outbox for every channel, except SMS through SLUICE_GATEWAY_URL and email through SLUICE_SMTP_HOST
        (unless SLUICE_DISPATCH_CHANNELS routes them through the outbox and its dispatcher)."""
        registry = cls.outbox_for_all(pool)
        dispatched = dispatched_channels(settings)
        registry._channels.update(provider_channels(settings, lambda name: name not in dispatched))
        return registry

    async def aclose(self) -> None:
        for channel in self._channels.values():
            close = getattr(channel, "aclose", None)
            if close:
                await close()


def dispatched_channels(settings) -> set[str]:
    """SLUICE_DISPATCH_CHANNELS: the channels whose messages the send path writes to the outbox and the
    dispatcher hands to their provider."""
    names = {n.strip() for n in settings.dispatch_channels.split(",") if n.strip()}
    unknown = names.difference(CHANNELS)
    if unknown:
        raise ValueError(f"SLUICE_DISPATCH_CHANNELS: unknown channel(s) {sorted(unknown)}; the channels are {CHANNELS}")
    return names


def provider_channels(settings, wanted: Callable[[str], bool] = lambda name: True) -> dict[str, Channel]:
    """The provider adapters the settings configure, by channel (those `wanted`): SMS through SLUICE_GATEWAY_URL,
    email through SLUICE_SMTP_HOST."""
    adapters: dict[str, Channel] = {}
    if settings.gateway_url:
        from sluice.channels.sms import SmsGatewayChannel

        for name in (n.strip() for n in settings.gateway_channels.split(",") if n.strip()):
            if name != "sms":
                raise ValueError(f"SLUICE_GATEWAY_CHANNELS: the gateway speaks an SMS API; {name!r} is not sms")
            if wanted(name):
                adapters[name] = SmsGatewayChannel(name, settings.gateway_url, timeout_s=settings.gateway_timeout_s)
    if settings.smtp_host and wanted("email"):
        from sluice.channels.email import EmailChannel

        adapters["email"] = EmailChannel(
            host=settings.smtp_host, port=settings.smtp_port, sender=settings.smtp_sender,
            connections=settings.smtp_connections, timeout_s=settings.smtp_timeout_s,
            unsubscribe_url=settings.unsubscribe_url, start_tls=settings.smtp_start_tls,
            username=settings.smtp_username, password=settings.smtp_password,
        )  # fmt: skip
    return adapters


def dispatch_adapters(settings) -> dict[str, Channel]:
    """The outbox dispatcher's adapters: the provider of every channel of SLUICE_DISPATCH_CHANNELS."""
    names = dispatched_channels(settings)
    adapters = provider_channels(settings, names.__contains__)
    missing = names.difference(adapters)
    if missing:
        raise ValueError(f"SLUICE_DISPATCH_CHANNELS: no provider configured for {sorted(missing)}"
                         " (SLUICE_GATEWAY_URL for sms, SLUICE_SMTP_HOST for email)")
    return adapters
