"""The channels a worker sends through, by name: the outbox for every channel unless the settings name a
provider for it (an SMS gateway, an SMTP server)."""

from __future__ import annotations

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
        """The outbox for every channel, except SMS through SLUICE_GATEWAY_URL and email through SLUICE_SMTP_HOST."""
        registry = cls.outbox_for_all(pool)
        if settings.gateway_url:
            from sluice.channels.sms import SmsGatewayChannel

            for name in (n.strip() for n in settings.gateway_channels.split(",") if n.strip()):
                if name != "sms":
                    raise ValueError(f"SLUICE_GATEWAY_CHANNELS: the gateway speaks an SMS API; {name!r} is not sms")
                registry._channels[name] = SmsGatewayChannel(name, settings.gateway_url, timeout_s=settings.gateway_timeout_s)
        if settings.smtp_host:
            from sluice.channels.email import EmailChannel

            registry._channels["email"] = EmailChannel(
                host=settings.smtp_host, port=settings.smtp_port, sender=settings.smtp_sender,
                connections=settings.smtp_connections, timeout_s=settings.smtp_timeout_s,
                unsubscribe_url=settings.unsubscribe_url, start_tls=settings.smtp_start_tls,
                username=settings.smtp_username, password=settings.smtp_password,
            )  # fmt: skip
        return registry

    async def aclose(self) -> None:
        for channel in self._channels.values():
            close = getattr(channel, "aclose", None)
            if close:
                await close()
