"""Fatigue policy per channel (R-FAT-2, R-FAT-3): the platform's daily caps, as data.

One `FatiguePolicy` per channel, looked up by the channel's name. The send path (`_RESERVE`,
`CAPS_READ`, `cap_verdict` in activities/send.py) and the preview take the limits as parameters:
one statement for every channel. Each channel counts on its own `fatigue_day` rows (the
`channel` column), so a chat message never spends an email's cap. The template caps of R-FAT-1
(K in N days per shop and template group: R-AQ-3's repeat cycle, R-ED-3's "marketed in the last
7 days") come with each phase (`TemplateCap`), on the same per-channel rows. The reasoning for
each channel's values: docs/rules.md, R-FAT-3.
"""

from __future__ import annotations

from dataclasses import dataclass

from sluice.schemas.campaign import Channel
from sluice.schemas.rules import GLOBAL_DAY_MAX, GLOBAL_SHOPS_MAX, SHOP_DAY_MAX

# A limit that nothing reaches: what `None` (no such cap) stands for in the statements' parameters.
NO_LIMIT = 2**31 - 1


@dataclass(frozen=True)
class FatiguePolicy:
    """The daily caps of one channel per consumer and natural day (R-FAT-DAY); None: no such cap."""

    shop_day: int | None  # R-FAT-2: messages from one shop
    global_day: int | None  # R-FAT-3: messages from all shops together
    global_shops: int | None  # R-FAT-3: distinct shops

    def __post_init__(self) -> None:
        for name in ("shop_day", "global_day", "global_shops"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"FatiguePolicy.{name}: a cap is at least 1 (None: no cap), got {value}")

    @property
    def limits(self) -> tuple[int, int, int]:
        """(global day, shop day, shops) as the statements take them; NO_LIMIT for a cap the channel has not."""
        return tuple(NO_LIMIT if v is None else v for v in (self.global_day, self.shop_day, self.global_shops))


# Seed 003 states R-FAT-2/3 for the platform's chat messages: 2 a shop, 10 in all, from 5 shops a day.
CHAT = FatiguePolicy(shop_day=SHOP_DAY_MAX, global_day=GLOBAL_DAY_MAX, global_shops=GLOBAL_SHOPS_MAX)
# The in-site message is the platform's own surface like chat: the same caps, counted on its own.
INBOX = CHAT
# SMS and email reach the consumer's own phone and mailbox, each message paid by its shop (R-AQ-5,
# R-ED-4); their seeds cap them per shop over days (R-AQ-3's repeat cycle, R-ED-3's 7 days: template
# caps) and state no count across shops. A day holds at most one message of a shop.
SMS = FatiguePolicy(shop_day=1, global_day=None, global_shops=None)
EMAIL = FatiguePolicy(shop_day=1, global_day=None, global_shops=None)

POLICIES: dict[str, FatiguePolicy] = {
    Channel.chat.value: CHAT,
    Channel.inbox.value: INBOX,
    Channel.sms.value: SMS,
    Channel.email.value: EMAIL,
}


def policy_for(channel: str) -> FatiguePolicy:
    """The channel's policy; a channel without one is a programming error (every Channel has one)."""
    try:
        return POLICIES[str(channel)]
    except KeyError:
        raise KeyError(f"no fatigue policy for channel {channel!r} (schemas/fatigue.py POLICIES)") from None
