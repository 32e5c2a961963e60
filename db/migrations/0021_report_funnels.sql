-- The funnel of a campaign whose kind has one (R-ED-5, K-EDM): potential -> reached -> handshake ->
-- ordered -> repurchased, materialised by `sluice.reports.refresh` with the rest of the report, in the
-- same transaction (docs/reports.md, "The funnel").
--
-- One row per phase (a K-EDM phase is one channel: the in-site message, the email) and one row for the
-- whole campaign, phase -1, where each buyer counts once across the phases. The counts:
--   potential   : the audience the refresh matched, before any exclusion (audience_refreshes.matched),
--                 the largest day; the campaign: the largest of its phases
--   reached     : distinct buyers with a sent delivery
--   handshake   : reached buyers who replied inside the window after their reach
--   ordered     : reached buyers with an attributed order
--   repurchased : ordered buyers who bought again (another attributed order) after their first one,
--                 inside the window of their reach
-- A kind without a funnel has no rows: the report's `funnel` is null.
CREATE TABLE report_funnels (
    campaign_id bigint   NOT NULL,
    phase       smallint NOT NULL CHECK (phase >= -1),
    shop_id     text     NOT NULL,
    channel     text,
    potential   integer  NOT NULL,
    reached     integer  NOT NULL,
    handshake   integer  NOT NULL,
    ordered     integer  NOT NULL,
    repurchased integer  NOT NULL,
    PRIMARY KEY (campaign_id, phase)
);
