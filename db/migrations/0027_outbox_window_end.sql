-- outbox.window_end: the instant after which the batch's messages may no longer go out (R-WIN-1).
--
-- The send path writes it with the batch (activities/send.py, the `o` CTE of `_write_sql`): the slice's
-- window_end, the day's 22:00 shop-local, or 00:00 of the next day in a later pass for recipients in their own
-- window. The outbox dispatcher (channels/dispatcher.py) hands no part of a batch to a provider at or after
-- it: a batch held back by a throttled or failing provider is settled `not_sent`
-- (`window_closed_before_dispatch`) instead of going out at night, and gives back what its deliveries held.
-- NULL for the batches written before this migration, and for those OutboxChannel.send writes: no end known,
-- handed off whenever claimed, as before. Nullable, no default: ADD COLUMN rewrites nothing.
ALTER TABLE outbox ADD COLUMN window_end timestamptz;
