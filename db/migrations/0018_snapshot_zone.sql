-- Each recipient's zone, resolved once by the audience refresh (R-FAT-DAY, R-WIN-1).
--
-- The send path used to resolve it per recipient in every chunk: the shop's record of the
-- customer, else a primary-key probe of the platform's consumers row, then AT TIME ZONE per row.
-- That doubled the chunk read (12.0 -> 24.0 ms per 2,000 recipients at the 1M bench shop,
-- docs/benchmarks.md). The refresh now resolves it set-based (one hash join over the consumers
-- that have a zone) and stores it here; NULL means no zone is known: the platform's day, which
-- the send path computes once per chunk rather than per row.
--
-- Snapshots written before this migration have no zone: their recipients count on the
-- platform's day for the rest of that day (the next day's refresh resolves them). ADD COLUMN
-- without a default rewrites nothing.
ALTER TABLE audience_snapshots ADD COLUMN timezone text;
COMMENT ON COLUMN audience_snapshots.timezone IS
    'the recipient''s zone at the refresh: the shop''s record, else the platform''s; NULL: unknown (the platform''s day)';
