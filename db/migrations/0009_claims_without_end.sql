-- Claims without an end: K-OLDCUST's shared coupon (R-BEN-1, R-OC-9) is a claim like a countdown offer.
--
-- A delivery that carries a coupon holds one unit of its stock as a `claims` row, taken in the
-- transaction that decides it and given back (`released`) when it is not sent: a countdown offer
-- (R-RP-5) and a shared coupon alike. A shared coupon has no claim window of its own: its claims are
-- written with expires_at NULL (the unit is the recipient's for the coupon's own valid_to, which
-- the send checked at the hand-off) and stay `held`. The expiry sweep ends `held` claims whose
-- expires_at has passed, which is never true of NULL; the CHECK makes it a rule of the table: only
-- a claim with an end can expire, and only one with an end can be claimed (the claim API reads
-- a shared coupon's claim as no offer at all).
ALTER TABLE claims ADD CONSTRAINT claims_expire_only_with_an_end
    CHECK (expires_at IS NOT NULL OR state IN ('held', 'released'));
COMMENT ON COLUMN claims.expires_at IS
    'end of a countdown offer (held_at + its hours); NULL: a shared coupon, no end of its own, never expired';
