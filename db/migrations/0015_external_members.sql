-- Up-converted external members (R-AQ-1): the shop's members outside the platform (its own
-- site, its stores, a loyalty programme) whom the platform's member-connect service matched to
-- platform consumers. They are the shop's members elsewhere, not members of its platform shop
-- (`shop_customers.is_member`) and mostly not its customers here: K-ACQUIRE's `external_members`
-- audience reaches them through the platform's row (`consumers`) when the shop has none.
--
-- matched_at: when the match was made; an audience reads only matches before its snapshot
-- instant (R-OC-5). The audience reads one shop's range of the primary key.
CREATE TABLE external_members (
    shop_id     text        NOT NULL REFERENCES shops,
    consumer_id bigint      NOT NULL REFERENCES consumers,
    matched_at  timestamptz NOT NULL,
    PRIMARY KEY (shop_id, consumer_id)
);
