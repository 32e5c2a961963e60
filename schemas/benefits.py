"""Member benefits (R-RP-4): the kinds, the plan a phase carries, and the pure choices.

A shop's member benefits are data (`member_benefits`, db/migrations/0007_member_benefits.sql): a
member discount, a member coupon or a join gift, each with the title the consumer reads, a validity
window and, when it is a limited resource, the coupon whose stock it hands out. A phase with a
`BenefitPlan` tells each recipient the benefit for their membership: the kinds acceptable for members
and for non-members (cross-sell: the member offer for members, the join gift for the others; a custom
audience: the one kind it picked, for everyone). Which of the shop's benefits is used, and who gets
which, are decided here without a database (`pick_benefit`, `BenefitChoice`); the start check
(kinds/repurchase.py) and the send (activities/send.py) read the rows with `SHOP_BENEFITS`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field


class MemberBenefitKind(StrEnum):
    """The kinds of `member_benefits.kind` (the table's CHECK lists the same values)."""

    member_discount = "member_discount"  # a price cut members get at checkout; no stock
    member_coupon = "member_coupon"  # a coupon for members; limited when it names a coupon row
    join_gift = "join_gift"  # what a customer gets for joining the membership


# What a member is offered when a campaign uses the shop's member benefits (cross-sell, R-RP-4).
MEMBER_OFFER = (MemberBenefitKind.member_discount, MemberBenefitKind.member_coupon)

# How a message names each kind's benefit ({{ benefit }}): the shop's title in a phrase of its kind.
_PHRASES = {
    MemberBenefitKind.member_discount: "Member price: {title}",
    MemberBenefitKind.member_coupon: "Member coupon: {title}",
    MemberBenefitKind.join_gift: "Join our membership for {title}",
}

# The shop's benefits of some kinds not ended at $3, with their coupon's stock and validity (NULL for a
# benefit without a coupon, or whose coupon is another shop's). $1 shop, $2 kinds. Index
# member_benefits_shop (shop_id, kind, valid_to): one short range per kind; the coupon by primary key.
SHOP_BENEFITS = """
    SELECT b.benefit_id, b.kind, b.title, b.valid_from, b.valid_to, b.coupon_id,
           c.stock AS coupon_stock, c.valid_from AS coupon_from, c.valid_to AS coupon_to
    FROM member_benefits b
    LEFT JOIN coupons c ON c.coupon_id = b.coupon_id AND c.shop_id = b.shop_id
    WHERE b.shop_id = $1 AND b.kind = ANY($2::text[]) AND b.valid_to > $3
"""


class BenefitPlan(BaseModel):
    """R-RP-4: every sent delivery of the phase carries the shop's member benefit for the recipient's
    membership (read at send time): one of `members` for a member, one of `non_members` for the others.
    A limited benefit (one naming a coupon) holds one unit of that coupon per delivery as a `claims`
    row, claimable for `hours` after the hand-off, given back if unclaimed or not sent. `coupon_ids`:
    the exclusive coupons whose products the audience may push (R-RP-10), only to name the product in
    the text; their stock is not touched."""

    members: list[MemberBenefitKind] = Field(min_length=1)
    non_members: list[MemberBenefitKind] = Field(min_length=1)
    hours: int = Field(ge=2, le=24)
    coupon_ids: list[str] = Field(default_factory=list)
    # R-BEN-1 / R-AQ-2: the message exists for the benefit (K-ACQUIRE's join gift): while a group of
    # recipients has none usable (`required_benefit_problem`), the phase sends nothing more, as a shared
    # coupon that runs out stops its phase. Without it a recipient without one is suppressed alone.
    required: bool = False

    def kinds(self) -> list[str]:
        return sorted({*self.members, *self.non_members})


@dataclass(frozen=True)
class MemberBenefit:
    benefit_id: str
    kind: MemberBenefitKind
    title: str
    valid_from: datetime
    valid_to: datetime
    coupon_id: str | None = None

    @classmethod
    def of(cls, row: Mapping) -> MemberBenefit:
        """From a `SHOP_BENEFITS` row."""
        return cls(row["benefit_id"], MemberBenefitKind(row["kind"]), row["title"], row["valid_from"], row["valid_to"],
                   row["coupon_id"])

    def text(self) -> str:
        """What `{{ benefit }}` says of it."""
        return _PHRASES[self.kind].format(title=self.title)


def pick_benefit(
    rows: Iterable[MemberBenefit], kinds: Collection[str], start: datetime, end: datetime
) -> MemberBenefit | None:
    """The benefit the shop gives for `kinds` from `start` to `end` (end >= start; end == start: at that
    instant): among those of these kinds in force from `start` through `end`, the one that started last
    (the shop's newest), ties broken by the larger benefit id; None when there is none."""
    fits = [b for b in rows if b.kind in kinds and b.valid_from <= start < b.valid_to and end <= b.valid_to]
    return max(fits, key=lambda b: (b.valid_from, b.benefit_id), default=None)


@dataclass(frozen=True)
class BenefitChoice:
    """The benefit for members and the one for non-members (None: the shop has none in force)."""

    member: MemberBenefit | None
    non_member: MemberBenefit | None

    @classmethod
    def of(cls, plan: BenefitPlan, rows: Iterable[MemberBenefit], at: datetime) -> BenefitChoice:
        rows = list(rows)
        return cls(pick_benefit(rows, plan.members, at, at), pick_benefit(rows, plan.non_members, at, at))

    def for_recipient(self, is_member: bool | None) -> MemberBenefit | None:
        """A member gets the member benefit; anyone else (not a member, or membership unknown) the other."""
        return self.member if is_member else self.non_member

    def per_recipient(self, membership: Mapping[int, bool | None]) -> dict[int, MemberBenefit | None]:
        return {c: self.for_recipient(m) for c, m in membership.items()}


def required_benefit_problem(plan: BenefitPlan, rows: Iterable[Mapping], at: datetime) -> str | None:
    """Why the plan's benefits cannot be given at `at`, or None: a group of recipients (members, the
    others) has no benefit of its kinds in force, or the one it gets hands out a coupon that is not this
    shop's, not valid at `at` or out of stock (R-BEN-1). `rows`: `SHOP_BENEFITS` rows. The one answer
    of the start check and of the send path for a `required` benefit."""
    rows = list(rows)
    by_id = {r["benefit_id"]: r for r in rows}
    choice = BenefitChoice.of(plan, [MemberBenefit.of(r) for r in rows], at)
    groups = [("every recipient", plan.members, choice.member)] if plan.members == plan.non_members else [
        ("members", plan.members, choice.member), ("non-members", plan.non_members, choice.non_member)]
    for who, kinds, b in groups:
        what = " or ".join(k.replace("_", " ") for k in kinds)
        if b is None:
            return f"the shop has no {what} in force for {who} (add one to the shop's member benefits)"
        if b.coupon_id is not None:
            c = by_id[b.benefit_id]
            if c["coupon_stock"] is None:
                return f"the {what} {b.benefit_id!r} hands out coupon {b.coupon_id!r}, which is not this shop's"
            if not (c["coupon_from"] <= at < c["coupon_to"]):
                return f"coupon {b.coupon_id!r} of the {what} {b.benefit_id!r} is not valid now"
            if c["coupon_stock"] <= 0:
                return f"coupon {b.coupon_id!r} of the {what} {b.benefit_id!r} is out of stock"
    return None
