-- Loading a real shop's data (ingest/): idempotent keys, and the chat agents (R-PH-5).
--
-- Every loaded record has a key, so a resent batch finds its rows and changes nothing
-- (ingest/records.py). Behaviour events had none: the client names each event
-- (`event_id`, its own id for it) and the pair (shop_id, event_id) is unique. Events
-- written without an id (the seed, older rows) keep NULL, which never conflicts.
ALTER TABLE behaviour_events ADD COLUMN event_id text;
CREATE UNIQUE INDEX behaviour_events_key ON behaviour_events (shop_id, event_id);

-- The shop's chat agents and whether each is online now (R-PH-5: the sender of a chat
-- message is an agent of a chosen set, preferably the one who last served the customer).
CREATE TABLE agents (
    shop_id    text    NOT NULL REFERENCES shops,
    agent_id   text    NOT NULL,
    name       text    NOT NULL,
    online     boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (shop_id, agent_id)
);

-- The agent who last served the customer (one row per customer of the shop).
CREATE TABLE customer_agents (
    shop_id     text   NOT NULL,
    consumer_id bigint NOT NULL,
    agent_id    text   NOT NULL,
    served_at   timestamptz NOT NULL,
    PRIMARY KEY (shop_id, consumer_id),
    FOREIGN KEY (shop_id, agent_id) REFERENCES agents
);
