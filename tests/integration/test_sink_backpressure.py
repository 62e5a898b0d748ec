"""Backpressure: with the sink stopped for 60 s while the generator keeps producing at a
fixed rate, the processor pauses its partitions instead of buffering — its RSS stays
within a bound (read from /proc), its committed offsets stop while Kafka's grow, it
reports paused partitions — and once the sink starts, everything lands exactly once."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

from tests.conftest import Pipeline
from tests.helpers import free_port, log_events, observe_for, wait_for

RATE = 4_000                # events/s, open model
STOPPED_S = 60              # the sink is not running for at least this long
PAUSE_DEADLINE_S = 50       # the processor pauses before this (10-24 s seen, the latter beside a 3-broker test)
MIN_PAUSED_S = 30           # ... and is then watched, paused, for at least this long
EVENTS = RATE * 68          # the generator runs >= 18 s into the pause
MAX_PENDING_ROWS = 30_000
RSS_BOUND_MB = 320          # the configured bound asserted while paused (measured: ~155 MB)
RSS_GROWTH_MB = 32          # ... and how much RSS may grow while the partitions are paused


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def scrape(port: int) -> dict[str, float]:
    """Unlabelled gauges, and labelled ones summed over their labels."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, value = line.rpartition(" ")
        out[name.split("{")[0]] = out.get(name.split("{")[0], 0.0) + float(value)
    return out


def paused(port: int) -> dict[str, float] | None:
    """The processor's metrics once it reports a paused partition."""
    try:
        m = scrape(port)
    except OSError:
        return None  # metrics endpoint not up yet
    return m if m.get("pipeline_paused_partitions", 0) >= 1 else None


def test_sink_stopped_for_60s_processor_pauses_with_bounded_memory(pipeline: Pipeline) -> None:
    p = pipeline
    gen = p.start("app.gen", "--seed", "3", "--events", str(EVENTS), "--rate", str(RATE), "--partitions", "3",
                  "--accounts", "20000", "--late-fraction", "0.01")
    port = free_port()
    processor = p.start("app.processor", "--batch-max-wait", "0.2s", "--max-pending-rows",
                        str(MAX_PENDING_ROWS), "--metrics-port", str(port), "--log-level", "info")
    started = time.monotonic()
    # when the pause comes depends on the machine's speed: wait for it (a state), then watch
    # the pause itself for a fixed time (its duration is the subject)
    at_pause = wait_for(lambda: p.alive(processor, gen) and paused(port), PAUSE_DEADLINE_S,
                        "the processor to pause its partitions (pending rows over --max-pending-rows, sink stopped)",
                        interval=0.5, detail=lambda: p.log(processor)[-3000:])
    paused_at = time.monotonic() - started
    rss_at_pause = rss_max = rss_mb(processor.pid)
    committed_while_paused: list[int] = []
    for _ in observe_for(max(STOPPED_S - paused_at, MIN_PAUSED_S), interval=1.0):
        p.alive(processor)
        m = scrape(port)
        rss_max = max(rss_max, rss_mb(processor.pid))
        committed_while_paused.append(p.committed_offsets())
        assert m["pipeline_paused_partitions"] == 3, "resumed while the sink was stopped"
    assert rss_max <= RSS_BOUND_MB, f"processor RSS {rss_max:.0f} MB > bound {RSS_BOUND_MB} MB"
    assert rss_max - rss_at_pause <= RSS_GROWTH_MB, f"RSS grew {rss_max - rss_at_pause:.0f} MB while paused"
    m = scrape(port)
    assert m["pipeline_pending_rows"] > MAX_PENDING_ROWS
    # the records wait in Kafka (>= 10 s of input arrived during the pause and was not read) ...
    grown = m["pipeline_consumer_lag_records"] - at_pause["pipeline_consumer_lag_records"]
    assert grown > RATE * 10, f"lag grew by {grown:.0f} records while paused (paused at {paused_at:.1f} s)"
    # ... not in the processor: once paused it commits at most the checkpoint of what it had
    # read before pausing, then its offsets stay put (sampled every second for the rest of the stop)
    assert len(committed_while_paused) >= MIN_PAUSED_S // 2 and len(set(committed_while_paused)) <= 2, \
        committed_while_paused
    assert p.committed_offsets() == committed_while_paused[-1]
    assert log_events(p.log(processor), "backpressure_paused")

    sink = p.start("app.sink", "--until-idle", "--batch-rows", "10000")
    assert gen.wait(timeout=60) == 0, p.log(gen)[-3000:]
    wait_for(lambda: p.alive(processor, sink) and p.committed_offsets() == EVENTS, 180,
             "the processor to catch up once the sink ran")
    processor.terminate()  # the --until-end run below marks the run finished for the sink
    assert processor.wait(timeout=30) == 0, p.log(processor)[-3000:]
    assert log_events(p.log(processor), "backpressure_resumed")
    p.processor()
    assert sink.wait(timeout=60) == 0, p.log(sink)[-3000:]
    res = p.verify()
    assert res.returncode == 0 and "EXACT" in res.stdout, res.stdout[-4000:]
