"""The exactly-once proof: one sustained run with every fault at once (issue 10, brief §10
experiment 2). `python -m experiments.chaos --help`; the report lands in docs/chaos/."""
