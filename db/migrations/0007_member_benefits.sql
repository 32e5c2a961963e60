-- The shop's member benefits (R-RP-4), as data: what K-REPURCHASE's cross-sell and
-- custom audiences offer instead of an exclusive coupon.
--
-- kind (MemberBenefitKind, schemas/benefits.py): member_discount (a price cut
-- members get at checkout), member_coupon (a coupon for members), join_gift
-- (what a customer gets for joining the membership). title: what the message
-- tells the consumer ({{ benefit }}). The benefit is in force from valid_from
-- to valid_to. coupon_id: the coupon row a limited benefit hands out, one unit
-- per sent delivery, held as a claims row exactly like an exclusive coupon's
-- offer (never oversold: the stock's CHECK); NULL for a benefit without a
-- stock. A member discount never has one.
CREATE TABLE member_benefits (
    benefit_id  text PRIMARY KEY,
    shop_id     text NOT NULL REFERENCES shops,
    kind        text NOT NULL,
    title       text NOT NULL,
    valid_from  timestamptz NOT NULL,
    valid_to    timestamptz NOT NULL,
    coupon_id   text REFERENCES coupons,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (kind IN ('member_discount', 'member_coupon', 'join_gift')),
    CHECK (valid_from < valid_to),
    CHECK (btrim(title) <> ''),
    CHECK (coupon_id IS NULL OR kind <> 'member_discount')
);
-- The start check and each send slice read a shop's benefits of some kinds still in force: a range of
-- this index (a shop has a handful of rows).
CREATE INDEX member_benefits_shop ON member_benefits (shop_id, kind, valid_to);

-- The member benefit a delivery carried (R-RP-4; NULL: none, or an exclusive coupon, which its claims
-- row names). Written with the ledger row, in the same statement; no foreign key, so the hot ledger
-- insert probes nothing more.
ALTER TABLE deliveries ADD COLUMN benefit_id text;
