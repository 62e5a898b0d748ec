"""Anchor (a): the raw confluent-kafka consume rate of a topic, no processing at all.

`consume(10000)` + `.value()` of every record, partitions assigned directly at their
beginning (no consumer-group join), until every partition reaches the end offsets seen at
start. This is the ceiling for any single Python consumer of the topic on this machine:
whatever a processor does per record comes on top of it.

Rate = records / (last record returned - first record returned); the connection set-up
before the first record is excluded, as it is for the pipeline's own rate.

Prints one JSON line: {"events", "seconds", "events_per_s", "bytes", "runs": [...]}; with
--repeat N the figures are the median run. With --processes N, N consumers (processes) read
disjoint sets of partitions at once, as N processor processes would: the rate is all their
records / (last record of any - first record of any). That is the anchor for N processors.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

# The same fetch sizes as the processor's consumer (app/core/kafka.py), so the anchor
# measures the client, not a different configuration.
FETCH_CONFIG = {
    "fetch.max.bytes": 64 * 1024 * 1024,
    "max.partition.fetch.bytes": 8 * 1024 * 1024,
    "queued.max.messages.kbytes": 256 * 1024,
}


def end_offsets(consumer: Consumer, topic: str) -> dict[int, int]:
    md = consumer.list_topics(topic, timeout=10)
    parts = sorted(md.topics[topic].partitions)
    return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}


def consume_once(bootstrap: str, topic: str, poll_records: int, part: tuple[int, int] = (0, 1)) -> dict[str, float]:
    """One consumer of the partitions p with p % part[1] == part[0]."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"raw-anchor-{time.time_ns()}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "log_level": 0,
            **FETCH_CONFIG,
        }
    )
    try:
        ends = {p: e for p, e in end_offsets(consumer, topic).items() if p % part[1] == part[0]}
        target = sum(ends.values())
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        seen = 0
        nbytes = 0
        first = last = 0.0
        first_at = last_at = 0.0
        deadline = time.monotonic() + 600
        while seen < target and time.monotonic() < deadline:
            msgs = consumer.consume(poll_records, timeout=0.5)
            if not msgs:
                continue
            if not first:
                first, first_at = time.monotonic(), time.time()
            for m in msgs:
                if m.error() is not None:
                    continue
                v = m.value()
                if v is not None:
                    nbytes += len(v)
                seen += 1
            last, last_at = time.monotonic(), time.time()
        seconds = max(last - first, 1e-9)
        return {
            "events": seen,
            "seconds": round(seconds, 4),
            "events_per_s": round(seen / seconds, 1),
            "bytes": nbytes,
            "complete": seen >= target,
            "first_at": first_at,
            "last_at": last_at,
        }
    finally:
        consumer.close()


def consume_parallel(args: argparse.Namespace) -> dict[str, float]:
    """--processes N consumers at once, each a child process of this script."""
    n = args.processes
    children = [subprocess.Popen([sys.executable, __file__, "--bootstrap-servers", args.bootstrap_servers,
                                  "--topic", args.topic, "--repeat", "1", "--poll-records", str(args.poll_records),
                                  "--part", f"{i}/{n}"], stdout=subprocess.PIPE, text=True) for i in range(n)]
    outs = []
    for c in children:
        out, _ = c.communicate(timeout=900)
        outs.append(json.loads(out.strip().splitlines()[-1]))
    seen = sum(int(o["events"]) for o in outs)
    active = [o for o in outs if o["events"]]
    seconds = max(max(o["last_at"] for o in active) - min(o["first_at"] for o in active), 1e-9) if active else 1e-9
    return {"events": seen, "seconds": round(seconds, 4), "events_per_s": round(seen / seconds, 1),
            "bytes": sum(int(o["bytes"]) for o in outs), "complete": all(o["complete"] for o in outs),
            "processes": n}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap-servers", default="127.0.0.1:9092", help="Kafka brokers")
    ap.add_argument("--topic", required=True, help="topic to read from the beginning")
    ap.add_argument("--repeat", type=int, default=3, help="runs; the median run is reported (default 3)")
    ap.add_argument("--poll-records", type=int, default=10_000, help="records per consume() (default 10000)")
    ap.add_argument("--processes", type=int, default=1, help="consumer processes at once (default 1)")
    ap.add_argument("--part", default="0/1", help="I/N: read the partitions p with p %% N == I (default 0/1)")
    args = ap.parse_args()
    i, n = (int(x) for x in args.part.split("/"))
    if args.processes > 1:
        runs = [consume_parallel(args) for _ in range(args.repeat)]
    else:
        runs = [consume_once(args.bootstrap_servers, args.topic, args.poll_records, (i, n))
                for _ in range(args.repeat)]
    median = statistics.median(r["events_per_s"] for r in runs)
    best = min(runs, key=lambda r: abs(r["events_per_s"] - median))
    print(json.dumps({**best, "events_per_s": median, "runs": [r["events_per_s"] for r in runs]}))
    return 0 if all(r["complete"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
