"""The fault-injection bench (bench/faults.py) at a small size with high fault rates, and its checks.

The checks are the bench's own (check_day): they must pass on a real day through the misbehaving
gateway and SMTP server, and fail when the provider's books or the ledger are tampered with, so they
cannot silently stop checking. The 100,000-recipient run is `python -m bench.faults` (docs/benchmarks.md).
"""

from __future__ import annotations

import copy
from decimal import Decimal

from bench.faults import Delivery, EmailFaults, Evidence, SmsFaults, check_day, email_day, sms_day

SMS_FAULTS = SmsFaults(throttle=0.12, retry_after_s=1, fail_before=0.1, fail_after=0.1, drop_before=0.08, drop_after=0.08,
                       hang_after=0.08, hang_s=1.0, invalid=0.03, opted_out=0.02)  # fmt: skip
EMAIL_FAULTS = EmailFaults(refuse=0.05, defer=0.1, drop_at_mail=0.03, drop_in_data=0.02)


def failing(ev: Evidence) -> set[str]:
    return {c.name for c in check_day(ev) if not c.ok}


def _sms_evidence() -> Evidence:
    """Four recipients: 1 and 2 sent (1 paid by the first recharge, 2 across both), 3 refused by the gateway, 4 failed
    because its batch never arrived (dropped before the gateway took it, and its resend too)."""
    fen1, fen2 = Decimal("4.6"), Decimal("4.2")
    ledger = [
        Delivery(1, "13800000001", "sent", None, 2 * fen1 / 100),
        Delivery(2, "13800000002", "sent", None, (fen1 + fen2) / 100),
        Delivery(3, "13800000003", "failed", "invalid_contact", None),
        Delivery(4, "13800000004", "failed", "not_accepted_by_provider", None),
    ]
    return Evidence(
        channel="sms", recipients=4, ledger=ledger, provider={"13800000001": 1, "13800000002": 1},
        refused={"13800000003": "invalid_contact"}, undeliverable={"13800000003"}, caps_mismatch=0,
        segments_each=2, provider_segments={"13800000001": 2, "13800000002": 2},
        credits=[(50_000, 50_000 - 3, fen1), (300_000, 300_000 - 1, fen2)],
        debits={1: [(2, fen1)], 2: [(1, fen1), (1, fen2)], 3: [(2, fen2)]},
    )  # fmt: skip


def test_the_checks_pass_an_exact_day_and_fail_each_kind_of_drift():
    ev = _sms_evidence()
    assert failing(ev) == set()

    def tampered(change) -> set[str]:
        e = copy.deepcopy(ev)
        change(e)
        return failing(e)

    assert tampered(lambda e: e.provider.update({"13800000001": 2})) >= {"sent_taken_once", "provider_holds_only_sent"}
    assert tampered(lambda e: e.provider.update({"13800000004": 1})) >= {"failed_never_taken", "provider_holds_only_sent"}
    assert tampered(lambda e: e.provider.update({"13900000000": 1})) == {"provider_holds_only_sent"}
    assert tampered(lambda e: setattr(e.ledger[3], "state", "unknown")) >= {"nothing_reserved_or_unknown"}
    assert tampered(lambda e: setattr(e.ledger[3], "state", "reserved")) >= {"nothing_reserved_or_unknown"}
    assert tampered(lambda e: setattr(e.ledger[2], "reason", "not_accepted_by_provider")) == {"refusals_failed_with_reason"}
    assert tampered(lambda e: e.ledger.pop()) == {"one_delivery_per_recipient"}
    assert tampered(lambda e: setattr(e, "caps_mismatch", 1)) == {"caps_match_ledger"}
    assert tampered(lambda e: setattr(e.ledger[0], "cost", e.ledger[0].cost + Decimal("0.0001"))) == {
        "cost_each_segments_times_tier", "cost_total_equals_credits_spent"}
    assert tampered(lambda e: setattr(e.ledger[3], "cost", Decimal("0.092"))) == {"cost_each_segments_times_tier"}
    assert tampered(lambda e: e.credits.__setitem__(1, (300_000, 300_000, Decimal("4.2")))) == {
        "credits_spent_equal_sent_segments", "cost_total_equals_credits_spent"}
    assert tampered(lambda e: e.credits.__setitem__(0, (50_000, 50_000 - 3, Decimal("4.4")))) >= {"recharge_tier_prices"}
    assert tampered(lambda e: e.provider_segments.update({"13800000002": 3})) == {
        "credits_spent_equal_sent_segments", "gateway_segments_per_sent"}
    # A number set to be refused that went out.
    e = copy.deepcopy(ev)
    e.ledger[2].state, e.provider["13800000003"], e.refused = "sent", 1, {}
    assert {"undeliverable_failed"} <= failing(e)
    # Email: `unknown` is allowed only where the server dropped DATA.
    mail = Evidence(channel="email", recipients=2, ledger=[Delivery(1, "a@x", "sent", None), Delivery(2, "b@x", "unknown", "x")],
                    provider={"a@x": 1}, refused={}, undeliverable=set(), caps_mismatch=0, ambiguous_by_design={"b@x"})
    assert failing(mail) == set()
    mail.ambiguous_by_design = set()
    assert failing(mail) == {"nothing_reserved_or_unknown"}
    mail.ambiguous_by_design = {"a@x", "b@x"}
    assert failing(mail) == {"unknown_exactly_the_data_drops"}


async def test_sms_day_through_a_faulty_gateway_is_exact(admin_dsn):
    day = await sms_day(admin_dsn, 2_000, SMS_FAULTS, slice_size=500, chunk_size=250, concurrency=4, batch_size=25,
                        timeout_s=0.5, attempts=3)  # fmt: skip
    f = day.figures
    print(f)
    # Every fault happened, so the day proves something.
    for kind in ("429", "503", "drop-before-accept", "500-after-accept", "drop-after-accept", "hang-after-accept"):
        assert f["gateway_requests"].get(kind, 0) > 0, kind
    assert f["failed_reasons"].get("invalid_contact") and f["failed_reasons"].get("opted_out_at_provider")
    # A batch dropped before the gateway took it is resent once, same references, after the lookup says the gateway
    # has none of them (channels/base.py, send_and_settle): only a resend that is lost again (dropped before, or
    # failing past its retries) leaves its recipients to the day's reconciliation, `not_accepted_by_provider`.
    # Before, every drop cost its batch's 25 recipients the day.
    lost = f["failed_reasons"].get("not_accepted_by_provider", 0)
    assert 2 * lost <= 25 * f["gateway_requests"]["drop-before-accept"], (lost, f["gateway_requests"])
    checks = check_day(day.evidence)
    assert [c for c in checks if not c.ok] == []
    assert len(checks) == 13
    # Tampered provider books are caught.
    ev = day.evidence
    sent = next(d for d in ev.ledger if d.state == "sent")
    failed = next(d for d in ev.ledger if d.state == "failed")
    ev.provider[sent.address] = 2
    assert "sent_taken_once" in failing(ev)
    ev.provider[sent.address] = 1
    ev.provider[failed.address] = 1
    assert "failed_never_taken" in failing(ev)


async def test_email_day_through_a_faulty_smtp_server_is_exact(admin_dsn):
    day = await email_day(admin_dsn, 2_000, EMAIL_FAULTS, slice_size=500, chunk_size=200, concurrency=4, connections=3)
    f = day.figures
    print(f)
    server = f["server"]
    assert server["dropped"].get("mail") and server["dropped"].get("data") and server["deferred"]
    assert f["states"].get("unknown") == round(0.02 * 2_000)  # each dropped DATA, and only those
    checks = check_day(day.evidence)
    assert [c for c in checks if not c.ok] == []
    ev = day.evidence
    sent = next(d for d in ev.ledger if d.state == "sent")
    ev.provider[sent.address] = 2
    assert "sent_taken_once" in failing(ev)
