"""A batch whose answer was lost: `send_and_settle` asks the provider by reference, and sends again once,
under the same reference, only what a lookup that succeeded says the provider does not have.

Real parts: the loopback SMS gateway (tests/gateway.py) over HTTP, its own counts per number and per
reference as the check; aiosmtpd (tests/smtp_server.py) for a channel without a lookup. The decision
which messages to resend (`to_resend`) is checked on its own first.
"""

from __future__ import annotations

from datetime import date

from sluice.channels.base import Backoff, Outbound, Outcome, delivery_key, send_and_settle, to_resend
from sluice.channels.email import EmailChannel
from sluice.channels.sms import SmsGatewayChannel

from tests.gateway import Chaos, Gateway
from tests.smtp_server import SmtpFaults, SmtpServer

DAY = date(2026, 3, 2)
IDS = list(range(1, 6))


def _sms(ids=IDS) -> list[Outbound]:
    return [Outbound(9, 1, c, DAY, "sms", f"138{c:08d}", "hello") for c in ids]


def _o(c: int, state: str) -> Outcome:
    return Outcome(c, state, None if state == "unknown" else f"r{c}")


# -- the decision ------------------------------------------------------------------------------------

def test_to_resend_only_what_a_successful_lookup_does_not_have():
    sent = [_o(1, "sent"), _o(2, "failed"), _o(3, "unknown"), _o(4, "unknown"), _o(5, "unknown")]
    # The lookup has 3 (sent) and cannot tell about 4 (`unknown`): only 5, absent from its answer, goes again.
    assert to_resend(sent, [_o(3, "sent"), _o(4, "unknown")]) == {5}
    assert to_resend(sent, [_o(3, "failed")]) == {4, 5}
    # The provider has none of them: every `unknown` one, never one the send settled.
    assert to_resend(sent, []) == {3, 4, 5}
    # The lookup failed: nothing is resent.
    assert to_resend(sent, None) == set()
    # A channel that cannot look up (SMTP) answers `unknown` for each: nothing is resent.
    assert to_resend(sent, [_o(c, "unknown") for c in (3, 4, 5)]) == set()
    # Nothing unsure: nothing to resend, whatever the lookup says.
    assert to_resend([_o(1, "sent"), _o(2, "failed")], []) == set()


# -- through the real gateway --------------------------------------------------------------------------

class FaultyFirstBatch(SmsGatewayChannel):
    """The SMS adapter over a gateway that misbehaves as `first` says for the first send, then behaves."""

    def __init__(self, gw: Gateway, first: Chaos, **kw):
        super().__init__("sms", gw.url, timeout_s=2, batch_size=50, backoff=Backoff(attempts=2, base_s=0.01), **kw)
        self.gw, self.sends = gw, 0
        gw.chaos = first

    async def send(self, messages):
        self.sends += 1
        try:
            return await super().send(messages)
        finally:
            self.gw.chaos = Chaos(fail_lookup=self.gw.chaos.fail_lookup)


async def _settle(first: Chaos) -> tuple[Gateway, FaultyFirstBatch, list[Outcome]]:
    gw = Gateway().start()
    channel = FaultyFirstBatch(gw, first)
    try:
        outcomes = await send_and_settle(channel, _sms())
    finally:
        await channel.aclose()
        gw.stop()
    assert sorted(o.consumer_id for o in outcomes) == IDS
    return gw, channel, outcomes


async def test_a_batch_dropped_before_the_gateway_took_it_is_resent_once_and_sent():
    gw, channel, outcomes = await _settle(Chaos(drop_before=1.0))
    assert gw.requests["drop-before-accept"] == 1  # the fault really happened
    assert {o.state for o in outcomes} == {"sent"}
    assert {o.provider_ref for o in outcomes} == {delivery_key(m) for m in _sms()}  # the same references
    assert channel.sends == 2 and gw.requests["batch"] == 2 and gw.requests["lookup"] == 1
    # The gateway's own books: one message per recipient, each reference offered once (the resend).
    assert dict(gw.deliveries) == {f"138{c:08d}": 1 for c in IDS}
    assert dict(gw.offered) == {delivery_key(m): 1 for m in _sms()}


async def test_a_batch_dropped_after_the_gateway_took_it_is_found_and_not_resent():
    gw, channel, outcomes = await _settle(Chaos(drop_after=1.0))
    assert gw.requests["drop-after-accept"] == 1
    assert {o.state for o in outcomes} == {"sent"}
    assert channel.sends == 1 and gw.requests["batch"] == 1 and gw.requests["lookup"] == 1
    assert dict(gw.deliveries) == {f"138{c:08d}": 1 for c in IDS}
    assert dict(gw.offered) == {delivery_key(m): 1 for m in _sms()}


async def test_a_lookup_that_fails_leaves_them_unknown_and_nothing_is_resent():
    gw, channel, outcomes = await _settle(Chaos(drop_before=1.0, fail_lookup=1.0))
    assert gw.requests["drop-before-accept"] == 1 and gw.requests["lookup-503"] == 2  # both tries of the lookup
    assert {o.state for o in outcomes} == {"unknown"}
    # The gateway behaves after the first send: a resend would have gone through and been counted.
    assert channel.sends == 1 and gw.requests["batch"] == 1
    assert not gw.deliveries and not gw.offered


async def test_a_resend_whose_answer_is_lost_too_is_looked_up_again():
    gw = Gateway().start()

    class DropsTwice(FaultyFirstBatch):
        async def send(self, messages):
            self.sends += 1
            # First send dropped before the gateway took it, the resend dropped after it took it.
            self.gw.chaos = Chaos(drop_before=1.0) if self.sends == 1 else Chaos(drop_after=1.0)
            return await SmsGatewayChannel.send(self, messages)

    channel = DropsTwice(gw, Chaos())
    try:
        outcomes = await send_and_settle(channel, _sms())
    finally:
        await channel.aclose()
        gw.stop()
    assert gw.requests["drop-before-accept"] == 1 and gw.requests["drop-after-accept"] == 1
    assert {o.state for o in outcomes} == {"sent"}  # found by the second lookup
    assert channel.sends == 2 and gw.requests["lookup"] == 2
    assert dict(gw.deliveries) == {f"138{c:08d}": 1 for c in IDS}


# -- a channel without a lookup ------------------------------------------------------------------------

async def test_smtp_cannot_look_up_so_nothing_is_resent():
    ids = [1, 2, 3]
    messages = [Outbound(9, 1, c, DAY, "email", f"c{c}@example.com", f"Sale\nHello {c}") for c in ids]
    server = SmtpServer(SmtpFaults(drop_in_data={"c2@example.com"})).start()
    channel = EmailChannel(host="127.0.0.1", port=server.port, sender="shop@mail.example", connections=1, timeout_s=5,
                           backoff=Backoff(attempts=3, base_s=0.01, cap_s=0.05), unsubscribe_url="https://shop.example/u")
    try:
        outcomes = await send_and_settle(channel, messages)
    finally:
        await channel.aclose()
        server.stop()
    by_id = {o.consumer_id: o.state for o in outcomes}
    assert by_id == {1: "sent", 2: "unknown", 3: "sent"}
    # One DATA for 2 only: a resend would have been dropped again and counted.
    assert server.inbox.dropped["data"] == 1
    assert dict(server.inbox.received) == {"c1@example.com": 1, "c3@example.com": 1}
