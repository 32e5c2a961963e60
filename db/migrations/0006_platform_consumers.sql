-- Recipients who are not (yet) customers of the shop, and the shop's tags (R-RP-3).
--
-- consumers gets the platform's own contacts and per-channel opt-outs: an
-- audience that reaches consumers without a shop_customers row (the
-- platform's industry-value audience, audiences/__init__.py) addresses them
-- here, and leaves out whoever opted out of the channel at the platform or
-- has no usable contact for it (R-EXC-1). The columns mirror shop_customers'
-- so one definition of a channel's contact and opt-out reads either row
-- (activities/audience.py, CHANNELS). When the shop's row exists it decides
-- alone, as for every other audience.
ALTER TABLE consumers
    ADD COLUMN chat_id     text,
    ADD COLUMN phone       text,
    ADD COLUMN email       text,
    ADD COLUMN phone_valid boolean NOT NULL DEFAULT true,
    ADD COLUMN email_valid boolean NOT NULL DEFAULT true,
    ADD COLUMN unsub_chat  boolean NOT NULL DEFAULT false,  -- opted out at the platform, per channel
    ADD COLUMN unsub_sms   boolean NOT NULL DEFAULT false,
    ADD COLUMN unsub_email boolean NOT NULL DEFAULT false,
    ADD COLUMN unsub_inbox boolean NOT NULL DEFAULT false,
    ADD COLUMN timezone    text;                            -- the consumer's own, when known

-- The shop's tags on its customer (R-RP-3: tags narrow any audience). Never
-- NULL, so "has none of" is the exact complement of "has any of".
ALTER TABLE shop_customers ADD COLUMN tags text[] NOT NULL DEFAULT '{}';

-- The tag narrowing reads "the shop's customers holding any of these tags"
-- (`t.shop_id = $1 AND t.tags && $n`): a GIN over (shop_id, tags) answers it
-- with a bitmap scan of the matching entries only, instead of the shop's
-- whole primary-key range. btree_gin gives GIN the equality on shop_id (a
-- trusted extension: no superuser needed). A GIN over tags alone would
-- return the tag's holders of every shop. Only changes of shop_id or tags
-- touch the index: opt-out and contact updates stay HOT.
CREATE EXTENSION IF NOT EXISTS btree_gin;
CREATE INDEX shop_customers_tags ON shop_customers USING gin (shop_id, tags);

-- The industry-value audience reads the shops of one industry.
CREATE INDEX shops_industry ON shops (industry);
