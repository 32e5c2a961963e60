-- Reports (R-REP-1, R-REP-2), materialised per campaign by `sluice.reports.refresh` (docs/reports.md).
--
-- The report tables are a cache of set-based statements over the ledger, outcome_events and
-- attributions: a refresh rewrites one campaign's rows in one transaction, so a reader sees the
-- old report or the new one, never half. They are read by the API, the CLI and the dashboard;
-- none of them asks Temporal, so a report outlives the workflow's retention.

-- The price of a sent delivery (filled by the channels; NULL counts as 0 in reports). A nullable
-- column without a default is a catalog change only: no rewrite of the ledger.
ALTER TABLE deliveries ADD COLUMN cost numeric(12,4);

-- The phase names of the compiled plan, by phase index (written at start, api/service.py), so a
-- report names its phases without compiling the spec again.
ALTER TABLE campaigns ADD COLUMN phase_names text[];

-- GET /campaigns and `sluice campaigns`: a shop's campaigns, newest first, keyset-paginated on id.
CREATE INDEX campaigns_shop_id ON campaigns (shop_id, id);

-- One row per campaign, phase and shop-local day (the daily trend). Each count is counted on one day
-- only, so a phase's figures are the sums of its days:
--   sent, failed, cost   : ledger rows of the phase day (deliveries.day)
--   reached              : buyers whose first sent delivery of the phase is that day
--   replied              : reached buyers whose first reply after the campaign reached them is that day
--   converted            : buyers whose first order attributed to the phase was created that day
--   orders, revenue      : orders attributed to the phase, by the day they were created
CREATE TABLE report_days (
    campaign_id bigint   NOT NULL,
    phase       smallint NOT NULL,
    day         date     NOT NULL,
    shop_id     text     NOT NULL,
    sent        integer  NOT NULL,
    failed      integer  NOT NULL,
    reached     integer  NOT NULL,
    replied     integer  NOT NULL,
    converted   integer  NOT NULL,
    orders      integer  NOT NULL,
    revenue     numeric(14,2) NOT NULL,
    cost        numeric(14,4) NOT NULL,
    PRIMARY KEY (campaign_id, phase, day)
);
-- The dashboard's today / yesterday and monthly sums: a range of this index per shop.
CREATE INDEX report_days_shop_day ON report_days (shop_id, day);

-- One row per campaign phase: the sums of its days, its name, the days it sent on, and the ledger's
-- decisions per state and reason ({"sent": n, "failed:provider_rejected": n, ...}).
CREATE TABLE report_phases (
    campaign_id bigint   NOT NULL,
    phase       smallint NOT NULL,
    shop_id     text     NOT NULL,
    name        text     NOT NULL,
    first_day   date,
    last_day    date,
    sent        integer  NOT NULL,
    failed      integer  NOT NULL,
    reached     integer  NOT NULL,
    replied     integer  NOT NULL,
    converted   integer  NOT NULL,
    orders      integer  NOT NULL,
    revenue     numeric(14,2) NOT NULL,
    cost        numeric(14,4) NOT NULL,
    states      jsonb    NOT NULL,
    PRIMARY KEY (campaign_id, phase)
);

-- One row per campaign: its totals. reached, replied and converted count each buyer once across the
-- campaign's phases (not the sum of the phases'), the rest are sums. refreshed_at: when the row was
-- last materialised; attributed: whether the attribution step ran first.
CREATE TABLE report_campaigns (
    campaign_id  bigint PRIMARY KEY,
    shop_id      text    NOT NULL,
    sent         integer NOT NULL,
    failed       integer NOT NULL,
    reached      integer NOT NULL,
    replied      integer NOT NULL,
    converted    integer NOT NULL,
    orders       integer NOT NULL,
    revenue      numeric(14,2) NOT NULL,
    cost         numeric(14,4) NOT NULL,
    attributed   boolean NOT NULL,
    refreshed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX report_campaigns_shop ON report_campaigns (shop_id);

-- The inquiry rate counts a reached buyer's reply to the shop after the campaign first reached them,
-- whether or not the event names the campaign: the refresh reads the shop's replies of the reached
-- buyers. A partial index over replies only: ingesting every other kind of event never touches it.
CREATE INDEX outcome_events_replies ON outcome_events (shop_id, consumer_id, occurred_at) WHERE kind = 'replied';
