-- Per-recipient offers (K-REPURCHASE, R-RP-5 and R-RP-10).
--
-- audience_snapshots.item: the product an audience chose for the recipient
-- (R-RP-10), NULL for audiences that choose none. coupons.product_id: the
-- product an exclusive coupon is for. outbox.bodies: each recipient's own
-- rendered text, parallel to consumer_ids (NULL when the batch has one body).
--
-- claims: one row per sent delivery that carries a limited resource (a unit
-- of a coupon's stock) held for it, keyed like the delivery. The unit is
-- taken from coupons.stock when the delivery is decided (never oversold: the
-- CHECK on stock), `claimed` when the consumer claims it before `expires_at`,
-- and given back (`expired`) when the window ends unclaimed or (`released`)
-- when the delivery is not sent after all.
ALTER TABLE audience_snapshots ADD COLUMN item bigint;
ALTER TABLE coupons ADD COLUMN product_id bigint;
ALTER TABLE outbox ADD COLUMN bodies text[];
ALTER TABLE outbox ADD CHECK (bodies IS NULL OR cardinality(bodies) = cardinality(consumer_ids));

CREATE TABLE claims (
    id           bigserial PRIMARY KEY,      -- the offer's public number (claim URL)
    campaign_id  bigint   NOT NULL,
    phase        smallint NOT NULL,
    consumer_id  bigint   NOT NULL,
    day          date     NOT NULL,
    channel      text     NOT NULL,
    shop_id      text     NOT NULL,
    coupon_id    text     NOT NULL REFERENCES coupons,
    product_id   bigint,
    state        text     NOT NULL DEFAULT 'held',   -- held | claimed | expired | released
    held_at      timestamptz NOT NULL DEFAULT now(), -- the hand-off instant for a sent delivery
    expires_at   timestamptz,                        -- held_at + the offer's hours
    closed_at    timestamptz,
    UNIQUE (campaign_id, phase, consumer_id, day, channel),
    CHECK (state IN ('held', 'claimed', 'expired', 'released'))
);
-- The expiry sweep reads the day's open offers of one campaign.
CREATE INDEX claims_open ON claims (campaign_id, day, expires_at) WHERE state = 'held';
