"""Ground truth and diff: recompute the rollups and DLQ counts from the input log and compare
them with ClickHouse FINAL and the ledger.

validity.py (contract §2) and truth.py (windows, §3) are pure and stdlib only: verify's own
copy of the rules, on purpose (it shares no code with what it checks); read_log.py reads Kafka, compare.py
reads ClickHouse / the ledger and diffs, render.py formats, cli.py is `python -m app.verify`.
"""
