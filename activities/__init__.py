"""Everything that does I/O: audience refresh, batch send with cap reservation, ledger closing, reports."""
