"""K-PHASED: a three-phase activity push, preheat -> promote -> recall (R-PH-1..8).

Each phase has its days, a daily send time between 08:00 and 21:00 (R-PH-2),
an audience (default per R-PH-4: recent inquirers; recall drops who ordered
since the campaign started), a text (R-PH-6) and an optional daily cap
(R-PH-7). A phase's days are given as dates, or relative: `start_date`
defaults to the day after the previous phase (the first phase: the first day
whose window is still open), and `days` (default 1) stands for `end_date`.
So a spec without dates starts as shipped on any day.

The kind's own default, not a platform rule: a template cap of one message
per consumer per shop per day for each phase name (`phased-<phase>`), so two
K-PHASED campaigns of one shop running the same phase on the same day do not
stack their messages on one consumer (the platform's R-FAT-2 would allow
two). The ledger already keeps one message per consumer per phase of one
campaign.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from enum import StrEnum
from typing import Annotated, ClassVar, Literal

import asyncpg
from pydantic import Field, StringConstraints, field_validator, model_validator
from sluice.audiences import AUDIENCES
from sluice.channels.chat import agents_problem
from sluice.ingest.records import REF_PATTERN
from sluice.kinds.base import Kind, Shop, SpecBase
from sluice.schemas import rules
from sluice.schemas.campaign import (
    AttributionWindow,
    Channel,
    Ident,
    Pacing,
    PhasePlan,
    SenderAgents,
    SpecDate,
    SpecTime,
    Strict,
    TemplateCap,
    check_send_time,
)
from sluice.schemas.rules import RuleViolation, rule_error
from sluice.schemas.text import check_text
from sluice.workflows.calendar import day_window, first_open_day

NAME = "K-PHASED"
MAX_PHASE_DAYS = 61
MAX_SENDER_AGENTS = 1_000  # R-PH-5: agent ids one phase may name
ALL_AGENTS = "all"
AgentId = Annotated[str, StringConstraints(pattern=REF_PATTERN)]


class PhaseName(StrEnum):
    preheat = "preheat"
    promote = "promote"
    recall = "recall"


PHASE_ORDER = [PhaseName.preheat, PhaseName.promote, PhaseName.recall]

# R-PH-4: preheat and promote reach recent inquirers; recall those who have not ordered since.
DEFAULT_PHASE_AUDIENCE = {
    PhaseName.preheat: "inquired_30d",
    PhaseName.promote: "inquired_30d",
    PhaseName.recall: "inquired_30d_no_order_since_start",
}


class PhaseSpec(Strict):
    name: PhaseName
    start_date: SpecDate | None = Field(
        default=None, description="default: the day after the previous phase (the first phase: the first open day)"
    )
    end_date: SpecDate | None = Field(default=None, description="last day of the phase; or give `days`")
    days: int | None = Field(default=None, strict=True, ge=1, le=MAX_PHASE_DAYS, description="the phase's length; default 1")
    send_time: SpecTime = time(10, 0)
    audience: Ident | None = Field(default=None, description="audience name; default per R-PH-4")
    text: str = Field(min_length=1, max_length=500)
    daily_cap: int | None = Field(default=None, strict=True, ge=1, le=10_000_000, description="R-PH-7: most sends per day")
    agents: list[AgentId] | Literal["all"] | None = Field(
        default=None, max_length=MAX_SENDER_AGENTS,
        description='R-PH-5: the chat agents the messages go out from: agent ids of the shop, or "all"; each message '
        "from the agent who last served the customer when online and in the set, else an online agent of the set. "
        "Default: no agent (the shop's own account)",
    )  # fmt: skip

    @field_validator("send_time")
    @classmethod
    def _send_time(cls, v: time) -> time:
        return check_send_time(v, "R-PH-2", rules.PHASED_SEND_TIME_LATEST, latest_allowed=True)

    @field_validator("text")
    @classmethod
    def _text(cls, v: str) -> str:
        return check_text(v, "R-PH-6")

    @field_validator("agents")
    @classmethod
    def _agents(cls, v: list[str] | str | None) -> list[str] | str | None:
        if isinstance(v, list) and not v:
            raise rule_error("R-PH-5", 'agents names no agent: give agent ids, or "all"')
        if isinstance(v, list) and len(set(v)) != len(v):
            raise rule_error("R-PH-5", "agents names an agent twice")
        return v

    def sender_agents(self) -> SenderAgents | None:
        """R-PH-5: the plan's agent set (None: no agent)."""
        if self.agents is None:
            return None
        return SenderAgents(ids=None if self.agents == ALL_AGENTS else list(self.agents))

    @model_validator(mode="after")
    def _range(self) -> PhaseSpec:
        if self.end_date is not None and self.days is not None:
            raise rule_error("R-PH-2", f"phase {self.name}: give end_date or days, not both")
        if self.end_date is not None and self.start_date is None:
            raise rule_error("R-PH-2", f"phase {self.name}: end_date needs start_date (or give days)")
        if self.end_date is not None and self.end_date < self.start_date:
            raise rule_error("R-PH-2", f"phase {self.name}: end_date is before start_date")
        if self.end_date is not None and (self.end_date - self.start_date).days > MAX_PHASE_DAYS - 1:
            raise rule_error("R-PH-2", f"phase {self.name}: at most {MAX_PHASE_DAYS} days")
        return self


class PhasedSpec(SpecBase):
    """K-PHASED: preheat -> promote -> recall (R-PH-1..8)."""

    kind: Literal["K-PHASED"]
    phases: list[PhaseSpec] = Field(min_length=1, max_length=3)
    channel: Channel = Channel.chat
    pacing: Pacing = Pacing()

    @model_validator(mode="after")
    def _order(self) -> PhasedSpec:
        names = [p.name for p in self.phases]
        if PhaseName.promote not in names:
            raise rule_error("R-PH-1", "the promote phase is required (preheat may be skipped)")
        if len(set(names)) != len(names) or names != sorted(names, key=PHASE_ORDER.index):
            raise rule_error("R-PH-1", "phases must be in order preheat -> promote -> recall, each once")
        for before, after in zip(self.phases, self.phases[1:], strict=False):
            if before.end_date is not None and after.start_date is not None and after.start_date <= before.end_date:
                raise rule_error("R-PH-1", f"phase {after.name} starts before phase {before.name} ends")
        if self.channel != Channel.chat and any(p.agents is not None for p in self.phases):
            raise rule_error("R-PH-5", f"sender agents are chat agents; the channel is {self.channel.value}")
        return self


def phase_days(spec: PhasedSpec, tz: str, now: datetime) -> list[tuple[date, date]]:
    """Each phase's first and last day, the relative ones resolved against the shop's calendar."""
    out: list[tuple[date, date]] = []
    for p in spec.phases:
        if p.start_date is not None:
            start = p.start_date
        elif out:
            start = out[-1][1] + timedelta(days=1)
        else:
            start = first_open_day(now, tz)
        out.append((start, p.end_date or start + timedelta(days=(p.days or 1) - 1)))
    return out


class Phased(Kind):
    name: ClassVar[str] = NAME
    spec: ClassVar[type[SpecBase]] = PhasedSpec
    # Any audience of the library that needs no parameters of its own.
    audiences: ClassVar[tuple[str, ...]] = tuple(sorted(n for n, a in AUDIENCES.items() if not a.params))

    async def check(self, conn: asyncpg.Connection, spec: PhasedSpec, shop: Shop, now: datetime) -> None:
        for i, phase in enumerate(spec.phases):
            # An unknown name would only fail in the workflow's first audience refresh.
            if phase.audience is not None and phase.audience not in self.audiences:
                raise RuleViolation(f"phases.{i}.audience", "R-PH-4", f"unknown audience {phase.audience!r}")
            # R-PH-5: the set names agents of this shop (or "all": the shop has agents).
            if phase.agents is not None and (problem := await agents_problem(conn, shop.shop_id, phase.sender_agents().ids)):
                raise RuleViolation(f"phases.{i}.agents", "R-PH-5", problem)
        days = phase_days(spec, shop.timezone, now)
        for i in range(1, len(days)):
            if days[i][0] <= days[i - 1][1]:
                raise RuleViolation(
                    f"phases.{i}.start_date", "R-PH-1",
                    f"phase {spec.phases[i].name} starts before phase {spec.phases[i - 1].name} ends ({days[i - 1][1]})",
                )
        last_phase, (_, last_day) = spec.phases[-1], days[-1]
        if day_window(last_day, last_phase.send_time, shop.timezone).close_at <= now:
            raise RuleViolation("phases", "R-PH-2", "the last phase has already ended")

    def attribution(self, spec: PhasedSpec) -> AttributionWindow:
        """R-ATT-1: an order counts for the phase during whose days it was created (the phase's active
        period), unless the spec names a number of days after the reach."""
        return AttributionWindow.after(spec.attribution_days) if spec.attribution_days else AttributionWindow.phase_period()

    def compile(self, spec: PhasedSpec, shop: Shop, now: datetime) -> list[PhasePlan]:
        return [
            PhasePlan(
                name=p.name.value,
                start_date=start,
                end_date=end,
                send_time=p.send_time,
                audience=p.audience or DEFAULT_PHASE_AUDIENCE[p.name],
                channel=spec.channel,
                template_cap=TemplateCap(group=f"phased-{p.name.value}", count=1, days=1),  # the kind's default (above)
                text=p.text,
                daily_cap=p.daily_cap,
                pacing_per_hour=spec.pacing.per_hour,
                attribution=self.attribution(spec),
                sender_agents=p.sender_agents(),
            )
            for p, (start, end) in zip(spec.phases, phase_days(spec, shop.timezone, now), strict=True)
        ]
