"""The reconciliation gauge sees what it claims to: when inserts report success but write
nothing (--fail-insert-mode drop: acknowledged rows ClickHouse never got, the loss verify
exists to catch), the sink's own `pipeline_reconcile_diff_*` over settled windows goes
negative and a `reconcile_differs` error names the range; the same run without the fault
reads 0 (tests/integration/test_metrics_live.py)."""

from __future__ import annotations

from tests.conftest import Pipeline
from tests.helpers import log_events, wait_for
from tests.metrics_support import free_port, scrape, total

TABLES = ("rollup_minute", "rollup_hour")


def test_dropped_inserts_show_as_a_reconciliation_difference(pipeline: Pipeline) -> None:
    p = pipeline
    # 2 simulated hours from 00:50: minute windows and the 00:00 and 01:00 hours settle
    p.gen("--events", "3000", "--event-time-rate", "0.4", "--partitions", "2", "--start-time", "2026-01-01T00:50:00Z")
    p.processor("--batch-max-wait", "0.1s", "--poll-records", "100")
    port = free_port()
    # groups alternate between the tables: every 3rd insert hits both
    sink = p.start("app.sink", "--batch-rows", "1", "--batch-max-wait", "0.1s", "--reconcile-every", "0.3s",
                   "--fault-injection", "--fail-insert-every", "3", "--fail-insert-mode", "drop",
                   "--metrics-port", str(port))
    wait_for(lambda: p.alive(sink) and p.pending_batches() == 0, 120, "the sink to acknowledge every batch")

    def differs() -> dict[str, float] | None:
        p.alive(sink)
        s = scrape(port)
        diffs = {t: total(s, "pipeline_reconcile_diff_events", table=t) for t in TABLES}
        return diffs if all(d < 0 for d in diffs.values()) else None
    diffs = wait_for(differs, 60, "the reconciliation to see the dropped rows in both tables")
    s = scrape(port)
    assert total(s, "pipeline_sink_injected_faults_total", mode="drop") > 0
    for t in TABLES:
        assert total(s, "pipeline_reconcile_diff_windows", table=t) < 0, t
        assert total(s, "pipeline_reconcile_samples_total", table=t, outcome="differ") > 0, t
    logged = log_events(p.log(sink), "reconcile_differs")
    assert {e["table"] for e in logged} == set(TABLES), logged[-2:]
    print(f"reconcile diff_events with every 3rd insert dropped: {diffs}")
