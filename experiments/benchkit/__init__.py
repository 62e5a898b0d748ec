"""Pieces of `make bench` (`python -m experiments.bench`): scopes, child processes, ledger reads,
latency and lag arithmetic, anchors, reporting. Only the app's public entry points
(`python -m app.…`) and its ledger tables are used."""
