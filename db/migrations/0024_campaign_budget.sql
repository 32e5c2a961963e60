-- R-COST-BUDGET (schemas/budget.py): a campaign's spend against its budget cap.
--
-- One row per campaign with a budget, created by its first chunk that costs something: the sum of the
-- costs of its committed deliveries (reserved, unknown, sent). The send path locks and bumps it in the
-- transaction that decides the deliveries (activities/budget.py), after the consumers' and coupons' rows
-- and before the SMS credits (the same order in every transaction); a failed delivery gives its cost
-- back in the transaction that records it. The CHECK is the cap itself: no bug can commit a spend past it.
CREATE TABLE campaign_spend (
    campaign_id  bigint PRIMARY KEY REFERENCES campaigns ON DELETE CASCADE,
    budget       numeric(14,4) NOT NULL CHECK (budget > 0),
    spent        numeric(14,4) NOT NULL DEFAULT 0 CHECK (spent >= 0),
    -- When a chunk first found a message that did not fit (the campaign ends its sending then).
    exhausted_at timestamptz,
    CHECK (spent <= budget)
);
