"""Backfill: recompute historical windows from the input log with the live rules and land
them through the ledger and the sink with a newer version (docs/backfill.md)."""
