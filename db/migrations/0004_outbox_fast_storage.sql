-- The outbox batch's arrays (thousands of ids and addresses) were compressed
-- with pglz when stored: 2.5% of PostgreSQL's CPU in the caps benchmark for a
-- row a dispatcher reads once and then deletes. Where the server has lz4 it
-- compresses them (a fraction of pglz's cost); where it has not (the embedded
-- PostgreSQL 18 wheel) they are stored out of line uncompressed: more WAL
-- bytes, which cost far less CPU than pglz.
DO $$
BEGIN
    IF 'lz4' = ANY ((SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression')::text[]) THEN
        ALTER TABLE outbox ALTER COLUMN consumer_ids SET COMPRESSION lz4,
                           ALTER COLUMN addresses SET COMPRESSION lz4;
    ELSE
        ALTER TABLE outbox ALTER COLUMN consumer_ids SET STORAGE EXTERNAL,
                           ALTER COLUMN addresses SET STORAGE EXTERNAL;
    END IF;
END
$$;
