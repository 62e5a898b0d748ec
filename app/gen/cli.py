"""`python -m app.gen` flags (contract §7) -> a GenSpec (what the data is) + a SendPlan (how it is sent)."""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from app.core.config import (
    ArgumentParser,
    ServiceSettings,
    add_runtime_args,
    add_service_args,
    add_service_timeout_arg,
    duration_ms_arg,
    fraction_arg,
    non_negative_int_arg,
    parse_time_ms,
    positive_int_arg,
    service_settings,
)
from app.gen.model import COUNTRIES, DEFAULT_START_MS, MAX_ACCOUNTS, GenSpec
from app.gen.schedule import Burst, parse_bursts

DEFAULT_EVENT_TIME_RATE = 1_000.0


@dataclass(frozen=True, slots=True)
class SendPlan:
    """How records are sent; nothing here changes which records are sent."""

    topic: str
    partitions: int
    rate: float                 # events/s; 0 = as fast as possible
    bursts: tuple[Burst, ...]
    connect_timeout_s: float    # 0 = retry forever


@dataclass(frozen=True, slots=True)
class GenArgs:
    spec: GenSpec
    plan: SendPlan
    settings: ServiceSettings
    metrics_port: int
    metrics_host: str
    log_level: str
    namespace: argparse.Namespace   # as parsed: what start_command reads


def _float_arg(minimum: float, *, inclusive: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text.replace("_", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        ok = math.isfinite(value) and (value >= minimum if inclusive else value > minimum)
        if not ok:
            raise argparse.ArgumentTypeError(f"must be {'>=' if inclusive else '>'} {minimum:g}: {text!r}")
        return value
    return parse


def _bounded_int_arg(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.replace("_", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be within [{low}, {high}]: {text!r}")
        return value
    return parse


def _start_time_arg(text: str) -> int:
    if text.strip().lower() == "now":
        return int(time.time() * 1000)
    try:
        value = parse_time_ms(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not 0 <= value < 4_102_444_800_000:
        raise argparse.ArgumentTypeError(f"start time out of range [1970, 2100): {text!r}")
    return value


def _bursts_arg(text: str) -> tuple[Burst, ...]:
    try:
        return parse_bursts(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python -m app.gen",
        description="Deterministic seeded event producer: the same seed and data flags give the same "
                    "records in the same per-partition order, whatever the rate.",
        epilog="Data flags (they decide the records): --seed --events --accounts --zipf-s --countries "
               "--late-fraction --out-of-order-spread --invalid-fraction --start-time --event-time-rate "
               "(whose default follows --rate: pass it explicitly to compare runs at different rates). "
               "Send flags (they never change the records): --rate --burst --partitions, service and "
               "runtime flags. Exit status (docs/operations.md): 0 done or stopped by SIGTERM/SIGINT after "
               "flushing; 1 a record not acknowledged by Kafka; 2 usage or configuration; 3 Kafka unreachable "
               "past --service-timeout.",
    )
    d = p.add_argument_group("data (deterministic)")
    d.add_argument("--seed", type=non_negative_int_arg, default=42, help="random seed (default %(default)s)")
    d.add_argument("--events", type=non_negative_int_arg, default=1_000_000,
                   help="number of records to produce (default %(default)s)")
    d.add_argument("--accounts", type=_bounded_int_arg(1, MAX_ACCOUNTS), default=10_000_000,
                   help="distinct account ids, 0 <= id < accounts (default %(default)s)")
    d.add_argument("--zipf-s", type=_float_arg(0.0, inclusive=False), default=1.1,
                   help="Zipf exponent of account popularity (default %(default)s)")
    d.add_argument("--countries", type=_bounded_int_arg(1, len(COUNTRIES)), default=50,
                   help=f"number of ISO country codes in use, at most {len(COUNTRIES)} (default %(default)s)")
    d.add_argument("--late-fraction", type=fraction_arg, default=0.02,
                   help="fraction of events given an extra long-tail lag (median 100 s, up to 2 h) "
                        "(default %(default)s)")
    d.add_argument("--out-of-order-spread", type=duration_ms_arg, default="2s", metavar="DURATION",
                   help="event_time = ingest time - uniform(0, spread) for normal events "
                        "(default %(default)s)")
    d.add_argument("--invalid-fraction", type=fraction_arg, default=0.001,
                   help="fraction of invalid records, split evenly across the invalid classes "
                        "(default %(default)s)")
    d.add_argument("--start-time", type=_start_time_arg, default=DEFAULT_START_MS, metavar="TIME",
                   help="simulated ingest time of record 0: ISO 8601 UTC, epoch ms, or 'now' "
                        "(not deterministic) (default 2025-11-20T00:00:00Z)")
    d.add_argument("--event-time-rate", type=_float_arg(0.0, inclusive=False), default=None, metavar="EPS",
                   help="events per second of simulated event time: record i's ingest time is "
                        "start + floor(i*1000/EPS) ms (default: --rate if > 0, else 1000)")
    s = p.add_argument_group(
        "sending (no effect on the records, except --rate via the --event-time-rate default)")
    s.add_argument("--rate", type=_float_arg(0.0, inclusive=True), default=0.0,
                   help="open-model send rate in events/s; 0 = as fast as possible (default %(default)s)")
    s.add_argument("--burst", type=_bursts_arg, default=(), metavar="SPEC",
                   help="rate bursts '<mult>x@<start>+<duration>[,...]', e.g. 3x@60+30 = 3x the rate "
                        "from 60 s into the run for 30 s (durations accept ms/s/m/h); needs --rate > 0")
    s.add_argument("--partitions", type=positive_int_arg, default=8,
                   help="partitions of the events topic if it has to be created (default %(default)s)")
    add_service_timeout_arg(s, default="5m", aliases=("--connect-timeout",))
    add_service_args(p, uses=frozenset({"kafka", "events_topic"}))
    add_runtime_args(p, metrics_port=0)
    return p


def parse_args(argv: Sequence[str] | None = None) -> GenArgs:
    parser = build_parser()
    a = parser.parse_args(argv)
    if a.burst and a.rate <= 0:
        parser.error("--burst needs --rate > 0")
    event_time_rate = a.event_time_rate or (a.rate if a.rate > 0 else DEFAULT_EVENT_TIME_RATE)
    try:
        spec = GenSpec(
            seed=a.seed, events=a.events, accounts=a.accounts, zipf_s=a.zipf_s, countries=a.countries,
            late_fraction=a.late_fraction, out_of_order_spread_ms=a.out_of_order_spread,
            invalid_fraction=a.invalid_fraction, start_ms=a.start_time, event_time_rate=event_time_rate,
        )
    except ValueError as e:
        parser.error(str(e))
    settings = service_settings(a)
    plan = SendPlan(topic=settings.events_topic, partitions=a.partitions, rate=a.rate, bursts=a.burst,
                    connect_timeout_s=a.service_timeout or 0.0)
    return GenArgs(spec=spec, plan=plan, settings=settings, metrics_port=a.metrics_port,
                   metrics_host=a.metrics_host, log_level=a.log_level, namespace=a)
