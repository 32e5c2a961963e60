-- Fatigue counted per channel, on the consumer's own natural day (R-FAT-2, R-FAT-3, R-FAT-DAY).
--
-- Each channel has its own caps (schemas/fatigue.py), so each counts on its own row: a consumer's
-- counters of a day are one row per channel they were messaged on, the key (consumer_id, day,
-- channel). The row stays the consumer's mutex for that channel and day: every change first locks
-- it, in ascending consumer id (activities/send.py, _RESERVE and release_reservations). Every send
-- still updates only non-key columns (sent, shops, per_shop, per_template), so with the table's
-- fillfactor 60 the day's later sends stay HOT updates: no new index entry.
--
-- Rows counted before this migration were counted over all channels together; they become the
-- chat rows (the channel whose caps they were counted with). ADD COLUMN with a constant default
-- rewrites nothing; the primary key is rebuilt once.
--
-- deliveries.fatigue_day is now each recipient's own day (their zone when known, else the
-- platform's), computed per recipient when the chunk is decided.
ALTER TABLE fatigue_day ADD COLUMN channel text NOT NULL DEFAULT 'chat';
ALTER TABLE fatigue_day DROP CONSTRAINT fatigue_day_pkey;
ALTER TABLE fatigue_day ADD PRIMARY KEY (consumer_id, day, channel);
COMMENT ON COLUMN deliveries.fatigue_day IS
    'the recipient''s natural day the caps were counted on: their zone when known, else the platform''s (R-FAT-DAY)';

-- The views gain the channel (CREATE OR REPLACE may add columns only at the end).
CREATE OR REPLACE VIEW fatigue_shop_day AS
SELECT f.consumer_id, p.key AS shop_id, f.day, p.value::int AS sent, f.channel
FROM fatigue_day f CROSS JOIN LATERAL jsonb_each_text(f.per_shop) AS p;

CREATE OR REPLACE VIEW fatigue_template AS
SELECT f.consumer_id, split_part(p.key, '/', 1) AS shop_id, split_part(p.key, '/', 2) AS template_group,
       f.day, p.value::int AS sent, f.channel
FROM fatigue_day f CROSS JOIN LATERAL jsonb_each_text(f.per_template) AS p;
