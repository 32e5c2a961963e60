-- claims: one index fewer on the send path's insert, the day in the key.
--
-- Every sent delivery with an offer inserts a claims row in the chunk's transaction (R-RP-5, R-BEN-1). It was
-- the whole-shop K-REPURCHASE day's heaviest insert (22.7 ms per 2,000 claims, quiet, 1M bench shop), with three
-- indexes to maintain: the primary key (the public offer number), the delivery's key (campaign, phase,
-- consumer, day, channel) and claims_open (campaign, day, expires_at) of the held rows for the expiry sweep.
-- The delivery's key now leads with (campaign, phase, day): the day's sweep, the day's counts per state and
-- the release of a chunk's unsent deliveries all read one day's range of it, so claims_open goes. The sweep
-- reads the day's claims once a day (a range of the key, filtered on state and expiry).
ALTER TABLE claims DROP CONSTRAINT IF EXISTS claims_campaign_id_phase_consumer_id_day_channel_key;
ALTER TABLE claims ADD CONSTRAINT claims_delivery_key UNIQUE (campaign_id, phase, day, channel, consumer_id);
DROP INDEX IF EXISTS claims_open;
