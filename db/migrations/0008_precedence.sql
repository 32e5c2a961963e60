-- Precedence between a shop's campaigns (R-RP-9): a merchant's custom repurchase task holds the
-- shop's repurchase group while it runs; the algorithmic ones of the group send nothing meanwhile.
--
-- precedence_group: the group the campaign belongs to (NULL: none); takes_precedence: it holds the
-- group while its state is a running one (workflows/precedence.py, HOLDING_STATES). Written with the
-- campaigns row at start, from the kind (Kind.precedence).
ALTER TABLE campaigns
    ADD COLUMN precedence_group text,
    ADD COLUMN takes_precedence boolean NOT NULL DEFAULT false;

-- The yielding campaigns' probe (activities/precedence.py, HOLDER): the shop's holders only, a few
-- rows per shop at most.
CREATE INDEX campaigns_precedence_holders ON campaigns (shop_id, precedence_group) WHERE takes_precedence;
