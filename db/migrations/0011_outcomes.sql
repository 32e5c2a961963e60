-- What happened after a send (outcomes/): outcome events, refunds, attribution windows and attributed
-- orders, and the control group of a campaign (docs/outcomes.md).

-- One row per outcome event the shop reported, keyed by the shop's own id for it: a resent event
-- finds its row and changes nothing (R-EV-2). kind: outcomes/events.py, OutcomeKind. campaign_id is
-- the campaign's compact id (campaigns.id), phase its phase index (as in the ledger).
CREATE TABLE outcome_events (
    shop_id     text        NOT NULL,
    event_id    text        NOT NULL,
    kind        text        NOT NULL,
    consumer_id bigint      NOT NULL,
    campaign_id bigint,
    phase       smallint,
    channel     text,
    order_id    bigint,
    product_id  bigint,
    amount      numeric(12,2),
    occurred_at timestamptz NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (shop_id, event_id),
    CHECK (kind IN ('delivered', 'opened', 'clicked', 'replied', 'coupon_claimed', 'product_clicked',
                    'order_created', 'order_paid', 'order_refunded', 'unsubscribed'))
);
-- Reports read a campaign's events of one kind (replied: the inquiry rate) per consumer.
CREATE INDEX outcome_events_campaign ON outcome_events (campaign_id, kind, consumer_id) WHERE campaign_id IS NOT NULL;

-- What was refunded of an order so far (order_refunded events add up, never past the amount).
-- Revenue of an order: amount when paid (paid_at set, status paid or refunded) minus this.
ALTER TABLE orders ADD COLUMN refunded_amount numeric(12,2) NOT NULL DEFAULT 0;
ALTER TABLE orders ADD CONSTRAINT orders_refund_within_amount CHECK (refunded_amount >= 0 AND refunded_amount <= amount);

-- Each phase's attribution window, from the campaign's plan (PhasePlan.attribution, R-ATT-1):
-- 'period': orders created in [from_at, to_at) (the phase's days, shop-local);
-- 'after_reach': orders created within `days` days after the reach.
-- Written by the attribution step from the plan the workflow runs.
CREATE TABLE attribution_windows (
    campaign_id bigint   NOT NULL,
    phase       smallint NOT NULL,
    mode        text     NOT NULL,
    from_at     timestamptz,
    to_at       timestamptz,
    days        integer,
    PRIMARY KEY (campaign_id, phase),
    CHECK (mode = 'period' AND from_at IS NOT NULL AND to_at IS NOT NULL AND from_at < to_at
           OR mode = 'after_reach' AND days BETWEEN 1 AND 365)
);

-- Orders attributed to a campaign (R-ATT-1): the order of a reached customer created inside the window
-- of the last phase that reached them before it. Rebuilt per campaign (outcomes/attribution.py).
CREATE TABLE attributions (
    campaign_id bigint        NOT NULL,
    phase       smallint      NOT NULL,
    consumer_id bigint        NOT NULL,
    order_id    bigint        NOT NULL,
    shop_id     text          NOT NULL,
    ordered_at  timestamptz   NOT NULL,
    revenue     numeric(12,2) NOT NULL,
    PRIMARY KEY (campaign_id, order_id)
);

-- The same for the campaign's control group (R-HO-1): the orders its held-out customers created inside
-- the window that would have applied had they been sent. Kept apart so that nothing summing a
-- campaign's attributed revenue can count the control group's by mistake.
CREATE TABLE holdout_attributions (LIKE attributions INCLUDING ALL);

-- R-HO-1: a delivery of the control group is decided `held_out`: selected, never sent, no cap taken.
ALTER TABLE deliveries DROP CONSTRAINT deliveries_state_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_state_check
    CHECK (state IN ('reserved', 'sent', 'failed', 'unknown', 'suppressed', 'not_sent', 'held_out'));
