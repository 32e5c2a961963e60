-- The outbox dispatcher (channels/dispatcher.py, docs/channels.md "The outbox dispatcher").
--
-- A dispatcher claims an undispatched batch by writing its name and a lease into the row
-- (claimed with FOR UPDATE SKIP LOCKED, committed at once), hands the batch's messages to a
-- channel adapter part by part, records each part's outcomes on the deliveries, and marks the
-- batch dispatched. A batch whose claim was never released (the dispatcher died, or lost the
-- provider's answer) still names its last claimant when it is claimed again: its messages without
-- a recorded outcome are then asked of the provider by reference before anything is sent.
--
-- outbox: attempts (claims so far), claimed_by/lease_until (the claim: held until lease_until;
-- claimed_by stays set when a claim ends without knowing what the provider has), in_flight (the
-- positions in the batch's arrays of the part being handed over, committed before it leaves: what a
-- claim that ends unrecorded leaves in question), next_attempt_at (not before: the backoff after a
-- throttled or failing provider), last_error (why the last claim gave up). All nullable or
-- constant-default: ADD COLUMN rewrites nothing, and the batch's arrays (stored out of line) are
-- not copied when these change.
ALTER TABLE outbox ADD COLUMN attempts integer NOT NULL DEFAULT 0,
                   ADD COLUMN claimed_by text,
                   ADD COLUMN lease_until timestamptz,
                   ADD COLUMN in_flight int4range,
                   ADD COLUMN next_attempt_at timestamptz,
                   ADD COLUMN last_error text;

-- The claim reads one channel's undispatched batches in id order: dispatched batches stay (the
-- reports read their bodies) and leave the index.
CREATE INDEX outbox_undispatched ON outbox (channel, id) WHERE dispatched_at IS NULL;

-- deliveries: the instant the dispatcher handed the message to the provider (the request that
-- carried it left; for a message found at the provider by reference, when it was found) and the
-- reference the dispatcher recorded it under (the provider's: the SMS gateway's messageId, the
-- email's Message-ID, both derived from the delivery key; else the delivery key). dispatch_ref is
-- set on every outcome the dispatcher records (handed off, failed, unknown), handed_off_at only on
-- the handed-off ones. Both NULL for deliveries no dispatcher has settled.
ALTER TABLE deliveries ADD COLUMN handed_off_at timestamptz,
                       ADD COLUMN dispatch_ref text;
