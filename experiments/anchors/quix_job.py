"""Anchor (b): Quix Streams running the pipeline's job on the same topic.

Runs in its own virtualenv (experiments/anchors/requirements-quix.txt; bench.py creates
.cache/quix-venv on demand): quixstreams 3.28.1 pins confluent-kafka < 2.13, which the
project's own environment does not have.

The job, as a Quix user would write it (contract §3 in Quix terms):
  * value JSON, timestamps from `event_time` (event time, not Kafka time);
  * invalid records (not JSON, or missing / wrongly typed fields) are dropped;
  * re-keyed by (account_id, country) with `group_by` (Quix windows are per message key;
    the input is keyed by account_id, so this goes through Quix's repartition topic);
  * tumbling 1-minute and 1-hour windows, grace = our allowed lateness (60 s), each with
    count and sum(amount), emitted when final (`.final()`: the cheaper of Quix's two
    emission modes; our pipeline emits live updates, which costs more);
  * results written to --out as JSON lines, or discarded (--out '').

--variant per-account keeps the input key (no repartition) and folds per-country counts
inside one window value per account: fewer Kafka round trips, a less idiomatic job. The
bench reports the faster of what it ran, so the ratio against Quix is conservative.

The rate: input records / (last record processed - first record consumed), with Quix's
own defaults otherwise (at-least-once, RocksDB state with changelog topics, commit every
5 s). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from datetime import timedelta
from typing import Any

from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource
from quixstreams import Application
from quixstreams.dataframe.windows.aggregations import Count, Reduce, Sum
from quixstreams.models.serializers.json import JSONDeserializer

ALLOWED_LATENESS = timedelta(seconds=60)
EVENT_TIME_END_MS = 4_102_444_800_000


class LenientJSON(JSONDeserializer):
    """JSON validated like contract §2 (ranges included); an invalid record becomes None
    (filtered out) instead of an error. An out-of-range event_time let through would move
    the watermark to the year 2100 and make every later record late."""

    def __call__(self, value: bytes, ctx: Any) -> Any:
        try:
            data = super().__call__(value, ctx)
        except Exception:
            return None
        if not isinstance(data, dict):
            return None
        account, et, amount, country = (
            data.get("account_id"),
            data.get("event_time"),
            data.get("amount"),
            data.get("country"),
        )
        if (
            type(account) is not int
            or not 0 <= account < 2**64
            or type(et) is not int
            or not 0 <= et < EVENT_TIME_END_MS
            or type(amount) is not int
            or not -(2**63) <= amount < 2**63
            or type(country) is not str
            or len(country) != 2
            or not country.isascii()
            or not country.isupper()
            or not data.get("kind")
            or data.get("event_id") in (None, "")
        ):
            return None
        return data


def quiet_late(*_: Any) -> bool:
    """Late records are dropped without a log line each (our pipeline counts them in the DLQ)."""
    return False


def event_time(value: Any, headers: Any, timestamp: int, timestamp_type: Any) -> int:
    return value["event_time"] if value is not None else timestamp


class Progress:
    """Counts input records; stops the app once every record of the topic went through."""

    def __init__(self, app: Application, total: int) -> None:
        self.app = app
        self.total = total
        self.dropped = 0
        self.through = 0
        self.first = 0.0
        self.last = 0.0

    def seen_input(self, value: Any) -> bool:
        if not self.first:
            self.first = time.monotonic()
        if value is None:
            self.dropped += 1
            self._maybe_done()
            return False
        return True

    def windowed(self, value: Any) -> None:
        # runs after re-keying, before the windows: every valid record passes here once
        self.through += 1
        self._maybe_done()

    def _maybe_done(self) -> None:
        if self.through + self.dropped >= self.total:
            self.last = time.monotonic()
            self.app.stop()


def accept_any_timestamp(bootstrap: str, input_topic: str) -> None:
    """The repartition topic carries the events' own timestamps (event time, here days in
    the past); a Kafka 4 broker refuses timestamps that far from its clock by default, so
    lift that limit on the topic Quix just created (Quix copies only retention settings)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    names = [t for t in admin.list_topics(timeout=10).topics if "repartition" in t and input_topic in t]
    if not names:
        raise SystemExit(f"quix_job: no repartition topic found for {input_topic}")
    for name in names:
        res = ConfigResource(
            ConfigResource.Type.TOPIC,
            name,
            incremental_configs=[
                ConfigEntry(key, str(2**63 - 1), incremental_operation=AlterConfigOpType.SET)
                for key in ("message.timestamp.before.max.ms", "message.timestamp.after.max.ms")
            ],
        )
        for fut in admin.incremental_alter_configs([res]).values():
            fut.result(timeout=30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap-servers", default="127.0.0.1:9092")
    ap.add_argument("--topic", required=True)
    ap.add_argument("--events", type=int, required=True, help="records in the topic (stop after all of them)")
    ap.add_argument("--state-dir", required=True, help="Quix state directory (RocksDB)")
    ap.add_argument("--out", default="", help="JSON-lines file for final windows ('' = discard)")
    ap.add_argument("--variant", choices=["group-by", "per-account"], default="group-by")
    ap.add_argument(
        "--idle-timeout",
        type=float,
        default=30.0,
        help="give up once no record arrived for this many seconds (default 30)",
    )
    ap.add_argument(
        "--timeout", type=float, default=900.0, help="give up after this many seconds (default 900)"
    )
    args = ap.parse_args()

    app = Application(
        broker_address=args.bootstrap_servers,
        consumer_group=f"quix-anchor-{time.time_ns()}",
        auto_offset_reset="earliest",
        state_dir=args.state_dir,
        loglevel="WARNING",
    )
    topic = app.topic(args.topic, value_deserializer=LenientJSON(), timestamp_extractor=event_time)
    progress = Progress(app, args.events)
    out = open(args.out, "w") if args.out else None  # noqa: SIM115

    def emit(kind: str) -> Any:
        def write(value: Any, key: Any, *_: Any) -> None:
            if out is not None:
                out.write(json.dumps({"kind": kind, "key": str(key), **value}, default=str) + "\n")

        return write

    sdf = app.dataframe(topic).filter(progress.seen_input)
    if args.variant == "group-by":
        sdf = sdf.group_by(lambda v: f"{v['account_id']}:{v['country']}", name="account_country")
        sdf = sdf.update(progress.windowed)
        for kind, size in (("minute", timedelta(minutes=1)), ("hour", timedelta(hours=1))):
            (
                sdf.tumbling_window(
                    size, grace_ms=ALLOWED_LATENESS, name=f"{kind}_window", on_late=quiet_late
                )
                .agg(event_count=Count(), sum_amount=Sum("amount"))
                .final()
                .update(emit(kind), metadata=True)
            )
    else:
        sdf = sdf.update(progress.windowed)

        def fold(acc: dict[str, list[int]], v: dict[str, Any]) -> dict[str, list[int]]:
            c = acc.get(v["country"])
            if c is None:
                acc[v["country"]] = [1, v["amount"]]
            else:
                c[0] += 1
                c[1] += v["amount"]
            return acc

        def init(v: dict[str, Any]) -> dict[str, list[int]]:
            return {v["country"]: [1, v["amount"]]}

        for kind, size in (("minute", timedelta(minutes=1)), ("hour", timedelta(hours=1))):
            (
                sdf.tumbling_window(
                    size, grace_ms=ALLOWED_LATENESS, name=f"{kind}_window", on_late=quiet_late
                )
                .agg(by_country=Reduce(reducer=fold, initializer=init))
                .final()
                .update(emit(kind), metadata=True)
            )

    if args.variant == "group-by":
        accept_any_timestamp(args.bootstrap_servers, args.topic)
    started = time.monotonic()
    watchdog = threading.Timer(args.timeout, app.stop)
    watchdog.daemon = True
    watchdog.start()
    app.run(timeout=args.idle_timeout, collect=False)
    watchdog.cancel()
    if out is not None:
        out.close()
    processed = progress.through + progress.dropped
    seconds = max((progress.last or time.monotonic()) - progress.first, 1e-9) if progress.first else 0.0
    print(
        json.dumps(
            {
                "variant": args.variant,
                "events": processed,
                "dropped_invalid": progress.dropped,
                "seconds": round(seconds, 3),
                "events_per_s": round(processed / seconds, 1) if seconds else None,
                "wall_seconds": round(time.monotonic() - started, 3),
                "complete": processed >= args.events,
            }
        )
    )
    return 0 if processed >= args.events else 1


if __name__ == "__main__":
    sys.exit(main())
