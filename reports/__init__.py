"""Campaign reports (R-REP-1) and the shop dashboard (R-REP-2), computed set-based in SQL.

`refresh.refresh(conn, campaign_db_id)` materialises a campaign's report
tables (the workflow's report activity runs it after every phase day; the API
and CLI on demand); `queries` reads them, and the per-buyer detail from the
ledger. Definitions: docs/reports.md.
"""
