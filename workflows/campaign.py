"""The campaign workflow: one per campaign, walking its phases day by day.

For each phase day: a durable timer to the send time (never before 08:00
shop-local), the audience refresh (counts only), send slices in a sliding
window of concurrent activities until the audience is done, the daily cap is
spent or 22:00 comes, then the daily report. Pause, resume and cancel are
signals; `progress` is a query. The workflow continues as new at every
phase boundary (and inside a long phase when the server suggests it), so
history stays small however long the campaign runs.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta

from temporalio import workflow
from temporalio.common import Priority
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from sluice.activities.audience import AudienceActivities
    from sluice.activities.offers import OfferActivities
    from sluice.activities.precedence import PrecedenceActivities
    from sluice.activities.report import ReportActivities
    from sluice.activities.send import SendActivities
    from sluice.activities.window import WindowActivities
    from sluice.audiences import reaches_non_customers
    from sluice.schemas import activities as A
    from sluice.schemas import providers
    from sluice.schemas.activities import (
        CampaignStateInput,
        CloseDayInput,
        DayReportInput,
        OffersInput,
        PrecedenceInput,
        ReconcileInput,
        RefreshAudienceInput,
        ReportRefreshInput,
        SendSliceInput,
        SendSliceResult,
        WaitingInput,
    )
    from sluice.schemas.budget import BUDGET_EXHAUSTED
    from sluice.schemas.budget import end_reason as budget_end_reason
    from sluice.schemas.campaign import CampaignPlan, PhasePlan
    from sluice.schemas.workflow import CampaignInput, CampaignProgress, CampaignStatus
    from sluice.workflows import policies
    from sluice.workflows import precedence as P
    from sluice.workflows import search_attributes as SA
    from sluice.workflows.calendar import WAKE_MISSED, WAKE_ZONED_ONLY, DayWindow, day_window, late_wake, next_window_open

_UNLIMITED = 2**31 - 1
# Histories recorded before the report refresh after each day replay without it (workflow.patched).
REPORT_REFRESH_PATCH = "report-refresh-after-day"
# Histories recorded before send slices went to the providers' queues replay on the workflow's own.
PROVIDER_QUEUES_PATCH = "provider-queues"
# Histories recorded before the error-rate halt replay without it (the marker is written only when it halts).
ERROR_RATE_PATCH = "error-rate-halt"
# Histories recorded before recipients were sent in their own window (R-WIN-1) replay without the later passes.
RECIPIENT_WINDOW_PATCH = "recipient-window"
# Histories recorded before a wake-up after the shop's 22:00 still sent recipients in their own window (R-WIN-1)
# replay with the day skipped for everyone.
LATE_WAKE_PATCH = "late-wake-own-window"


@dataclass
class _Slice:
    lo: int
    hi: int
    allot: int = 0
    handle: asyncio.Task | None = None
    reserved: int = 0  # what the finished slice stands behind (its result's `reserved`)


class _Stopped(Exception):
    """Cancelled while halted: unwind to `run`, which records the campaign as cancelled."""


@workflow.defn
class CampaignWorkflow:
    @workflow.init
    def __init__(self, inp: CampaignInput) -> None:
        # The state exists before any handler runs: a signal that arrives with the start, before the
        # first workflow task, finds it and takes effect instead of being dropped.
        self.plan: CampaignPlan = inp.plan
        self.progress: CampaignProgress = inp.progress or CampaignProgress(started_at=workflow.now())
        self._precedence_checked: datetime | None = None
        # (sent, failed) of the finished slices that sent anything, newest last: the error-rate halt's input.
        self._sends: deque[tuple[int, int]] = deque(maxlen=self.plan.tuning.error_window)
        # R-WIN-1: recipients the current pass of the day left waiting for their own send window.
        self._deferred = 0

    # ------------------------------------------------------------------ control

    @workflow.signal
    def pause(self) -> None:
        if not self.progress.cancel_requested:
            self.progress.paused = True

    @workflow.signal
    def resume(self) -> None:
        self.progress.paused = False
        self.progress.halt_reason = None
        self._sends.clear()  # a resumed campaign's error rate is measured afresh

    @workflow.signal
    def cancel(self, reason: str | None = None) -> None:
        self.progress.cancel_requested = True
        self.progress.cancel_reason = self.progress.cancel_reason or reason or "cancelled by request"

    @workflow.query(name="progress")
    def progress_query(self) -> CampaignStatus:
        plan, progress = self.plan, self.progress
        phase = plan.phases[progress.phase_index].name if progress.phase_index < len(plan.phases) else None
        return CampaignStatus(
            workflow_id=plan.workflow_id,
            shop_id=plan.shop_id,
            campaign_id=plan.campaign_id,
            kind=plan.kind,
            phase=phase,
            progress=progress,
        )

    # ------------------------------------------------------------------ main

    @workflow.run
    async def run(self, inp: CampaignInput) -> CampaignProgress:
        plan, progress = self.plan, self.progress
        try:
            while progress.phase_index < len(plan.phases) and not progress.cancel_requested and not progress.end_reason:
                phase = plan.phases[progress.phase_index]
                await self._publish(progress.state if progress.runs > 1 else "scheduled")
                if await self._run_phase(phase):
                    return await self._continue_as_new()
                if progress.cancel_requested or progress.end_reason:  # R-COST-BUDGET: the budget ended it
                    break
                progress.phase_index += 1
                progress.next_day = None
                if progress.phase_index < len(plan.phases):
                    # Phase boundary: a fresh run keeps history small (docs/design.md, "Continue-as-new at phase boundaries").
                    return await self._continue_as_new()
        except _Stopped:
            pass  # cancelled while halted: recorded below like any cancel
        except asyncio.CancelledError:
            # `temporal workflow cancel` behaves like the cancel signal, then ends as cancelled.
            progress.cancel_requested = True
            progress.cancel_reason = progress.cancel_reason or "workflow cancellation"
            await self._finish()
            raise
        await self._finish()
        return progress

    async def _finish(self) -> None:
        progress = self.progress
        final = "cancelled" if progress.cancel_requested else BUDGET_EXHAUSTED if progress.end_reason else "completed"
        await self._publish(final, final=True)

    async def _continue_as_new(self) -> CampaignProgress:
        await workflow.wait_condition(workflow.all_handlers_finished)
        self.progress.runs += 1
        workflow.continue_as_new(CampaignInput(plan=self.plan, progress=self.progress))

    async def _run_phase(self, phase: PhasePlan) -> bool:
        """Walk the phase's remaining days; True when the run should continue as new mid-phase."""
        plan, progress = self.plan, self.progress
        days = [d for d in phase.days() if progress.next_day is None or d >= progress.next_day]
        for day in days:
            if progress.cancel_requested:
                return False
            last_day = day == phase.end_date
            win = day_window(day, phase.send_time, plan.timezone)
            stop = await self._run_day(phase, win, last_day)
            progress.next_day = day + timedelta(days=1)
            if stop == A.SUPPRESS_BENEFIT:
                # R-BEN-1: a benefit used up or expired stops the offer for the rest of the phase.
                return False
            if stop == A.NOT_SENT_BUDGET:
                # R-COST-BUDGET: the campaign's budget is spent: no later day or phase sends (docs/reliability.md).
                progress.end_reason = budget_end_reason(plan.budget)
                return False
            if not last_day and workflow.info().is_continue_as_new_suggested():
                return True
        return False

    async def _run_day(self, phase: PhasePlan, win: DayWindow, last_day: bool) -> str | None:
        plan, progress = self.plan, self.progress
        progress.current_day, progress.day_eligible, progress.day_done = win.day, 0, 0
        while workflow.now() < win.send_at and not progress.cancel_requested:
            # A pause while waiting shows at once (state "paused"); the wait itself goes on.
            paused = progress.paused
            await self._publish("paused" if paused else "waiting")
            workflow.set_current_details(f"{phase.name}: {'paused, ' if paused else ''}waiting for {win.day} send time")
            await _wait(lambda was=paused: progress.cancel_requested or progress.paused != was, win.send_at - workflow.now())
        if progress.cancel_requested:
            return None
        stop_reason: str | None = None
        # Started late or the worker was away: no stale sends. After the shop's 22:00 only recipients with a zone of
        # their own may still be sent, inside their own window until the shop's next day (R-WIN-1, late_wake).
        wake = late_wake(workflow.now(), win)
        if wake == WAKE_ZONED_ONLY and not workflow.patched(LATE_WAKE_PATCH):
            wake = WAKE_MISSED
        cutoff = win.end_at if wake == WAKE_ZONED_ONLY else win.close_at
        if wake == WAKE_MISSED:
            stop_reason = "window_missed"
        elif (
            refresh := await self._call(
                AudienceActivities.refresh_audience,
                RefreshAudienceInput(
                    campaign_db_id=plan.campaign_db_id,
                    shop_id=plan.shop_id,
                    kind=plan.kind,
                    phase_index=progress.phase_index,
                    audience=phase.audience,
                    filters=phase.filters,
                    audience_params=phase.audience_params,
                    channel=phase.channel,
                    day=win.day,
                    snapshot_at=win.snapshot_at,
                    campaign_started_at=progress.started_at,
                ),
                summary=f"audience {phase.audience} {win.day}",
                limits=policies.until_window_closes(workflow.now(), cutoff),
                missed=lambda: workflow.now() >= cutoff,
            )
        ) is None:
            stop_reason = "window_missed"  # the refresh could not run before 22:00 (or the shop's next day, late)
        else:
            progress.day_eligible = refresh.eligible
            if phase.below_minimum(refresh.eligible, refresh.excluded.get(A.EXCLUDED_ALREADY_REACHED, 0)):
                stop_reason = A.NOT_SENT_MIN_AUDIENCE  # R-OC-4
            elif refresh.eligible:
                if P.yields(plan.precedence) and not await self._yield_while_held(replace(win, close_at=cutoff)):
                    stop_reason = P.YIELDING  # R-RP-9: a custom task of the shop ran until the window closed
                elif wake == WAKE_ZONED_ONLY:
                    # The shop's window is missed: only who waits for their own window, from now on.
                    stop_reason = await self._send_in_own_windows(
                        phase, win, refresh.seq_end or refresh.eligible, "window_missed", workflow.now()
                    )
                else:
                    first_pass = workflow.now()
                    stop_reason = await self._send_day(phase, win, refresh.seq_end or refresh.eligible)
                    # R-WIN-1: recipients with a zone of their own who waited, or whom 22:00 kept from being read.
                    if (stop_reason in (None, "window_closed") and (self._deferred or stop_reason)
                            and workflow.patched(RECIPIENT_WINDOW_PATCH)):
                        stop_reason = await self._send_in_own_windows(
                            phase, win, refresh.seq_end or refresh.eligible, stop_reason, first_pass
                        )
                # Deliveries whose provider answer was lost are settled by reference, never resent.
                await self._call(
                    SendActivities.reconcile_pending,
                    ReconcileInput(
                        campaign_db_id=plan.campaign_db_id,
                        shop_id=plan.shop_id,
                        channel=phase.channel,
                        template_cap=phase.template_cap,
                        quota=phase.quota,  # R-ED-4: a failed delivery's unit goes back
                    ),
                    summary="reconcile",
                )
                # A shared coupon's claims have no end of their own: nothing to wait for or expire. A member
                # benefit's limited coupon is held with a countdown like an exclusive offer (R-RP-4).
                if (phase.offer is not None and not phase.offer.shared) or phase.benefit is not None:
                    await self._settle_offers(win.day)
        if progress.cancel_requested:
            await self._close_day(phase, win.day, A.NOT_SENT_CANCELLED)
        elif stop_reason in (A.SUPPRESS_BENEFIT, A.NOT_SENT_BUDGET):
            await self._close_day(phase, win.day, stop_reason)
        elif last_day and stop_reason:
            await self._close_day(phase, win.day, _phase_end_reason(stop_reason))
        report = await self._call(
            ReportActivities.day_report,
            DayReportInput(
                campaign_db_id=plan.campaign_db_id, phase_index=progress.phase_index, phase_name=phase.name, day=win.day
            ),
            summary=f"report {win.day}",
        )
        if stop_reason:
            report.counts[f"stopped:{stop_reason}"] = 1
        progress.last_report = report.counts
        totals = progress.totals.setdefault(phase.name, {})
        for key in ("sent", "suppressed", "failed", "unknown", "not_sent", "reserved", "offers_claimed", "offers_expired",
                    A.HELD_OUT):
            totals[key] = totals.get(key, 0) + report.counts.get(key, 0)
        totals["days"] = totals.get("days", 0) + 1
        if workflow.patched(REPORT_REFRESH_PATCH):
            await self._refresh_report(win.day)
        return stop_reason

    async def _refresh_report(self, day: date) -> None:
        """R-ATT-1 / R-REP-1: attribute the campaign's orders and materialise its report after the day (one step:
        the refresh runs the attribution first, under the campaign's report lock). A refresh that fails past its
        limits does not halt the campaign: the next day's or an on-demand one (POST .../report/refresh) redoes it."""
        try:
            await workflow.execute_activity_method(
                ReportActivities.refresh_report,
                ReportRefreshInput(campaign_db_id=self.plan.campaign_db_id),
                summary=f"report {day}: refresh",
                **policies.REPORT.options(),
            )
        except ActivityError as err:
            if is_cancelled_exception(err):
                raise
            workflow.logger.warning("report not refreshed after %s: %s", day, _cause(err))

    async def _settle_offers(self, day: date) -> None:
        """R-RP-5: hold until the day's last offer ends (a durable timer), then end what is unclaimed."""
        progress = self.progress
        inp = OffersInput(campaign_db_id=self.plan.campaign_db_id, phase_index=progress.phase_index, day=day,
                          now=workflow.now())  # fmt: skip
        offers = await self._call(OfferActivities.day_offers, inp, summary=f"offers {day}")
        if offers.last_expiry is None:
            return
        if offers.last_expiry > workflow.now():
            workflow.set_current_details(f"offers of {day} open until {offers.last_expiry:%Y-%m-%d %H:%M} UTC")
            await workflow.sleep(offers.last_expiry - workflow.now(), summary=f"offers of {day} end")
        await self._call(
            OfferActivities.expire_offers, inp.model_copy(update={"now": workflow.now()}), summary=f"expire offers {day}"
        )

    async def _close_day(self, phase: PhasePlan, day: date, reason: str) -> None:
        plan, progress = self.plan, self.progress
        await self._call(
            ReportActivities.close_day,
            CloseDayInput(
                campaign_db_id=plan.campaign_db_id,
                phase_index=progress.phase_index,
                day=day,
                channel=phase.channel,
                shop_id=plan.shop_id,
                template_group=phase.template_cap.group if phase.template_cap else "",
                decided_at=workflow.now(),
                reason=reason,
            ),
            summary=f"close {day}: {reason}",
        )

    # ------------------------------------------------------------------ sending

    async def _send_day(self, phase: PhasePlan, win: DayWindow, seq_end: int, later_pass: bool = False) -> str | None:
        """Send slices of the snapshot's [0, seq_end) until done; returns why it stopped early, or None.
        `later_pass`: a pass for the recipients who waited for their own window (R-WIN-1, `_send_in_own_windows`)."""
        plan, progress = self.plan, self.progress
        self._deferred = 0
        tuning = plan.tuning
        slice_size = tuning.slice_size
        # Slices on the provider's rate-limited queue carry at most its slice_max (schemas/providers.py).
        routed = tuning.provider_queues and workflow.patched(PROVIDER_QUEUES_PATCH)
        if routed:
            slice_size = providers.slice_size(phase.channel, slice_size)
        if phase.pacing_per_hour:
            # Paced sends go in five-minute slices so the window closes between them, not inside one.
            slice_size = max(1, min(slice_size, phase.pacing_per_hour // 12))
        pending = deque(_Slice(lo, min(lo + slice_size, seq_end)) for lo in range(0, seq_end, slice_size))
        running: list[_Slice] = []
        unallotted = phase.daily_cap or _UNLIMITED
        next_launch: datetime = workflow.now()
        stop: str | None = None
        await self._publish("sending")

        def control_stop() -> str | None:
            if progress.cancel_requested:
                return "cancelled"
            if progress.paused:
                return "paused"
            if workflow.now() >= win.close_at:
                return "window_closed"
            return None

        while pending or running:
            stop = control_stop() or stop
            if stop is None and pending and P.yields(plan.precedence) and P.check_due(self._precedence_checked, workflow.now()):
                if await self._precedence_holder() is not None:
                    stop = P.YIELDING  # R-RP-9: launch nothing more; the running slices finish
            if stop is None:
                while pending and len(running) < tuning.concurrency and unallotted > 0:
                    if workflow.now() < next_launch:
                        break
                    s = pending.popleft()
                    s.allot = min(s.hi - s.lo, unallotted)
                    unallotted -= s.allot
                    s.handle = self._start_slice(phase, win, s, routed, later_pass)
                    running.append(s)
                    if phase.pacing_per_hour and not later_pass:
                        next_launch = workflow.now() + timedelta(hours=(s.hi - s.lo) / phase.pacing_per_hour)
            if not running:
                if stop == "failed":
                    # A slice failed in a way no retry fixes: halt (a paused state with the reason) until
                    # an operator resumes or cancels; a resume re-runs the rest of the day's slices.
                    progress.paused, stop = True, "paused"
                if stop == "paused":
                    if await self._wait_while_paused(win):
                        stop = None
                        continue
                    stop = control_stop() or "window_closed"
                if stop == P.YIELDING:
                    if await self._yield_while_held(win):
                        await self._publish("sending")
                        stop = None
                        continue
                    stop = control_stop() or P.YIELDING
                if stop or not pending or unallotted <= 0:
                    break
            wake_at = min(win.close_at, next_launch) if pending and next_launch > workflow.now() else win.close_at
            await _wait(
                lambda: any(s.handle.done() for s in running) or control_stop() is not None,
                max(wake_at - workflow.now(), timedelta(seconds=1)),
            )
            if control_stop() is not None:
                for s in running:
                    s.handle.cancel()
                await asyncio.gather(*(s.handle for s in running), return_exceptions=True)
            for s in [s for s in running if s.handle.done()]:
                running.remove(s)
                unallotted, reason = self._settle(s, pending, unallotted, later_pass)
                stop = reason if reason == A.NOT_SENT_BUDGET else stop or reason  # the budget ends the campaign
                if later_pass and phase.pacing_per_hour:
                    # A later pass's slices hold mostly decided rows: paced by what each stood behind, not its size.
                    next_launch = max(next_launch, workflow.now() + timedelta(hours=s.reserved / phase.pacing_per_hour))
            workflow.set_current_details(
                f"{phase.name} {win.day}: {progress.day_done:,}/{progress.day_eligible:,} decided, state {progress.state}"
            )
        if stop is None and pending:
            stop = "daily_cap"
        if stop in ("paused", None) and workflow.now() >= win.close_at and pending:
            stop = "window_closed"
        return stop

    async def _send_in_own_windows(
        self, phase: PhasePlan, win: DayWindow, seq_end: int, stop: str | None, last_pass: datetime
    ) -> str | None:
        """R-WIN-1: the day's recipients who wait for their own send window, until the shop's next day (end_at).

        Asks which zones still wait (zones and counts, never recipients), sleeps on a durable timer until the
        next of them opens (calendar.next_window_open: after the last pass started; when 22:00 stopped the first
        pass before it read every row, a zone open now goes at once) and runs the day's slices again as a later
        pass: the rows decided before are found in the ledger. When none of the waiting zones opens before the
        day's end, whoever waits is recorded not_sent (NOT_SENT_RECIPIENT_WINDOW). Returns the day's stop
        reason: the first pass's, or the later pass's that stopped early. `stop` "window_missed": the workflow woke
        after the shop's 22:00 (late_wake) and no pass ran: a zone open now goes at once, as after "window_closed"."""
        plan, progress = self.plan, self.progress
        later = replace(win, close_at=win.end_at)
        inp = WaitingInput(
            campaign_db_id=plan.campaign_db_id, phase_index=progress.phase_index, day=win.day, channel=phase.channel,
            shop_id=plan.shop_id, template_group=phase.template_cap.group if phase.template_cap else "",
        )  # fmt: skip
        open_now = stop in ("window_closed", "window_missed")
        waiting: int | None = None
        while not progress.cancel_requested:
            zones = (await self._call(WindowActivities.waiting_zones, inp, summary=f"waiting zones {win.day}")).zones
            left = sum(zones.values())
            if waiting is not None:  # what the later pass decided
                progress.day_done = min(progress.day_done + max(0, waiting - left), progress.day_eligible)
            waiting = left
            if not zones:
                return stop
            at = next_window_open(zones, workflow.now() if open_now else last_pass, win.end_at, open_now=open_now)
            if at is None:
                await self._call(WindowActivities.close_waiting, inp.model_copy(update={"decided_at": workflow.now()}),
                                 summary=f"close {win.day}: {A.NOT_SENT_RECIPIENT_WINDOW}")  # fmt: skip
                progress.day_done = min(progress.day_done + left, progress.day_eligible)
                return stop
            while workflow.now() < at and not progress.cancel_requested:
                paused = progress.paused  # a pause shows at once; the pass after the wait holds until resumed
                await self._publish("paused" if paused else "waiting")
                workflow.set_current_details(
                    f"{phase.name} {win.day}: {left:,} recipients wait for their own send window, next opens"
                    f" {at:%Y-%m-%d %H:%M} UTC"
                )
                await _wait(lambda was=paused: progress.cancel_requested or progress.paused != was, at - workflow.now())
            if progress.cancel_requested:
                break
            last_pass, open_now = workflow.now(), False
            later_stop = await self._send_day(phase, later, seq_end, later_pass=True)
            if later_stop is not None:
                return later_stop
        return stop

    def _settle(self, s: _Slice, pending: deque, unallotted: int, later_pass: bool = False) -> tuple[int, str | None]:
        """Account a finished slice; its unsent rest goes back to the front of the queue."""
        try:
            res: SendSliceResult = s.handle.result()
        except (ActivityError, asyncio.CancelledError) as err:
            # Outcome unknown (cancelled while retrying, out of time): the whole range runs again, and the
            # re-run finds its committed rows in the ledger, so nothing is sent or counted twice.
            pending.appendleft(_Slice(s.lo, s.hi))
            if isinstance(err, ActivityError) and _not_retryable(err):
                self.progress.halt_reason = f"send {s.lo}-{s.hi} failed: {_cause(err)}"
                return unallotted + s.allot, "failed"
            return unallotted + s.allot, None
        # Positions of the snapshot decided; its few empty positions at the end count too. Who waits for their own
        # window is not (R-WIN-1); a later pass counts what it decided from the waiting zones (_send_in_own_windows).
        s.reserved = res.reserved
        self._deferred += res.deferred
        if not later_pass:
            self.progress.day_done = min(self.progress.day_done + res.next_seq - s.lo - res.deferred,
                                         self.progress.day_eligible)
        if res.next_seq < s.hi:
            pending.appendleft(_Slice(res.next_seq, s.hi))
        stops = ("window_closed", A.SUPPRESS_BENEFIT, A.NOT_SENT_BUDGET, *A.QUOTA_STOPS)
        stop = res.stopped_reason if res.stopped_reason in stops else None
        if res.sent or res.failed:
            tuning = self.plan.tuning
            self._sends.append((res.sent, res.failed))
            reason = policies.error_rate_halt(self._sends, tuning.error_window, tuning.error_rate_max)
            if reason and workflow.patched(ERROR_RATE_PATCH):
                # Halt at once: the running slices are cancelled (their rest re-runs after a resume).
                self.progress.paused, self.progress.halt_reason = True, reason
                stop = stop or "failed"
        return unallotted + max(0, s.allot - res.reserved), stop

    def _start_slice(
        self, phase: PhasePlan, win: DayWindow, s: _Slice, routed: bool = False, later_pass: bool = False
    ) -> asyncio.Task:
        plan, progress = self.plan, self.progress
        tuning = plan.tuning
        # On the provider's queue; the shop is the fairness key (servers with task-queue fairness enabled
        # dispatch shops' backlogs round-robin; elsewhere the per-campaign window bounds what queues ahead).
        route = (
            {"task_queue": providers.send_queue(workflow.info().task_queue, phase.channel),
             "priority": Priority(fairness_key=plan.shop_id[:64])}
            if routed else {}
        )  # fmt: skip
        return workflow.start_activity_method(
            SendActivities.send_slice,
            SendSliceInput(
                campaign_db_id=plan.campaign_db_id,
                shop_id=plan.shop_id,
                phase_index=progress.phase_index,
                day=win.day,
                channel=phase.channel,
                template_cap=phase.template_cap,
                text=phase.text,
                title=phase.title,
                offer=phase.offer,
                benefit=phase.benefit,
                text_is_template=phase.text_is_template,
                timezone=plan.timezone,
                reaches_non_customers=reaches_non_customers(phase.audience, phase.audience_params),
                quota=phase.quota,
                sender_agents=phase.sender_agents,  # R-PH-5
                holdout_percent=plan.holdout_percent,  # R-HO-1
                holdout_key=plan.holdout_key,
                # R-WIN-1: a later pass sends only recipients with a zone; without a daily cap (whose budget counts
                # the range's earlier sends, R-PH-7) it reads only their rows.
                later_pass=later_pass,
                zoned_only=later_pass and phase.daily_cap is None,
                campaign_budget=plan.budget,  # R-COST-BUDGET
                seq_lo=s.lo,
                seq_hi=s.hi,
                budget=s.allot,
                decided_at=workflow.now(),
                window_end=win.close_at,
                chunk_size=tuning.chunk_size,
            ),
            heartbeat_timeout=timedelta(seconds=tuning.heartbeat_timeout_s),
            **policies.send_limits(workflow.now(), win.close_at).options(),
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            summary=f"send {win.day} [{s.lo}, {s.hi})",
            **route,
        )

    async def _precedence_holder(self) -> str | None:
        """The campaign of the shop holding this plan's precedence group now, if any (R-RP-9)."""
        plan = self.plan
        self._precedence_checked = workflow.now()
        res = await self._call(
            PrecedenceActivities.precedence_holder,
            PrecedenceInput(campaign_db_id=plan.campaign_db_id, shop_id=plan.shop_id, group=plan.precedence.group),
            summary=f"precedence {plan.precedence.group}",
            limits=policies.STATE,
        )
        return res.holder

    async def _yield_while_held(self, win: DayWindow) -> bool:
        """R-RP-9: send nothing while a campaign of the shop that takes precedence runs, looking again every
        few minutes; True when none holds the group before the window closes (and not cancelled)."""
        progress = self.progress
        while not progress.cancel_requested and workflow.now() < win.close_at:
            holder = await self._precedence_holder()
            if holder is None:
                progress.yield_reason = None
                return True
            progress.yield_reason = P.yield_reason(holder)
            await self._publish(P.YIELDING)
            workflow.set_current_details(progress.yield_reason)
            await _wait(lambda: progress.cancel_requested, min(P.CHECK_EVERY, win.close_at - workflow.now()))
        return False

    async def _wait_while_paused(self, win: DayWindow) -> bool:
        """Hold while paused; True when resumed inside today's window."""
        progress = self.progress
        await self._publish("halted" if progress.halt_reason else "paused")
        workflow.set_current_details(f"halted: {progress.halt_reason}" if progress.halt_reason else "paused")
        await _wait(lambda: not progress.paused or progress.cancel_requested, win.close_at - workflow.now())
        if not progress.paused and not progress.cancel_requested and workflow.now() < win.close_at:
            await self._publish("sending")
            return True
        return False

    async def _call(self, method, arg, *, summary: str, limits=policies.BOOKKEEPING, missed=None):
        """Run an activity under its limits. A failure no retry fixes (or one past the limits) halts the
        campaign until `resume` (then the call runs again) or `cancel` (then `_Stopped` unwinds the run).
        `missed()` true after a failure means the work is moot (the window closed): None is returned."""
        while True:
            try:
                return await workflow.execute_activity_method(method, arg, summary=summary, **limits.options())
            except ActivityError as err:
                if is_cancelled_exception(err):
                    raise
                if missed is not None and missed():
                    return None
                if not await self._halt(f"{summary} failed: {_cause(err)}"):
                    raise _Stopped() from None

    async def _halt(self, reason: str) -> bool:
        """Hold the campaign with the reason visible (state "halted", details, progress query) until an
        operator resumes (True) or cancels (False). Only search attributes change: the campaigns row is
        written by an activity, which may be what fails."""
        progress = self.progress
        if progress.cancel_requested:
            return False
        before = progress.state
        progress.paused, progress.halt_reason = True, reason
        self._set_attributes("halted")
        workflow.set_current_details(f"halted: {reason}")
        await workflow.wait_condition(lambda: not progress.paused or progress.cancel_requested)
        if progress.cancel_requested:
            return False
        self._set_attributes(before)
        return True

    def _phase_name(self) -> str:
        plan = self.plan
        return plan.phases[min(self.progress.phase_index, len(plan.phases) - 1)].name

    def _set_attributes(self, state: str) -> None:
        self.progress.state = state
        workflow.upsert_search_attributes(
            [SA.CAMPAIGN_STATE.value_set(state), SA.CAMPAIGN_PHASE.value_set(self._phase_name())]
        )

    async def _publish(self, state: str, *, final: bool = False) -> None:
        """Keep search attributes and the campaigns row current (Temporal UI, GET /campaigns)."""
        plan, progress = self.plan, self.progress
        phase = self._phase_name()
        first = not getattr(self, "_published", False)
        if not first and state == progress.state and phase == getattr(self, "_published_phase", None):
            return
        self._published, self._published_phase = True, phase
        self._set_attributes(state)
        inp = CampaignStateInput(campaign_db_id=plan.campaign_db_id, state=state)
        if not final:
            await self._call(ReportActivities.set_campaign_state, inp, summary=f"state {state}", limits=policies.STATE)
            return
        try:
            # The campaign is over whatever happens here: no halt, only the attempt within the limits.
            await workflow.execute_activity_method(
                ReportActivities.set_campaign_state, inp, summary=f"state {state}", **policies.STATE.options()
            )
        except ActivityError as err:
            if is_cancelled_exception(err):
                raise
            workflow.logger.warning("final state not recorded in Postgres: %s", _cause(err))


async def _wait(condition, timeout: timedelta) -> bool:
    """A durable wait for `condition`, at most `timeout`; True when the condition came true."""
    if timeout <= timedelta(0):
        return bool(condition())
    try:
        await workflow.wait_condition(condition, timeout=timeout)
        return True
    except TimeoutError:
        return False


def _not_retryable(err: ActivityError) -> bool:
    return isinstance(err.cause, ApplicationError) and err.cause.non_retryable


def _cause(err: ActivityError) -> str:
    cause = err.cause
    if isinstance(cause, ApplicationError):
        return f"{cause.type or 'error'}: {cause.message}"
    return f"{type(cause).__name__}: {cause}" if cause else str(err)


def _phase_end_reason(stop: str) -> str:
    return {
        "window_closed": A.NOT_SENT_WINDOW,
        "window_missed": "window_missed_phase_ended",
        "daily_cap": "daily_cap_phase_ended",
        A.NOT_SENT_MIN_AUDIENCE: A.NOT_SENT_MIN_AUDIENCE,
        P.YIELDING: A.NOT_SENT_YIELDED,
        **{q: q for q in A.QUOTA_STOPS},  # R-ED-4: the quota's own reason
    }.get(stop, f"{stop}_phase_ended")
