"""`python -m experiments.chaos`: one sustained run with every fault at once, then verify.

During ONE run at a fixed input rate: processors SIGKILLed inside their checkpoints
(before / inside / after the Postgres transaction, both sides of the local-state
reconciliation) and at random instants; the sink SIGKILLed before, during and after
inserts and restarted with another block size and insert mode; injected ClickHouse
insert errors (before / after / mid-insert) and ClickHouse stalls long enough for
backpressure; instances joining and leaving, one SIGSTOPped past its session timeout;
a broker (the DLQ partition's leader first) killed and restarted; hostile records in the
input. Then the pipeline drains and `python -m app.verify` diffs ClickHouse FINAL
against the truth recomputed from the input log, per key, plus the DLQ counts and the
DLQ topic's identities. The report (markdown, JSON, PNG) goes to docs/chaos/.

Exit code: 0 only when the run drained and verify found no difference; 1 otherwise
(the report says NOT EXACT); 2 for bad flags.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from app.core.config import REPO_ROOT, ArgumentParser, env, fraction_arg, positive_int_arg
from experiments.chaos import report
from experiments.chaos.run import ChaosRun, RunConfig
from experiments.chaos.schedule import ChaosPlan


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m experiments.chaos", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=7, help="seeds the input and the fault schedule (default 7)")
    p.add_argument("--events", type=positive_int_arg, default=2_000_000, help="input events (default %(default)s)")
    p.add_argument("--rate", type=float, default=30_000, help="generator rate, events/s (default %(default)s)")
    p.add_argument("--brokers", type=int, choices=(1, 3), default=1,
                   help="Kafka brokers of the run's own cluster; broker restarts need 3 (default 1)")
    p.add_argument("--processors", type=positive_int_arg, default=2, help="processor instances (default 2)")
    p.add_argument("--partitions", type=positive_int_arg, default=6, help="input partitions (default 6)")
    p.add_argument("--accounts", type=positive_int_arg, default=50_000,
                   help="distinct accounts of the input (default %(default)s)")
    p.add_argument("--bootstrap-servers", default=None,
                   help="use this running 1-broker cluster instead of starting one (no broker faults)")
    f = p.add_argument_group("faults over the run (counts; times are drawn from --seed)")
    f.add_argument("--processor-kills", type=int, default=None, help="SIGKILLs at random instants (default: scaled)")
    f.add_argument("--sink-kills", type=int, default=None, help="sink SIGKILLs at random instants (default: scaled)")
    f.add_argument("--stalls", type=int, default=None, help="ClickHouse stalls (default: scaled)")
    f.add_argument("--join-leaves", type=int, default=None, help="an instance joins and leaves (default: scaled)")
    f.add_argument("--fences", type=int, default=None, help="SIGSTOP past the session timeout (default: scaled)")
    f.add_argument("--broker-restarts", type=int, default=None, help="3 brokers only (default: scaled)")
    f.add_argument("--hostile-bursts", type=int, default=None, help="bursts of hostile records (default: scaled)")
    f.add_argument("--insert-fail-probability", type=fraction_arg, default=0.08,
                   help="each insert call fails (injected) with this probability (default %(default)s)")
    f.add_argument("--checkpoint-crash", default="8-40", metavar="LO-HI",
                   help="an armed processor incarnation dies inside its Nth checkpoint, N in LO..HI (default 8-40)")
    f.add_argument("--no-oversized", action="store_true", help="hostile bursts without 600 KB / 2 MB / 10 MB records")
    f.add_argument("--break-sink", action="store_true",
                   help="a deliberately broken sink that silently drops every insert: the run must end NOT "
                        "EXACT (shows the harness never hides a mismatch)")
    p.add_argument("--max-pending-rows", type=positive_int_arg, default=None,
                   help="processors pause reading above this ClickHouse backlog; a stall must be able to "
                        "reach it (default: half a second of input, at least 20000)")
    p.add_argument("--name", default=None, help="report name (default seed<S>-<events>ev-<B>b-<P>p)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "chaos", help="report folder (default docs/chaos)")
    p.add_argument("--work-dir", type=Path, default=REPO_ROOT / ".data" / "chaos",
                   help="Kafka data, ClickHouse, state and logs of the run (default .data/chaos)")
    return p


def scaled(value: int | None, duration_s: float, per_minute: float, minimum: int) -> int:
    return value if value is not None else max(minimum, round(duration_s / 60.0 * per_minute))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.bootstrap_servers and args.brokers != 1:
        parser.error("--bootstrap-servers uses an existing 1-broker cluster: drop --brokers 3")
    if args.rate <= 0:
        parser.error("--rate must be > 0 (an open-model run)")
    try:
        lo, hi = (int(x) for x in args.checkpoint_crash.split("-"))
        assert 1 <= lo <= hi
    except (ValueError, AssertionError):
        parser.error(f"--checkpoint-crash: expected LO-HI with 1 <= LO <= HI, got {args.checkpoint_crash!r}")
    duration = args.events / args.rate
    plan = ChaosPlan(
        duration_s=duration, processors=args.processors, brokers=args.brokers,
        processor_kills=scaled(args.processor_kills, duration, 4, 2),
        sink_kills=scaled(args.sink_kills, duration, 2, 2),
        sink_stalls=scaled(args.stalls, duration, 0.4, 1),
        join_leaves=scaled(args.join_leaves, duration, 0.5, 1),
        fences=scaled(args.fences, duration, 0.2, 1),
        broker_restarts=scaled(args.broker_restarts, duration, 0.2, 1) if args.brokers >= 3 else 0,
        hostile_bursts=scaled(args.hostile_bursts, duration, 0.5, 2),
        insert_fail_probability=args.insert_fail_probability,
        processor_checkpoints=(lo, hi))
    name = args.name or f"seed{args.seed}-{args.events}ev-{args.brokers}b-{args.processors}p"
    cfg = RunConfig(seed=args.seed, events=args.events, rate=args.rate, brokers=args.brokers,
                    processors=args.processors, partitions=args.partitions, accounts=args.accounts, plan=plan,
                    run_dir=args.work_dir / name, pipeline_id=f"chaos-{name}"[:64],
                    database_url=env("DATABASE_URL"), bootstrap=args.bootstrap_servers,
                    oversized=not args.no_oversized, break_sink=args.break_sink,
                    max_pending_rows=args.max_pending_rows or max(20_000, int(args.rate / 2)),
                    command="python -m experiments.chaos " + shlex.join(sys.argv[1:] if argv is None else argv))
    result = ChaosRun(cfg).run()
    md, js, png = report.write(result, args.out, name)
    print(f"chaos: report {md} ({js.name}, {png.name})")
    print(f"chaos: {'EXACT' if result.exact else 'NOT EXACT'} "
          f"(drained={result.drained}, verify exit {result.verify_rc})")
    return 0 if result.exact else 1


if __name__ == "__main__":
    sys.exit(main())
