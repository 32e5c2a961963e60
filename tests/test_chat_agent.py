"""R-PH-5: the sender agent of a chat message.

The decision for one recipient (`choose_sender`, pure) and the same decision for a chunk in SQL
(`CHOOSE_SENDERS`) agree on a small shop; the send path records the agent on each delivery and in
the outbox batch, and sends nothing (no cap taken) when no agent of the set is online; the spec's
set is checked against the shop's agents; presence is set through the API; a K-PHASED campaign on
Temporal's time-skipping server sends from its agents and reaches again, the next day, whom no
online agent could send to.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from datetime import UTC, date, datetime, time, timedelta

import pytest
from pydantic import ValidationError
from sluice.activities.send import SendActivities
from sluice.api.service import start_campaign
from sluice.channels.base import Outbound, delivery_key
from sluice.channels.chat import CHOOSE_SENDERS, choose_sender, key_parts, sender_slot
from sluice.channels.registry import ChannelRegistry
from sluice.kinds import Shop, compile_plan
from sluice.kinds.phased import Phased, PhasedSpec, PhaseSpec
from sluice.schemas import activities as A
from sluice.schemas.campaign import SenderAgents
from sluice.schemas.rules import RuleViolation
from sluice.schemas.settings import Settings
from sluice.workers.worker import build_worker
from sluice.workflows.calendar import local_day, local_instant
from temporalio.testing import ActivityEnvironment

from tests.api_helpers import client, running_app, shop_key
from tests.factories import add_customers, make_campaign, make_shop
from tests.ledger_checks import assert_fatigue_matches_ledger

TZ = "Asia/Shanghai"
DAY = date(2026, 3, 2)


def _key(consumer_id: int, campaign_id: int = 7, phase: int = 1, day: date = DAY) -> str:
    return delivery_key(Outbound(campaign_id, phase, consumer_id, day, "chat", "", ""))


async def _agents(pool, shop_id: str, presence: dict[str, bool], served: dict[int, str]) -> None:
    await pool.executemany(
        "INSERT INTO agents (shop_id, agent_id, name, online) VALUES ($1, $2, $2, $3)",
        [(shop_id, a, on) for a, on in presence.items()],
    )
    await pool.executemany(
        "INSERT INTO customer_agents (shop_id, consumer_id, agent_id, served_at) VALUES ($1, $2, $3, now())",
        [(shop_id, c, a) for c, a in served.items()],
    )


# ------------------------------------------------------------------ the decision


def test_the_agent_who_last_served_the_customer_sends_when_online_and_in_the_set():
    presence = {"a1": True, "a2": True, "a3": False}
    assert choose_sender(_key(1), "a2", presence, None) == "a2"
    assert choose_sender(_key(1), "a2", presence, {"a1", "a2"}) == "a2"
    # In the set but offline, or online but not in the set: another online agent of the set.
    assert choose_sender(_key(1), "a3", presence, {"a1", "a2", "a3"}) in {"a1", "a2"}
    assert choose_sender(_key(1), "a2", presence, {"a1", "a3"}) == "a1"


def test_otherwise_an_online_agent_of_the_set_picked_by_the_delivery_key():
    presence = {"b": True, "a": True, "c": True, "d": False}
    picks = [choose_sender(_key(c), None, presence, None) for c in range(1, 3001)]
    # Reproducible: the same key, the same agent; the slot indexes the online agents sorted by id.
    assert picks == [choose_sender(_key(c), "d", presence, None) for c in range(1, 3001)]
    assert picks == [["a", "b", "c"][sender_slot(_key(c), 3)] for c in range(1, 3001)]
    shares = Counter(picks)
    assert set(shares) == {"a", "b", "c"} and all(850 < n < 1150 for n in shares.values()), shares
    # Another day of the phase is another key: the spread changes, not who is eligible.
    assert picks != [choose_sender(_key(c, day=DAY + timedelta(days=1)), None, presence, None) for c in range(1, 3001)]


def test_no_online_agent_of_the_set_means_no_sender():
    assert choose_sender(_key(1), "a1", {"a1": False, "a2": True}, {"a1"}) is None
    assert choose_sender(_key(1), None, {"a1": False}, None) is None
    assert choose_sender(_key(1), None, {}, None) is None


@pytest.mark.parametrize("campaign_id, phase, day, consumer_id",
                         [(1, 0, DAY, 5), (123456, 2, date(2030, 12, 31), 2**62), (9, 1, DAY, 9)])  # fmt: skip
def test_key_parts_are_the_delivery_key_around_the_consumer(campaign_id, phase, day, consumer_id):
    before, after = key_parts(campaign_id, phase, day, "chat")
    assert before + str(consumer_id) + after == delivery_key(Outbound(campaign_id, phase, consumer_id, day, "chat", "", ""))


# ------------------------------------------------------------------ the statement agrees


async def test_the_statement_agrees_with_the_decision_on_a_small_shop(clean_db):
    pool = clean_db
    rnd = random.Random(5)
    await make_shop(pool, "ag", TZ, sms_credits=0)
    agents = [f"agent-{i}" for i in range(1, 9)]
    presence = {a: rnd.random() < 0.6 for a in agents}
    presence["agent-1"], presence["agent-2"] = True, False  # at least one of each
    served = {c: rnd.choice(agents) for c in range(1, 301)}  # customers 301-400 were never served
    await _agents(pool, "ag", presence, served)
    ids = list(range(1, 401))
    online_set = sorted(a for a in agents if presence[a])[:3]
    offline_set = [a for a in agents if not presence[a]]
    seen = Counter()
    for chosen in (None, online_set, offline_set, ["agent-1"], agents):
        for campaign_id, phase, day in ((7, 0, DAY), (8, 2, DAY + timedelta(days=3))):
            before, after = key_parts(campaign_id, phase, day, "chat")
            rows = await pool.fetch(CHOOSE_SENDERS, "ag", ids, chosen, before, after)
            got = {r["id"]: r["agent"] for r in rows}
            assert sorted(got) == ids
            for c in ids:
                want = choose_sender(_key(c, campaign_id, phase, day), served.get(c), presence,
                                     None if chosen is None else set(chosen))  # fmt: skip
                assert got[c] == want, (chosen, c, served.get(c), got[c], want)
                seen["last agent" if want is not None and want == served.get(c) else "none" if want is None
                     else "another"] += 1  # fmt: skip
    # Each branch of the decision was exercised.
    assert min(seen.values()) > 50, seen


# ------------------------------------------------------------------ the send path


async def _chat_day(pool, shop_id: str, ids: list[int], ref: str) -> int:
    cid = await make_campaign(pool, shop_id, ref, state="sending")
    await pool.execute(
        "INSERT INTO audience_snapshots (campaign_id, phase, day, seq, consumer_id)"
        " SELECT $1, 0, $2, i - 1, c FROM unnest($3::bigint[]) WITH ORDINALITY AS u(c, i)",
        cid, DAY, ids,
    )  # fmt: skip
    return cid


def _slice(cid: int, shop_id: str, n: int, sender_agents: SenderAgents | None) -> A.SendSliceInput:
    now = datetime.now(UTC)
    return A.SendSliceInput(
        campaign_db_id=cid, shop_id=shop_id, phase_index=0, day=DAY, channel="chat", text="hi", template_cap=None,
        seq_lo=0, seq_hi=n, budget=n, decided_at=now, window_end=now + timedelta(hours=1), chunk_size=25,
        sender_agents=sender_agents,
    )  # fmt: skip


async def test_each_delivery_records_its_sender_and_the_outbox_batch_carries_it(clean_db):
    pool = clean_db
    await make_shop(pool, "ag", TZ, sms_credits=0)
    ids = list(range(1, 101))
    await add_customers(pool, "ag", ids, ordered_at=datetime.now(UTC) - timedelta(days=20))
    await pool.execute("UPDATE shop_customers SET unsub_chat = true WHERE consumer_id = ANY($1)", [99, 100])
    presence = {"a1": True, "a2": False, "a3": True, "a9": True}
    served = {**dict.fromkeys(range(1, 21), "a1"), **dict.fromkeys(range(21, 41), "a2"),
              **dict.fromkeys(range(41, 61), "a9")}  # fmt: skip
    await _agents(pool, "ag", presence, served)
    cid = await _chat_day(pool, "ag", ids, "agents")
    send = SendActivities(pool, ChannelRegistry.outbox_for_all(pool), platform_timezone=TZ)
    inp = _slice(cid, "ag", len(ids), SenderAgents(ids=["a1", "a2", "a3"]))
    result = await ActivityEnvironment().run(send.send_slice, inp)
    assert result.sent == 98 and result.suppressed == {A.SUPPRESS_UNSUBSCRIBED: 2}

    ledger = {r["consumer_id"]: (r["state"], r["sender_agent"]) for r in await pool.fetch(
        "SELECT consumer_id, state, sender_agent FROM deliveries WHERE campaign_id = $1", cid)}  # fmt: skip
    want = {c: choose_sender(_key(c, cid, 0), served.get(c), presence, {"a1", "a2", "a3"}) for c in ids[:98]}
    assert {c: s for c, (_, s) in ledger.items() if c <= 98} == want
    assert all(want[c] == "a1" for c in range(1, 21))  # their own agent, online
    assert {want[c] for c in range(21, 99)} == {"a1", "a3"}  # a2 is offline, a9 not of the set
    assert ledger[99] == ledger[100] == ("suppressed", None)  # not sent: no sender
    # The outbox batches carry each message's sender, parallel to consumer_ids.
    outbox = {r["consumer_id"]: r["sender"] for r in await pool.fetch(
        "SELECT u.consumer_id, u.sender FROM outbox o, unnest(o.consumer_ids, o.senders) AS u(consumer_id, sender)"
        " WHERE o.campaign_id = $1", cid)}  # fmt: skip
    assert outbox == want

    # A re-run of the range decides nothing anew, whatever presence says now.
    await pool.execute("UPDATE agents SET online = NOT online WHERE shop_id = 'ag'")
    again = await ActivityEnvironment().run(send.send_slice, inp)
    assert again.sent == 98
    assert {r[0]: r[1] for r in await pool.fetch(
        "SELECT consumer_id, sender_agent FROM deliveries WHERE campaign_id = $1 AND consumer_id <= 98", cid)} == want

    # Without a set no agent is chosen: the shop's own account sends (sender NULL everywhere).
    plain = await _chat_day(pool, "ag", ids, "plain")
    await ActivityEnvironment().run(send.send_slice, _slice(plain, "ag", len(ids), None))
    assert await pool.fetchval("SELECT count(*) FROM deliveries WHERE campaign_id = $1 AND sender_agent IS NOT NULL",
                               plain) == 0  # fmt: skip
    assert await pool.fetchval("SELECT bool_and(senders IS NULL) FROM outbox WHERE campaign_id = $1", plain)


async def test_without_an_online_agent_of_the_set_nobody_is_sent_and_no_cap_is_taken(clean_db):
    pool = clean_db
    await make_shop(pool, "ag", TZ, sms_credits=0)
    ids = list(range(1, 61))
    await add_customers(pool, "ag", ids, ordered_at=datetime.now(UTC) - timedelta(days=20))
    await _agents(pool, "ag", {"a1": False, "a2": False, "x": True}, dict.fromkeys(range(1, 31), "x"))
    cid = await _chat_day(pool, "ag", ids, "offline")
    send = SendActivities(pool, ChannelRegistry.outbox_for_all(pool), platform_timezone=TZ)
    result = await ActivityEnvironment().run(send.send_slice, _slice(cid, "ag", len(ids), SenderAgents(ids=["a1", "a2"])))
    assert result.sent == 0 and result.suppressed == {A.SUPPRESS_NO_AGENT: 60}
    rows = await pool.fetch("SELECT state, reason, sender_agent FROM deliveries WHERE campaign_id = $1", cid)
    assert len(rows) == 60 and {tuple(r) for r in rows} == {("suppressed", A.SUPPRESS_NO_AGENT, None)}
    assert A.REASON_RULES[A.SUPPRESS_NO_AGENT] == "R-PH-5"
    assert await pool.fetchval("SELECT count(*) FROM fatigue_day") == 0
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0
    await assert_fatigue_matches_ledger(pool)


# ------------------------------------------------------------------ the spec


def _spec(agents, channel: str = "chat", shop_id: str = "ag") -> PhasedSpec:
    return PhasedSpec.model_validate({
        "kind": "K-PHASED", "shop_id": shop_id, "campaign_id": "c", "channel": channel,
        "phases": [{"name": "promote", "text": "x", "agents": agents}],
    })  # fmt: skip


@pytest.mark.parametrize("agents, channel, loc", [
    ([], "chat", ("phases", 0, "agents")),
    (["a1", "a1"], "chat", ("phases", 0, "agents")),
    (["a1"], "sms", ()),
])  # fmt: skip
def test_the_spec_refuses_a_set_that_names_no_agent_or_twice_or_a_channel_without_agents(agents, channel, loc):
    with pytest.raises(ValidationError) as err:
        _spec(agents, channel)
    first = err.value.errors()[0]
    assert first["loc"] == loc and first["ctx"]["rule"] == "R-PH-5", first


async def test_the_start_refuses_agents_that_are_not_the_shops(clean_db):
    pool = clean_db
    await make_shop(pool, "ag", TZ, sms_credits=0)
    await make_shop(pool, "other", TZ, sms_credits=0)
    await make_shop(pool, "empty", TZ, sms_credits=0)
    await _agents(pool, "ag", {"a1": True, "a2": False}, {})
    await _agents(pool, "other", {"x1": True}, {})
    now = datetime(2026, 3, 1, 1, 0, tzinfo=UTC)
    async with pool.acquire() as conn:
        for agents, shop_id, unknown in ((["a1", "x1", "nobody"], "ag", "x1, nobody"), ("all", "empty", "no chat agents")):
            with pytest.raises(RuleViolation) as err:
                await Phased().check(conn, _spec(agents, shop_id=shop_id), Shop(shop_id, TZ, False), now)
            assert (err.value.field, err.value.rule) == ("phases.0.agents", "R-PH-5") and unknown in err.value.message
        for agents in (["a2", "a1"], "all"):
            await Phased().check(conn, _spec(agents), Shop("ag", TZ, False), now)
    plans = [compile_plan(_spec(a), campaign_db_id=1, shop=Shop("ag", TZ, False), now=now).phases[0] for a in (["a2"], "all")]
    assert [p.sender_agents for p in plans] == [SenderAgents(ids=["a2"]), SenderAgents(ids=None)]
    assert compile_plan(_spec(None), campaign_db_id=1, shop=Shop("ag", TZ, False), now=now).phases[0].sender_agents is None


# ------------------------------------------------------------------ presence through the API


async def test_presence_is_set_through_the_api_and_an_older_report_changes_nothing(clean_db, ts_env):
    pool = clean_db
    key = await shop_key(pool, "ag")
    await shop_key(pool, "other")
    await _agents(pool, "other", {"a1": False}, {})  # the same id at another shop is another agent
    async with running_app(pool, ts_env, worker=False) as app, client(app, key) as api:
        loaded = (await api.post("/load/agents", json={"records": [{"agent_id": "a1", "name": "Ann"}]})).json()
        assert loaded["inserted"] == 1
        res = await api.put("/agents/a1/presence", json={"online": True})
        assert res.status_code == 200, res.text
        body = res.json()
        assert (body["agent_id"], body["online"], body["applied"]) == ("a1", True, True)
        seen = datetime.fromisoformat(body["updated_at"])
        # An older report (it arrived late) changes nothing; a newer one does.
        late = await api.put("/agents/a1/presence", json={"online": False, "at": (seen - timedelta(minutes=5)).isoformat()})
        assert late.status_code == 200 and (late.json()["online"], late.json()["applied"]) == (True, False)
        assert await pool.fetchval("SELECT online FROM agents WHERE shop_id = 'ag' AND agent_id = 'a1'") is True
        off = await api.put("/agents/a1/presence", json={"online": False, "at": (seen + timedelta(seconds=1)).isoformat()})
        assert (off.json()["online"], off.json()["applied"]) == (False, True)
        # A report from the future counts as now: it cannot block later reports.
        future = await api.put("/agents/a1/presence", json={"online": True, "at": "2099-01-01T00:00:00+00:00"})
        assert future.json()["applied"] and datetime.fromisoformat(future.json()["updated_at"]) < datetime(2099, 1, 1, tzinfo=UTC)
        assert await pool.fetchval("SELECT online FROM agents WHERE shop_id = 'ag' AND agent_id = 'a1'") is True
        assert await pool.fetchval("SELECT online FROM agents WHERE shop_id = 'other' AND agent_id = 'a1'") is False
        # Unknown agents, malformed ids and bodies.
        assert (await api.put("/agents/ghost/presence", json={"online": True})).status_code == 404
        assert (await api.put("/agents/bad%20id/presence", json={"online": True})).status_code == 422
        for bad in ({"online": "yes"}, {}, {"online": True, "at": "2026-03-01T10:00:00"}, {"online": True, "x": 1},
                    {"online": True, "at": "0001-01-01T00:00:00+05:00"}, {"online": True, "at": "9999-12-31T23:59:59-05:00"}):
            assert (await api.put("/agents/a1/presence", json=bad)).status_code == 422, bad
        # Loading the agent again sets presence too, idempotently: the same record changes nothing.
        record = {"agent_id": "a1", "name": "Ann", "online": False, "updated_at": "2026-03-01T10:00:00+00:00"}
        assert (await api.post("/load/agents", json={"records": [record]})).json()["updated"] == 1
        assert (await api.post("/load/agents", json={"records": [record]})).json()["duplicate"] == 1
        assert await pool.fetchval("SELECT online FROM agents WHERE shop_id = 'ag' AND agent_id = 'a1'") is False
        # The next chunk reads presence as stored.
        await api.put("/agents/a1/presence", json={"online": True})
        before, after = key_parts(1, 0, DAY, "chat")
        assert await pool.fetchval(CHOOSE_SENDERS, "ag", [1], None, before, after, column=1) == "a1"


# ------------------------------------------------------------------ a K-PHASED campaign on Temporal


async def _inquirers(pool, shop_id: str, ids: list[int], inquiry_at: datetime) -> None:
    await add_customers(pool, shop_id, ids, ordered_at=inquiry_at - timedelta(days=100), inquiry_at=inquiry_at)


async def test_a_phased_campaign_sends_from_its_agents_and_reaches_again_the_next_day_without_them(clean_db, ts_env):
    pool = clean_db
    now = await ts_env.get_current_time()
    d1 = local_day(now, TZ) + timedelta(days=1)
    inquiry_at = local_instant(d1, time(0, 0), TZ) - timedelta(days=3)
    await make_shop(pool, "ph", TZ, sms_credits=0)
    await _inquirers(pool, "ph", list(range(1, 61)), inquiry_at)
    presence = {"a1": True, "a2": False, "a3": True}
    served = {**dict.fromkeys(range(1, 21), "a1"), **dict.fromkeys(range(21, 41), "a2")}
    await _agents(pool, "ph", presence, served)
    await make_shop(pool, "off", TZ, sms_credits=0)
    await _inquirers(pool, "off", list(range(101, 131)), inquiry_at)
    await _agents(pool, "off", {"b1": False}, dict.fromkeys(range(101, 131), "b1"))

    def spec(shop_id: str, agents, days: int) -> PhasedSpec:
        return PhasedSpec(kind="K-PHASED", shop_id=shop_id, campaign_id="agents", phases=[
            PhaseSpec(name="promote", start_date=d1, days=days, send_time=time(10, 0), text="promote", agents=agents)])

    queue = f"q-{uuid.uuid4().hex[:6]}"
    async with build_worker(ts_env.client, pool, Settings(SLUICE_PLATFORM_TZ=TZ), task_queue=queue):
        started = [await start_campaign(pool, ts_env.client, s, task_queue=queue, now=now)
                   for s in (spec("ph", ["a1", "a2", "a3"], 1), spec("off", "all", 2))]  # fmt: skip
        results = [await h.result() for _, h in started]
    assert [r.state for r in results] == ["completed", "completed"]
    ph, off = (p.campaign_db_id for p, _ in started)

    rows = await pool.fetch("SELECT consumer_id, state, sender_agent FROM deliveries WHERE campaign_id = $1", ph)
    assert {r["state"] for r in rows} == {"sent"} and len(rows) == 60
    sent_from = {r["consumer_id"]: r["sender_agent"] for r in rows}
    assert sent_from == {c: choose_sender(_key(c, ph, 0, d1), served.get(c), presence, {"a1", "a2", "a3"})
                         for c in range(1, 61)}  # fmt: skip
    assert {sent_from[c] for c in range(1, 21)} == {"a1"} and {sent_from[c] for c in range(21, 61)} == {"a1", "a3"}

    # Nobody of "off" could be sent on either day; day 2's refresh reaches them again (R-PH-3).
    rows = await pool.fetch("SELECT day, state, reason FROM deliveries WHERE campaign_id = $1", off)
    assert Counter((r["day"], r["state"], r["reason"]) for r in rows) == {
        (d1, "suppressed", A.SUPPRESS_NO_AGENT): 30, (d1 + timedelta(days=1), "suppressed", A.SUPPRESS_NO_AGENT): 30}
    day2 = await pool.fetchrow("SELECT eligible, excluded FROM audience_refreshes WHERE campaign_id = $1 AND day = $2",
                               off, d1 + timedelta(days=1))  # fmt: skip
    assert day2["eligible"] == 30 and "already_reached" not in day2["excluded"]
    assert results[1].totals["promote"]["suppressed"] == 60
    await assert_fatigue_matches_ledger(pool)
