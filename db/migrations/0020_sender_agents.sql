-- The sender agent of a chat message (R-PH-5, channels/chat.py).
--
-- Each delivery records the agent it went out from (NULL: no agent, the shop's own account,
-- or a delivery not sent), and an outbox batch carries the agents parallel to consumer_ids
-- (NULL: the batch has no agents), so the chat platform draining it sends each message from
-- its agent. ADD COLUMN without a default rewrites nothing.
ALTER TABLE deliveries ADD COLUMN sender_agent text;
ALTER TABLE outbox ADD COLUMN senders text[];
-- NOT VALID: existing batches (all without agents) are not scanned; new rows are checked.
ALTER TABLE outbox ADD CHECK (senders IS NULL OR cardinality(senders) = cardinality(consumer_ids)) NOT VALID;
-- Stored like the batch's other arrays (0004): lz4 where the server has it, else out of line
-- uncompressed, never pglz.
DO $$
BEGIN
    IF 'lz4' = ANY ((SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression')::text[]) THEN
        ALTER TABLE outbox ALTER COLUMN senders SET COMPRESSION lz4;
    ELSE
        ALTER TABLE outbox ALTER COLUMN senders SET STORAGE EXTERNAL;
    END IF;
END
$$;
