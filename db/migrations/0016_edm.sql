-- K-EDM (R-ED-4): the shop's EDM provider account and its daily quota.
--
-- The cost of each delivery (the reports' column, created in 0012; kept here in case 0012 is not
-- there yet when this runs alone).
ALTER TABLE deliveries ADD COLUMN IF NOT EXISTS cost numeric(12,4);

-- One row per shop that configured its EDM account (without one, email cannot be sent: R-ED-4).
-- Postpaid: each priced email debits the balance (yuan), which may fall below zero; below zero is
-- arrears, and an account in arrears sends nothing, its free emails included, until settled.
CREATE TABLE edm_accounts (
    shop_id     text PRIMARY KEY REFERENCES shops,
    balance     numeric(12,4) NOT NULL DEFAULT 0,
    daily_limit integer NOT NULL DEFAULT 2000 CHECK (daily_limit >= 0),  -- the provider's initial limit
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- The shop's emails of a day (the phase's shop-local day) and what they cost: the counter the send
-- path locks and bumps in the transaction that decides the deliveries, so no two chunks or
-- campaigns of the shop together pass the day's limit.
CREATE TABLE quota_day (
    shop_id text    NOT NULL,
    quota   text    NOT NULL,            -- 'edm'
    day     date    NOT NULL,
    used    integer NOT NULL DEFAULT 0,
    cost    numeric(12,4) NOT NULL DEFAULT 0,
    PRIMARY KEY (shop_id, quota, day)
);

-- R-ED-1: "EDM read but not replied": the shop's sent emails of a consumer, probed per recipient.
-- Partial: only email rows pay for it.
CREATE INDEX deliveries_shop_email ON deliveries (shop_id, consumer_id, decided_at)
    WHERE channel = 'email' AND state = 'sent';
