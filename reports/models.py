"""What a report is made of, as the API, the CLI (`-o json`) and the page receive it (docs/reports.md)."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from pydantic import BaseModel, Field
from sluice.reports.definitions import CAMPAIGN_FUNNEL, funnel_stages, rate, roi


class Figures(BaseModel):
    """Counts and amounts of a phase, a day, a campaign or a shop, with the rates they give (R-REP-1)."""

    sent: int = Field(description="tasks sent: sent deliveries")
    failed: int = Field(description="deliveries the channel refused (state failed)")
    reached: int = Field(description="distinct buyers with a sent delivery")
    replied: int = Field(description="reached buyers who replied after the campaign first reached them")
    converted: int = Field(description="reached buyers with an attributed order")
    orders: int = Field(description="attributed orders")
    revenue: Decimal = Field(description="sum of the attributed orders' revenue (paid minus refunded)")
    cost: Decimal = Field(description="sum of the deliveries' cost (none recorded counts 0)")
    inquiry_rate: float | None = Field(description="replied / reached; null when nobody was reached")
    conversion_rate: float | None = Field(description="converted / reached; null when nobody was reached")
    roi: float | None = Field(description="(revenue - cost) / cost; null when nothing cost anything")

    @classmethod
    def of(cls, row) -> Figures:
        """Figures from a row (a mapping) with the counts and amounts; the rates are computed here."""
        return cls(
            sent=row["sent"], failed=row["failed"], reached=row["reached"], replied=row["replied"],
            converted=row["converted"], orders=row["orders"], revenue=row["revenue"], cost=row["cost"],
            inquiry_rate=rate(row["replied"], row["reached"]), conversion_rate=rate(row["converted"], row["reached"]),
            roi=roi(row["revenue"], row["cost"]),
        )  # fmt: skip


class PhaseReport(Figures):
    phase: int = Field(description="the phase's index in the plan, from 0")
    name: str
    first_day: date | None = Field(description="the first day the phase decided deliveries")
    last_day: date | None
    states: dict[str, int] = Field(description="ledger decisions per state and per state:reason")


class TrendDay(Figures):
    phase: int
    day: date = Field(description="the shop's calendar day")


class FunnelStage(BaseModel):
    stage: str = Field(description="potential, reached, handshake, ordered or repurchased (R-ED-5), in this order")
    count: int = Field(description="buyers at this stage (potential: the audience matched before exclusions)")
    conversion: float | None = Field(
        description="count / the previous stage's count; null for the first stage or after a stage of nobody"
    )

    @classmethod
    def of(cls, row) -> list[FunnelStage]:
        return [cls(stage=s, count=n, conversion=c) for s, n, c in funnel_stages(row)]


class ChannelFunnel(BaseModel):
    phase: int = Field(description="the phase's index (a K-EDM phase is one channel)")
    name: str
    channel: str | None = Field(description="the channel the phase sent on; null before it sent anything")
    stages: list[FunnelStage]


class Funnel(BaseModel):
    """R-ED-5: potential -> reached -> handshake -> ordered -> repurchased (docs/reports.md, "The funnel")."""

    stages: list[FunnelStage] = Field(description="the campaign: each buyer counted once across its channels")
    channels: list[ChannelFunnel] = Field(description="per phase, in order")

    @classmethod
    def of(cls, rows, names: dict[int, str]) -> Funnel | None:
        """The funnel from report_funnels rows (the campaign's and its phases'), or None without the campaign's."""
        whole = next((r for r in rows if r["phase"] == CAMPAIGN_FUNNEL), None)
        if whole is None:
            return None
        return cls(
            stages=FunnelStage.of(whole),
            channels=[ChannelFunnel(phase=r["phase"], name=names.get(r["phase"], f"phase {r['phase'] + 1}"),
                                    channel=r["channel"], stages=FunnelStage.of(r))
                      for r in rows if r["phase"] != CAMPAIGN_FUNNEL],
        )  # fmt: skip


class CampaignSummary(BaseModel):
    workflow_id: str
    campaign_id: str
    shop_id: str
    kind: str
    state: str
    created_at: datetime
    updated_at: datetime
    report_url: str


class CampaignList(BaseModel):
    campaigns: list[CampaignSummary]
    next: str | None = Field(description="cursor of the next page (`after`), null on the last page")


class BudgetReport(BaseModel):
    """R-COST-BUDGET: the campaign's budget cap and what its deliveries committed against it, read live."""

    budget: Decimal = Field(description="the cap the spec gave, in the shop's currency")
    spent: Decimal = Field(description="the costs of the committed deliveries (reserved, unknown, sent); a failed"
                                       " one gave its cost back")
    left: Decimal
    exhausted: bool = Field(description="a message did not fit in what was left: the campaign sent nothing more")
    exhausted_at: datetime | None


class CampaignReport(BaseModel):
    workflow_id: str
    campaign_id: str
    shop_id: str
    kind: str
    state: str
    refreshed_at: datetime
    attributed: bool = Field(description="whether the attribution step ran before this report was materialised")
    totals: Figures = Field(description="the campaign: each buyer counted once across its phases")
    phases: list[PhaseReport]
    trend: list[TrendDay] = Field(description="per phase and day, in order")
    funnel: Funnel | None = Field(default=None, description="R-ED-5, for a kind with a funnel (K-EDM); null otherwise")
    budget: BudgetReport | None = Field(default=None, description="R-COST-BUDGET: null for a campaign without a budget")


class Recipient(BaseModel):
    """One ledger decision of the campaign: whom, when, what, on which channel, and what came of it."""

    phase: int
    consumer_id: int
    day: date
    channel: str
    state: str
    reason: str | None
    decided_at: datetime
    content: str | None = Field(description="the delivered text (null when its outbox batch is gone or not an outbox)")
    cost: Decimal | None
    ordered: bool = Field(description="has an order attributed to this phase")
    orders: int
    revenue: Decimal


class RecipientPage(BaseModel):
    recipients: list[Recipient]
    next: str | None = Field(description="cursor of the next page (`after`), null on the last page")


class MonthPhase(Figures):
    month: date = Field(description="first day of the month")
    phase_name: str


class Dashboard(BaseModel):
    """R-REP-2: the shop's totals, today's figures against yesterday's, and a monthly split by phase name."""

    shop_id: str
    today: date = Field(description="the shop's calendar day now")
    campaigns: int
    totals: Figures
    today_figures: Figures
    yesterday_figures: Figures
    change: dict[str, int | Decimal] = Field(description="today's figure minus yesterday's, per count and amount")
    months: list[MonthPhase]
