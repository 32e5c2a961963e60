"""Loading a real shop's data: shops, customers, products, coupons, orders and their items, behaviour events,
chat agents and who last served whom (docs/data.md).

`records` holds one strict record model per kind; `kinds` where each goes and the set-based statements that
write a batch (idempotent on each record's key, all-or-nothing per batch); `files` reads CSV and JSON Lines
for `sluice load`; the API route is api/load.py.
"""
