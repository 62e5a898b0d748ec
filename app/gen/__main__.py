"""`python -m app.gen`: deterministic seeded producer (contract §7).

Exit codes (docs/operations.md): 0 done (or stopped by SIGTERM/SIGINT after flushing), 1 a
record not acknowledged, 2 bad flags or configuration, 3 Kafka unreachable past
--service-timeout.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

import structlog

from app.core.cli import EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, fail, metrics_port
from app.core.errors import PipelineError, RetryableError
from app.core.probes import watch_services
from app.core.serve import serve_metrics
from app.core.startup import start_command
from app.gen.cli import parse_args
from app.gen.produce import prepare_topic, run

log = structlog.get_logger("gen")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    start_command("gen", args.namespace)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if not stop.is_set():
            log.info("gen_signal", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with metrics_port("gen", args.metrics_port, args.metrics_host):
        serve_metrics(args.metrics_port, args.metrics_host, stage="gen")
    if args.metrics_port:
        watch_services(args.settings, postgres=False)
    spec, plan = args.spec, args.plan
    log.info("gen_start", topic=plan.topic, bootstrap=args.settings.kafka_bootstrap_servers,
             events=spec.events, rate=plan.rate or "max", seed=spec.seed, accounts=spec.accounts,
             zipf_s=spec.zipf_s, countries=spec.countries, late_fraction=spec.late_fraction,
             out_of_order_spread_ms=spec.out_of_order_spread_ms, invalid_fraction=spec.invalid_fraction,
             start_ms=spec.start_ms, event_time_rate=spec.event_time_rate,
             bursts=[f"{b.multiplier:g}x@{b.start_s:g}+{b.duration_s:g}" for b in plan.bursts])
    try:
        partitions = prepare_topic(args.settings.kafka_bootstrap_servers, plan, stop)
        result = run(spec, plan, args.settings.kafka_bootstrap_servers, stop)
    except PipelineError as e:
        if stop.is_set():
            log.info("gen_done", events=0, stopped=True, reason="signal before the topic was ready")
            return EXIT_OK
        log.error("gen_failed", error=str(e), bootstrap=args.settings.kafka_bootstrap_servers,
                  topic=plan.topic)
        return fail("gen", str(e), EXIT_UNAVAILABLE if isinstance(e, RetryableError) else EXIT_FAILED)
    if result.failed:
        log.error("gen_failed", error="records not acknowledged by Kafka", failed=result.failed,
                  first_error=result.first_error, sent=result.events, topic=plan.topic)
        return fail("gen", f"{result.failed} record(s) not acknowledged by Kafka: {result.first_error}", EXIT_FAILED)
    log.info("gen_done", events=result.events, on_time=result.on_time, late=result.late,
             invalid=result.invalid, seconds=round(result.seconds, 3),
             events_per_s=round(result.events_per_s, 1), topic=plan.topic, partitions=partitions,
             stopped=result.stopped)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
