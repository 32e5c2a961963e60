-- API keys, one shop each (issue 4). A key is "sk_<prefix>_<secret>": the
-- prefix (12 hex digits) is public and finds the row; the secret is 32 random
-- bytes (base64url) of which only the SHA-256 is kept. A salt or a slow hash
-- buys nothing for a 256-bit random secret; it is never stored or logged.
CREATE TABLE api_keys (
    prefix        text PRIMARY KEY CHECK (prefix ~ '^[0-9a-f]{12}$'),
    shop_id       text NOT NULL REFERENCES shops,
    secret_sha256 bytea NOT NULL CHECK (length(secret_sha256) = 32),
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz
);
CREATE INDEX api_keys_shop ON api_keys (shop_id);
