"""What happened after a send: outcome events in, attribution of orders, the control group's lift.

- `events`: the outcome event kinds and their shape (one definition, R-EV-1);
- `ingest`: a batch of events written set-based and idempotent on the event id (R-EV-2, R-EV-3),
  with their effects on orders and opt-outs; `api` (POST /events) and `cli` (`sluice events`) call it;
- `attribution`: orders counted for the last phase that reached the buyer, inside its window (R-ATT-1);
- `holdout`: the reproducible control group the send path holds out, and the lift against it (R-HO-1).

docs/outcomes.md explains the choices.
"""
