"""The human table printed before the JSON line, and optional PNG plots (matplotlib, if installed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _f(x: Any, fmt: str = "{:,.0f}", none: str = "-") -> str:
    if x is None:
        return none
    try:
        return fmt.format(x)
    except (TypeError, ValueError):
        return str(x)


def render_table(rep: dict[str, Any]) -> str:
    c = rep.get("catchup", {})
    s = rep.get("summary", {})
    raw = rep.get("raw_consume", {})
    qx = rep.get("quix", {})
    g = rep.get("generator", {})
    lines = [
        f"bench {rep.get('run_id')}  ({rep['machine']['cores']} cores, git {rep['git']['commit']}"
        f"{' +local changes in app/' if rep['git']['dirty'] else ''})",
        "",
    ]

    def row(name: str, value: str, note: str = "") -> None:
        lines.append(f"  {name:<42} {value:>16}  {note}")

    lines.append("throughput (catch-up over a pre-produced topic, from an empty ledger)")
    row("events", _f(rep.get("events")), f"generator {_f(g.get('events_per_s'))}/s")
    runs = c.get("runs_events_per_s", [])
    row(
        "end-to-end events/s",
        _f(c.get("events_per_s")),
        f"first assignment -> last ack; runs {', '.join(_f(x) for x in runs)}"
        if len(runs) > 1
        else "first assignment -> last ack",
    )
    row(
        "processor events/s (to last commit)",
        _f(c.get("processor_events_per_s")),
        f"sink tail {_f(c.get('sink_tail_s'), '{:.2f}')} s",
    )
    row(
        "raw consume events/s (anchor a)",
        _f(raw.get("events_per_s")),
        f"runs {', '.join(_f(x) for x in raw.get('runs', []))}",
    )
    row(
        "Quix Streams events/s (anchor b)",
        _f(qx.get("events_per_s")),
        qx.get("reason") or f"{qx.get('version', '')} variants {qx.get('variants')}",
    )
    row(
        "ratio vs raw consume",
        _f(s.get("ratio_vs_raw"), "{:.1%}"),
        f"goal >= 60%; per CPU second {_f(s.get('ratio_vs_raw_cpu'), '{:.1%}')}",
    )
    row(
        "ratio vs Quix",
        _f(s.get("ratio_vs_quix"), "{:.1f}x"),
        f"goal >= 5x; per CPU second {_f(s.get('ratio_vs_quix_cpu'), '{:.1f}x')}",
    )
    row(
        "events per CPU s: processor",
        f"{_f(s.get('processor_events_per_cpu_s'))}",
        f"processor+sink {_f(s.get('pipeline_events_per_cpu_s'))}; "
        f"raw {_f(s.get('raw_consume_events_per_cpu_s'))}; "
        f"Quix {_f(s.get('quix_events_per_cpu_s'))}",
    )
    lines.append("")
    lines.append("per stage (catch-up)")
    row(
        "processor CPU s / us per event",
        f"{_f(c.get('processor_cpu_s'), '{:.1f}')} / {_f(c.get('processor_us_per_event'), '{:.2f}')}",
        f"{c.get('processors')} process(es)",
    )
    row(
        "sink CPU s / us per event",
        f"{_f(c.get('sink_cpu_s'), '{:.1f}')} / {_f(c.get('sink_us_per_event'), '{:.2f}')}",
        "incl. embedded ClickHouse threads",
    )
    row(
        "Kafka broker / Postgres CPU s",
        f"{_f(c.get('kafka_cpu_s'), '{:.1f}')} / {_f(c.get('postgres_cpu_s'), '{:.1f}')}",
        f"machine busy {_f(c.get('machine_utilisation'), '{:.0%}')}, "
        f"other load {_f(max(c.get('other_cpu_s') or 0, 0), '{:.1f}')} CPU s",
    )
    row(
        "peak RSS processor / sink MB",
        f"{_f(c.get('processor_peak_rss_mb'))} / {_f(c.get('sink_peak_rss_mb'))}",
    )
    row(
        "rows per insert min (steady) / median",
        f"{_f(c.get('min_rows_per_insert'))} / {_f(c.get('median_rows_per_insert'))}",
        f"{c.get('steady_inserts_under_10k_rows')} of {c.get('steady_inserts')} steady inserts < 10k rows",
    )
    row(
        "ledger commit p50 / p99 s",
        f"{_f(c.get('ledger_commit_p50_s'), '{:.3f}')} / {_f(c.get('ledger_commit_p99_s'), '{:.3f}')}",
        f"{c.get('checkpoints')} checkpoints",
    )
    row(
        "checkpoint interval p50 / p99 s",
        f"{_f(c.get('checkpoint_interval_p50_s'), '{:.2f}')} / "
        f"{_f(c.get('checkpoint_interval_p99_s'), '{:.2f}')}",
        f"{_f(c.get('records_per_checkpoint_median'))} records per checkpoint (median)",
    )
    if "verify_exit_code" in c:
        row("verify", "EXACT" if c["verify_exit_code"] == 0 else f"exit {c['verify_exit_code']}")
    prof = rep.get("profile")
    if prof:
        for name, shares in prof.items():
            lines.append("")
            lines.append(f"profile {name} (share of on-CPU samples of the main thread)")
            for stage, share in list(shares.items())[:10]:
                row(stage[:42], f"{share:.1%}")
    om = rep.get("open_model")
    if om:
        lines.append("")
        lines.append("open model (generator at a fixed rate, processor + sink running)")
        for t in om.get("trials", []):
            row(
                f"rate {_f(t.get('rate'))}/s for {_f(t.get('seconds'))} s",
                "flat" if t.get("flat") else "NOT flat",
                f"{t.get('reason')}; e2e p99 {_f(t.get('e2e_p99_s'), '{:.2f}')} s; "
                f"other load {_f(max(t.get('other_cpu_s') or 0, 0), '{:.1f}')} CPU s",
            )
        ch = om.get("chosen", {})
        row(
            "max flat-lag rate",
            _f(om.get("max_flat_rate")),
            "searched" if om.get("searched") else "rate tested (no search)",
        )
        row(
            f"e2e p50 / p99 / p999 s at {_f(ch.get('rate'))}/s",
            f"{_f(ch.get('e2e_p50_s'), '{:.2f}')} / {_f(ch.get('e2e_p99_s'), '{:.2f}')} / "
            f"{_f(ch.get('e2e_p999_s'), '{:.2f}')}",
            "CreateTime -> batch acknowledged",
        )
        row(
            "  backlog p50 / p99 s",
            f"{_f(ch.get('backlog_p50_s'), '{:.2f}')} / {_f(ch.get('backlog_p99_s'), '{:.2f}')}",
            "waiting in Kafka past the previous checkpoint",
        )
        row(
            "  batching p50 / p99 s",
            f"{_f(ch.get('batching_p50_s'), '{:.2f}')} / {_f(ch.get('batching_p99_s'), '{:.2f}')}",
            "until the checkpoint commit (--batch-max-wait)",
        )
        row(
            "  sink p50 / p99 s",
            f"{_f(ch.get('sink_p50_s'), '{:.2f}')} / {_f(ch.get('sink_p99_s'), '{:.2f}')}",
            "commit -> acknowledged in ClickHouse",
        )
        row(
            "  rows per insert min (steady) / median",
            f"{_f(ch.get('min_rows_per_insert'))} / {_f(ch.get('median_rows_per_insert'))}",
        )
        row(
            "  CPU us/event gen / proc / sink / broker / pg",
            " / ".join(_f(ch.get(f"{k}_us_per_event"), "{:.2f}")
                       for k in ("generator", "processor", "sink", "kafka", "postgres")),
            f"at {_f(ch.get('rate'))}/s, start-up included",
        )
    lines.append("")
    lines.append(
        f"results: experiments/results/{rep.get('run_id')}/bench.json  ({rep.get('bench_seconds')} s)"
    )
    return "\n".join(lines)


def write_plots(rep: dict[str, Any], out: Path) -> list[Path]:
    """Lag over time of each open-model trial and the catch-up CPU timeline, if matplotlib is there."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    paths = []
    om = rep.get("open_model") or {}
    if om.get("trials"):
        fig, ax = plt.subplots(figsize=(8, 4))
        for t in om["trials"]:
            series = t.get("lag_series") or []
            if series:
                ax.plot(
                    [x[0] for x in series],
                    [x[1] / max(t["rate"], 1) for x in series],
                    label=f"{t['rate']:,.0f}/s {'flat' if t.get('flat') else 'not flat'}",
                )
        ax.set_xlabel("seconds since the generator started")
        ax.set_ylabel("lag to ClickHouse (s of input)")
        ax.legend()
        ax.grid(alpha=0.3)
        path = out / "open-model-lag.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    tl = (rep.get("catchup") or {}).get("timeline") or {}
    if tl.get("processor"):
        fig, ax = plt.subplots(figsize=(8, 4))
        for name, series in tl.items():
            xs = [x[0] for x in series]
            cpu = [x[1] for x in series]
            util = [(cpu[i] - cpu[i - 1]) / max(xs[i] - xs[i - 1], 1e-6) for i in range(1, len(xs))]
            ax.plot(xs[1:], util, label=f"{name} CPU (cores)")
        ax.set_xlabel("seconds since the first partition assignment")
        ax.set_ylabel("cores")
        ax.legend()
        ax.grid(alpha=0.3)
        path = out / "catchup-cpu.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths
