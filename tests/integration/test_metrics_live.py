"""Issue 11, acceptance 1: scrape every long-running process during a real run (gen,
processor, sink against real Kafka, Postgres and chDB) and check that every metric its
stage declares exists, that each counter and histogram moves, that a process exports its
own stage's metrics only, and that the numbers tell the truth: reads per real partition,
folded = read - invalid - late per kind, dedup hits on replayed inserts, the end-to-end
latency histogram, and the reconciliation gauge reading 0 over settled windows."""

from __future__ import annotations

import subprocess
from itertools import pairwise

from app.core.metrics import stage_metric_names
from tests.conftest import Pipeline
from tests.helpers import wait_for
from tests.metrics_support import Samples, families, free_port, label_values, sample_name, scrape, total

PARTITIONS = 3
EVENTS = 6000

# Counters and histograms this run cannot move, and why.
STILL = {
    "processor": {"pipeline_partitions_fenced"},   # one instance: nobody fences it (test_rebalance_fencing.py)
    "sink": set(),
    "gen": set(),
}


def start_run(pipeline: Pipeline, ports: dict[str, int]) -> dict[str, subprocess.Popen[bytes]]:
    procs = {
        "processor": pipeline.start("app.processor", "--batch-max-wait", "0.3s", "--snapshot-interval", "1s",
                                    "--max-pending-rows", "50", "--metrics-port", str(ports["processor"])),
        # every 4th insert writes all its blocks, then fails: the retry's blocks are all duplicates
        "sink": pipeline.start("app.sink", "--batch-max-wait", "0.3s", "--reconcile-every", "0.5s",
                               "--fault-injection", "--fail-insert-every", "4", "--fail-insert-mode", "after",
                               "--metrics-port", str(ports["sink"])),
    }
    wait_for(lambda: pipeline.alive(*procs.values()) and all(scrape(ports[s]) for s in procs), 60,
             "the processor's and the sink's metrics endpoints")
    # 10 simulated minutes from 00:55 UTC: minute windows and the 00:00 hour window settle
    procs["gen"] = pipeline.start("app.gen", "--events", str(EVENTS), "--rate", "300", "--event-time-rate", "10",
                                  "--partitions", str(PARTITIONS), "--late-fraction", "0.05",
                                  "--invalid-fraction", "0.02", "--start-time", "2026-01-01T00:55:00Z",
                                  "--metrics-port", str(ports["gen"]))
    return procs


def moved(first: Samples, last: Samples, stage: str) -> list[str]:
    kinds = STAGE_KINDS[stage]
    return [f for f, kind in kinds.items() if kind in ("counter", "histogram") and f not in STILL[stage]
            and not total(last, sample_name(f, kind)) > total(first, sample_name(f, kind))]


STAGE_KINDS: dict[str, dict[str, str]] = {}


def kinds(port: int, stage: str) -> dict[str, str]:
    """The stage's own metric families as the live endpoint declares them: name -> type."""
    return {f: k for f, k in families(port).items() if f in stage_metric_names(stage)}


def test_every_stage_metric_exists_and_moves_during_a_real_run(pipeline: Pipeline) -> None:
    ports = {s: free_port() for s in ("gen", "processor", "sink")}
    procs = start_run(pipeline, ports)
    first = {s: scrape(ports[s]) for s in ("processor", "sink")}  # before any record
    first["gen"] = wait_for(lambda: pipeline.alive(procs["gen"]) and scrape(ports["gen"]), 30,
                            "the generator's metrics endpoint")
    last_gen = wait_for(lambda: pipeline.alive(procs["gen"]) and (
        s := scrape(ports["gen"])) and total(s, "pipeline_gen_events_total") > total(
        first["gen"], "pipeline_gen_events_total") and s, 60, "the generator's events counter to move")
    STAGE_KINDS["gen"] = kinds(ports["gen"], "gen")
    assert procs["gen"].wait(timeout=120) == 0, pipeline.log(procs["gen"])[-3000:]

    def settled_and_checked() -> Samples | None:
        pipeline.alive(procs["processor"], procs["sink"])
        s = scrape(ports["sink"])
        ok = all(total(s, "pipeline_reconcile_checked_events", table=t) > 0 for t in ("rollup_minute", "rollup_hour"))
        return s if ok and total(s, "pipeline_sink_dedup_blocks_total") > 0 else None
    last = {"sink": wait_for(settled_and_checked, 120,
                             "the sink to reconcile settled windows of both tables and to count dedup hits"),
            "processor": wait_for(lambda: (s := scrape(ports["processor"])) and total(
                s, "pipeline_events_read_total") == EVENTS and s, 60, "the processor to read every record"),
            "gen": last_gen}
    for stage in ("processor", "sink"):
        STAGE_KINDS[stage] = kinds(ports[stage], stage)

    for stage in ("processor", "sink"):
        declared = set(stage_metric_names(stage))
        exported = set(families(ports[stage]))
        assert declared <= exported, f"{stage} does not export {sorted(declared - exported)}"
        others = {n for o in ("gen", "processor", "sink", "backfill") if o != stage for n in stage_metric_names(o)}
        assert not (exported & others) - declared, f"{stage} exports another stage's metrics: " \
                                                   f"{sorted((exported & others) - declared)}"
        empty = [f for f, k in STAGE_KINDS[stage].items() if not last[stage].get(sample_name(f, k))]
        assert not empty, f"{stage}: metrics with no series after a real run: {empty}"
        assert not moved(first[stage], last[stage], stage), f"{stage}: did not move: {moved(first[stage], last[stage], stage)}"
        assert total(last[stage], "pipeline_process_resident_memory_bytes") > 10_000_000
    assert not moved(first["gen"], last["gen"], "gen")
    assert "pipeline_gen_behind_seconds" in last["gen"]

    p, s = last["processor"], last["sink"]
    # reads per real partition, never "all"
    assert label_values(p, "pipeline_events_read_total", "partition") == {str(i) for i in range(PARTITIONS)}
    # every record classified once: folded into a kind, or invalid, or too late for the kind
    invalid = total(p, "pipeline_dlq_records_total", reason="invalid")
    assert invalid > 0
    for kind in ("minute", "hour"):
        late = total(p, "pipeline_dlq_records_total", reason="late", window_kind=kind)
        assert total(p, "pipeline_events_folded_total", window_kind=kind) == EVENTS - invalid - late, kind
    assert total(p, "pipeline_owned_partitions") == PARTITIONS
    assert label_values(p, "pipeline_watermark_lag_seconds", "partition") == {str(i) for i in range(PARTITIONS)}
    # ClickHouse suppressed every block of every replayed insert (mode "after" wrote them all)
    assert total(s, "pipeline_sink_replays_total") > 0
    assert total(s, "pipeline_sink_dedup_blocks_total") >= total(s, "pipeline_sink_injected_faults_total")
    assert total(s, "pipeline_clickhouse_duplicated_inserted_blocks_total") > 0
    # the reconciliation: settled windows compared, no difference
    for t in ("rollup_minute", "rollup_hour"):
        for what in ("events", "amount", "windows"):
            assert total(s, f"pipeline_reconcile_diff_{what}", table=t) == 0, (t, what)
    assert total(s, "pipeline_reconcile_samples_total", outcome="differ") == 0
    # the end-to-end histogram counts input records (per table) and its buckets are cumulative
    e2e = s["pipeline_e2e_seconds_count"]
    assert sum(e2e.values()) > 0
    buckets = sorted(((float(dict(ls)["le"]), v) for ls, v in s["pipeline_e2e_seconds_bucket"].items()
                      if dict(ls)["table"] == "rollup_minute"))
    assert all(a[1] <= b[1] + 1e-9 for a, b in pairwise(buckets)), buckets
