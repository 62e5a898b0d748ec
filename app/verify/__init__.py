"""Ground truth and diff: recompute the rollups and DLQ counts from the input log and compare
them with ClickHouse FINAL and the ledger.

truth.py is pure (validity and windows, stdlib only), read_log.py reads Kafka, compare.py
reads ClickHouse / the ledger and diffs, render.py formats, cli.py is `python -m app.verify`.
"""
