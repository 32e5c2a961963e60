-- The system of record: shops, their customers and behaviour, campaigns,
-- audience snapshots, the delivery ledger and the fatigue counters.

CREATE TABLE shops (
    shop_id          text PRIMARY KEY,
    name             text NOT NULL,
    timezone         text NOT NULL,              -- IANA name, R-WIN-1
    industry         text NOT NULL,
    sms_signature    text,                       -- R-AQ-6 (industry signature)
    virtual_category boolean NOT NULL DEFAULT false,  -- R-AQ-5
    created_at       timestamptz NOT NULL DEFAULT now()
);

-- A platform-wide consumer: the unit the cross-shop caps count (R-FAT-3).
CREATE TABLE consumers (
    consumer_id bigint PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE shop_customers (
    shop_id          text   NOT NULL REFERENCES shops,
    consumer_id      bigint NOT NULL REFERENCES consumers,
    nick             text,
    phone            text,
    email            text,
    chat_id          text,
    phone_valid      boolean NOT NULL DEFAULT true,
    email_valid      boolean NOT NULL DEFAULT true,
    locale           text NOT NULL DEFAULT 'zh-CN',
    timezone         text,                        -- the customer's own, when known
    is_member        boolean NOT NULL DEFAULT false,
    is_fan           boolean NOT NULL DEFAULT false,
    blacklisted      boolean NOT NULL DEFAULT false,  -- R-SC-4, R-EXC-1
    deleted          boolean NOT NULL DEFAULT false,  -- recycle bin, R-EXC-1
    unsub_chat       boolean NOT NULL DEFAULT false,  -- unsubscribed per channel, R-EXC-1
    unsub_sms        boolean NOT NULL DEFAULT false,
    unsub_email      boolean NOT NULL DEFAULT false,
    unsub_inbox      boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (shop_id, consumer_id)
);

CREATE TABLE products (
    product_id        bigint PRIMARY KEY,
    shop_id           text NOT NULL REFERENCES shops,
    title             text NOT NULL,
    category          text NOT NULL,
    price             numeric(12,2) NOT NULL,
    repurchase_cycle_days integer,              -- R-RP-1, estimated from history
    on_shelf          boolean NOT NULL DEFAULT true
);
CREATE INDEX products_shop ON products (shop_id);

CREATE TABLE orders (
    order_id     bigint PRIMARY KEY,
    shop_id      text NOT NULL REFERENCES shops,
    consumer_id  bigint NOT NULL,
    created_at   timestamptz NOT NULL,
    paid_at      timestamptz,
    amount       numeric(12,2) NOT NULL,
    status       text NOT NULL DEFAULT 'paid'   -- pending | paid | refunded
);
CREATE INDEX orders_shop_consumer ON orders (shop_id, consumer_id, created_at);

CREATE TABLE order_items (
    order_id   bigint NOT NULL REFERENCES orders,
    product_id bigint NOT NULL,
    quantity   integer NOT NULL,
    price      numeric(12,2) NOT NULL,
    PRIMARY KEY (order_id, product_id)
);

-- visit, favourite, cart, inquiry, live_view, coupon_claim, login,
-- message_read, message_click, message_reply
CREATE TABLE behaviour_events (
    shop_id     text NOT NULL,
    consumer_id bigint NOT NULL,
    kind        text NOT NULL,
    product_id  bigint,
    occurred_at timestamptz NOT NULL
);
CREATE INDEX behaviour_shop_consumer ON behaviour_events (shop_id, consumer_id, kind, occurred_at);

CREATE TABLE coupons (
    coupon_id   text PRIMARY KEY,
    shop_id     text NOT NULL REFERENCES shops,
    name        text NOT NULL,
    valid_from  timestamptz NOT NULL,
    valid_to    timestamptz NOT NULL,
    stock       integer NOT NULL,            -- remaining, R-BEN-1, R-SC-2
    CHECK (stock >= 0)
);

CREATE TABLE campaigns (
    id           bigserial PRIMARY KEY,       -- compact key used by the ledger
    shop_id      text NOT NULL REFERENCES shops,
    campaign_ref text NOT NULL,               -- the merchant's id
    workflow_id  text NOT NULL UNIQUE,
    kind         text NOT NULL,
    spec         jsonb NOT NULL,
    state        text NOT NULL DEFAULT 'created',
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (shop_id, campaign_ref)
);

-- One row per recipient of a phase day (R-OC-5: T+1 snapshot). seq numbers
-- the rows densely so batch activities can be handed [lo, hi) ranges.
CREATE TABLE audience_snapshots (
    campaign_id bigint   NOT NULL,
    phase       smallint NOT NULL,
    day         date     NOT NULL,
    seq         integer  NOT NULL,
    consumer_id bigint   NOT NULL,
    PRIMARY KEY (campaign_id, phase, day, seq)
);

-- What the refresh left out, per reason (R-PRE-1, R-EXC-1), per phase day.
CREATE TABLE audience_refreshes (
    campaign_id bigint   NOT NULL,
    phase       smallint NOT NULL,
    day         date     NOT NULL,
    matched     integer  NOT NULL,
    eligible    integer  NOT NULL,
    excluded    jsonb    NOT NULL,
    refreshed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (campaign_id, phase, day)
);

-- The delivery ledger: the truth of who was sent what (docs/design.md, "The ledger and the caps").
-- state: reserved -> sent | failed | unknown; suppressed and not_sent are
-- decisions that consumed no cap (R-OC-8).
CREATE TABLE deliveries (
    campaign_id   bigint   NOT NULL,
    phase         smallint NOT NULL,
    consumer_id   bigint   NOT NULL,
    day           date     NOT NULL,
    channel       text     NOT NULL,
    shop_id       text     NOT NULL,
    template_group text    NOT NULL,
    fatigue_day   date     NOT NULL,           -- platform natural day the caps were counted on
    state         text     NOT NULL,
    reason        text,
    provider_ref  text,
    decided_at    timestamptz NOT NULL,        -- workflow time of the decision
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (campaign_id, phase, consumer_id, day, channel),
    CHECK (state IN ('reserved', 'sent', 'failed', 'unknown', 'suppressed', 'not_sent'))
);
CREATE INDEX deliveries_reserved ON deliveries (campaign_id, state) WHERE state IN ('reserved', 'unknown');

-- Fatigue counters (R-FAT-1..4). Every change of a consumer's counters first
-- locks that consumer's fatigue_day row, so the row is the consumer's mutex.
-- All of a consumer's counts of a natural day live in that one row: the total
-- and the shops (R-FAT-3), per shop (R-FAT-2) and per shop and template group
-- (R-FAT-1, read over the last N days' rows): one row version per send
-- instead of a row in each of three tables.
CREATE TABLE fatigue_day (
    consumer_id  bigint NOT NULL,
    day          date   NOT NULL,
    sent         integer NOT NULL DEFAULT 0,    -- R-FAT-3: <= 10 a day
    shops        integer NOT NULL DEFAULT 0,    -- R-FAT-3: <= 5 distinct shops a day
    per_shop     jsonb   NOT NULL DEFAULT '{}', -- R-FAT-2: {shop_id: sent}, each <= 2 a day
    per_template jsonb   NOT NULL DEFAULT '{}', -- R-FAT-1: {"shop_id/template_group": sent}
    PRIMARY KEY (consumer_id, day)
) WITH (fillfactor = 60);  -- room on the page for the day's later sends: HOT updates, no new index entry

-- A count of a fatigue map one higher. The empty key counts nothing: a phase
-- without a template cap (R-FAT-1) passes '' for its template key.
CREATE FUNCTION fatigue_increment(counts jsonb, key text) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN key = '' THEN counts
                ELSE jsonb_set(counts, ARRAY[key], to_jsonb(coalesce((counts ->> key)::int, 0) + 1)) END
$$;

-- A count of a fatigue map one lower; at zero its key leaves the map. The empty key: unchanged.
CREATE FUNCTION fatigue_decrement(counts jsonb, key text) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN key = '' THEN counts
                WHEN coalesce((counts ->> key)::int, 0) <= 1 THEN counts - key
                ELSE jsonb_set(counts, ARRAY[key], to_jsonb((counts ->> key)::int - 1)) END
$$;

-- The same counts as rows, for reports and checks. Ids are letters, digits,
-- '_' and '-' (schemas/campaign.py), so '/' separates shop and group safely.
CREATE VIEW fatigue_shop_day AS
SELECT f.consumer_id, p.key AS shop_id, f.day, p.value::int AS sent
FROM fatigue_day f CROSS JOIN LATERAL jsonb_each_text(f.per_shop) AS p;

CREATE VIEW fatigue_template AS
SELECT f.consumer_id, split_part(p.key, '/', 1) AS shop_id, split_part(p.key, '/', 2) AS template_group,
       f.day, p.value::int AS sent
FROM fatigue_day f CROSS JOIN LATERAL jsonb_each_text(f.per_template) AS p;

-- The outbox channel: a table a dispatcher drains, one row per handed-off batch
-- (a chunk of one campaign phase day on one channel: thousands of messages,
-- the body once). A delivery's provider_ref names its batch ('outbox:<id>'),
-- and a batch holds only deliveries its own statement claimed in the ledger,
-- so the ledger's key keeps every delivery in at most one batch.
-- One row per batch, not per message: per-message rows with their own indexes
-- cost a fifth of the send path's database time (docs/benchmarks.md).
CREATE TABLE outbox (
    id            bigserial PRIMARY KEY,
    campaign_id   bigint   NOT NULL,
    phase         smallint NOT NULL,
    day           date     NOT NULL,
    channel       text     NOT NULL,
    body          text     NOT NULL,
    consumer_ids  bigint[] NOT NULL,
    addresses     text[]   NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    dispatched_at timestamptz,
    CHECK (cardinality(consumer_ids) > 0 AND cardinality(consumer_ids) = cardinality(addresses))
);
CREATE INDEX outbox_pending ON outbox (id) WHERE dispatched_at IS NULL;

-- One row per message, for dispatchers that want them and for checks.
CREATE VIEW outbox_messages AS
SELECT o.id AS batch_id, o.campaign_id, o.phase, o.day, o.channel, m.consumer_id, m.address, o.body,
       o.created_at, o.dispatched_at
FROM outbox o CROSS JOIN LATERAL unnest(o.consumer_ids, o.addresses) AS m(consumer_id, address);

CREATE TABLE campaign_day_reports (
    campaign_id bigint   NOT NULL,
    phase       smallint NOT NULL,
    day         date     NOT NULL,
    counts      jsonb    NOT NULL,             -- per state and per reason
    reported_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (campaign_id, phase, day)
);
