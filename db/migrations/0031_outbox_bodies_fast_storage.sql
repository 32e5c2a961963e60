-- The per-recipient columns added to the outbox batch since 0004 (bodies: each recipient's own text,
-- R-RP-5/R-RP-10; senders: each message's sender agent, R-PH-5) get the storage 0004 gave the batch's ids
-- and addresses: lz4 where the server has it, else out of line uncompressed. With pglz, a K-REPURCHASE
-- chunk's 2,000 rendered texts (~225 KB) cost 5.3-6.3 ms per batch insert against 2.3-2.8 ms with lz4 and
-- 2.4 ms uncompressed (PostgreSQL 15, 100 inserts each, the same arrays): ~1.4 s of PostgreSQL CPU in a
-- 1,000,000-recipient day.
DO $$
BEGIN
    IF 'lz4' = ANY ((SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression')::text[]) THEN
        ALTER TABLE outbox ALTER COLUMN bodies SET COMPRESSION lz4,
                           ALTER COLUMN senders SET COMPRESSION lz4;
    ELSE
        ALTER TABLE outbox ALTER COLUMN bodies SET STORAGE EXTERNAL,
                           ALTER COLUMN senders SET STORAGE EXTERNAL;
    END IF;
END
$$;
