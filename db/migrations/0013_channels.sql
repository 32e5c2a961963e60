-- Channels (docs/channels.md): SMS credits (R-AQ-5) and what each sent delivery cost.
-- The price of each SMS (yuan) goes to deliveries.cost (migration 0012).

-- One row per recharge of a shop's SMS credits (R-AQ-5): the tier's price per billed message, fixed
-- when bought, and an end two years later, when what is left is void. A chunk locks the shop's rows
-- with credits left in expiry order and spends the earliest first, in the transaction that decides
-- the deliveries.
CREATE TABLE sms_credits (
    shop_id      text          NOT NULL REFERENCES shops (shop_id),
    credit_id    bigint        GENERATED ALWAYS AS IDENTITY,
    bought       integer       NOT NULL CHECK (bought > 0),
    remaining    integer       NOT NULL,
    price_fen    numeric(4, 2) NOT NULL CHECK (price_fen > 0),
    purchased_at timestamptz   NOT NULL,
    expires_at   timestamptz   NOT NULL,
    PRIMARY KEY (shop_id, credit_id),
    CHECK (remaining BETWEEN 0 AND bought),
    CHECK (expires_at > purchased_at)
);

-- Which recharge paid for whom: one row per chunk and recharge, the chunk's consumers and the segments
-- each took from it. A delivery that does not go out gives exactly these back (channels/sms.py, refund).
CREATE TABLE sms_debits (
    shop_id      text     NOT NULL,
    credit_id    bigint   NOT NULL,
    campaign_id  bigint   NOT NULL,
    phase        smallint NOT NULL,
    day          date     NOT NULL,
    consumer_ids bigint[] NOT NULL,
    segments     integer[] NOT NULL,
    FOREIGN KEY (shop_id, credit_id) REFERENCES sms_credits (shop_id, credit_id),
    CHECK (cardinality(consumer_ids) = cardinality(segments))
);
CREATE INDEX sms_debits_day ON sms_debits (campaign_id, phase, day);
