"""The chaos report: `<name>.json` (everything), `<name>.md` (what Finance reads) and
`<name>.png` (throughput and lag over time with every fault marked)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from experiments.chaos.observe import Sample, recovery
from experiments.chaos.run import RunResult, result_json

FAULT_COLORS = {"processor_kill": "tab:red", "sink_kill": "tab:purple", "sink_stall": "tab:orange",
                "join_leave": "tab:green", "fence": "tab:brown", "broker_restart": "black",
                "hostile_burst": "tab:gray", "crash_point": "tab:pink"}


def kills(r: RunResult) -> list[dict[str, Any]]:
    """Every SIGKILL that ended an incarnation, with its recovery time."""
    out = []
    for e in r.exits:
        if e.returncode != -9:
            continue
        rec = recovery(r.samples, e.t_s)
        out.append({"t_s": e.t_s, "target": f"{e.role}{e.slot if e.role == 'processor' else ''}",
                    "incarnation": e.incarnation, "cause": e.cause, "hit": e.hit, "armed": e.armed,
                    "settings": e.settings, "lag_rose": rec.rose, "recovery_s": rec.seconds})
    return out


def write(r: RunResult, out_dir: Path, name: str) -> tuple[Path, Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    data = result_json(r)
    data["kills"] = kills(r)
    data["counts"] = counts(r, data["kills"])
    json_path = out_dir / f"{name}.json"
    json_path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    png_path = out_dir / f"{name}.png"
    plot(r, data["kills"], png_path)
    md_path = out_dir / f"{name}.md"
    md_path.write_text(markdown(r, data, png_path.name))
    return md_path, json_path, png_path


def counts(r: RunResult, kill_list: list[dict[str, Any]]) -> dict[str, Any]:
    by: dict[str, int] = {}
    for k in kill_list:
        key = f"{k['target'].rstrip('0123456789')}_{k['cause']}"
        by[key] = by.get(key, 0) + 1
    fault_kinds: dict[str, int] = {}
    for f in r.faults:
        fault_kinds[f.kind] = fault_kinds.get(f.kind, 0) + 1
    rebalances = r.logs.get("partitions_revoked", 0) + r.logs.get("partitions_lost", 0)
    return {"kills": len(kill_list), "kills_by": by, "faults": fault_kinds,
            "insert_errors_injected": r.logs.get("insert_faults_total", 0), "rebalances": rebalances,
            "broker_restarts": fault_kinds.get("broker_restart", 0),
            "sink_restarts": sum(1 for e in r.exits if e.role == "sink")}


def plot(r: RunResult, kill_list: list[dict[str, Any]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = r.samples
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(13, 7), sharex=True)
    if len(s) >= 2:
        t = [x.t_s for x in s[1:]]
        prod = [_rate(a, b, "produced") for a, b in zip(s, s[1:])]
        comm = [_rate(a, b, "committed") for a, b in zip(s, s[1:])]
        ax1.plot(t, _smooth(prod), label="produced (events/s)", lw=1)
        ax1.plot(t, _smooth(comm), label="committed to the ledger (events/s)", lw=1)
        ax2.plot([x.t_s for x in s], [x.lag for x in s], label="lag (records)", color="tab:blue", lw=1)
        ax2.plot([x.t_s for x in s], [x.pending_rows for x in s], label="rows awaiting ClickHouse",
                 color="tab:olive", lw=1)
    for f in r.faults:
        color = FAULT_COLORS.get(f.kind, "gray")
        for ax in (ax1, ax2):
            if f.ended_s is not None and f.ended_s > f.at_s:
                ax.axvspan(f.at_s, f.ended_s, color=color, alpha=0.12)
            ax.axvline(f.at_s, color=color, lw=0.6, alpha=0.6)
    for k in kill_list:
        color = FAULT_COLORS["crash_point" if k["cause"] == "crash_point" else
                             ("processor_kill" if k["target"].startswith("processor") else "sink_kill")]
        ax2.plot([k["t_s"]], [0], marker="x", color=color, ms=5)
    handles = [plt.Line2D([], [], color=c, label=k) for k, c in FAULT_COLORS.items()]
    ax1.legend(loc="upper left", fontsize=8)
    ax2.legend(handles=ax2.get_legend_handles_labels()[0] + handles, fontsize=7, loc="upper left", ncol=2)
    ax1.set_ylabel("events/s")
    ax2.set_ylabel("records / rows")
    ax2.set_xlabel("seconds since start (x on the axis: a SIGKILL)")
    verdict = "EXACT" if r.exact else "NOT EXACT"
    ax1.set_title(f"chaos run seed {r.config.seed}: {r.config.events:,} events, {r.config.brokers} broker(s), "
                  f"{r.config.processors} processors — verify: {verdict}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _rate(a: Sample, b: Sample, attr: str) -> float:
    return max(0.0, (getattr(b, attr) - getattr(a, attr)) / max(b.t_s - a.t_s, 1e-6))


def _smooth(xs: list[float], n: int = 4) -> list[float]:
    return [sum(xs[max(0, i - n + 1): i + 1]) / len(xs[max(0, i - n + 1): i + 1]) for i in range(len(xs))]


def markdown(r: RunResult, data: dict[str, Any], png: str) -> str:
    c = data["counts"]
    verdict = "**EXACT** — ClickHouse FINAL equals the ground truth, per key" if r.exact else \
        "**NOT EXACT** — see verify's output below; this run does not support the claim"
    lines = [
        f"# Chaos run: seed {r.config.seed}, {r.config.events:,} events",
        "",
        f"Verdict: {verdict}.",
        "",
        "```",
        r.config.command,
        "```",
        "",
        f"Started {r.started_utc}, wall {r.wall_s:.0f} s (generator {r.generator_s:.0f} s at "
        f"{r.config.rate:,.0f} events/s, drain {r.drain_s:.0f} s). Machine and versions: "
        + ", ".join(f"{k} {v}" for k, v in r.versions.items()) + ".",
        "",
        f"![throughput and lag with faults]({png})",
        "",
        "## Faults",
        "",
        "| what | count |",
        "|---|---|",
        f"| SIGKILLs (processor and sink, scheduled and at crash points) | {c['kills']} |",
    ]
    for k, v in sorted(c["kills_by"].items()):
        lines.append(f"| &nbsp;&nbsp;{k} | {v} |")
    lines += [
        f"| injected ClickHouse insert errors | {c['insert_errors_injected']} "
        f"({', '.join(f'{m} {n}' for m, n in sorted(r.logs.get('insert_faults_injected', {}).items()))}) |",
        f"| rebalances (partition revocations and losses seen by instances) | {c['rebalances']} |",
        f"| sink restarts (each with its own block size / insert mode) | {c['sink_restarts']} |",
        f"| ClickHouse stalls (sink SIGSTOPped) | {c['faults'].get('sink_stall', 0)} "
        f"(backpressure pauses logged: {r.logs.get('backpressure_pauses', 0)}) |",
        f"| fences (SIGSTOP past the session timeout) | {c['faults'].get('fence', 0)} "
        f"(after SIGCONT: partitions lost {sum(f.detail.get('partitions_lost', 0) for f in r.faults)}, "
        f"fenced commits/snapshots {sum(f.detail.get('checkpoint_fenced', 0) + f.detail.get('snapshot_fenced', 0) for f in r.faults)}) |",
        f"| broker restarts | {c['broker_restarts']} |",
        f"| hostile records | {sum(r.hostile_records.values())} in {c['faults'].get('hostile_burst', 0)} bursts |",
        "",
        "## Counts",
        "",
        f"- events in (input log): {r.samples[-1].produced if r.samples else 0:,}",
        f"- ledger: {r.ledger['checkpoints']:,} checkpoints, {r.ledger['batches']:,} sink batches, "
        f"{r.ledger['rows']:,} window rows; {r.ledger['groups']:,} insert groups, "
        f"{r.ledger['groups_resent']:,} sent more than once ({r.ledger['insert_attempts']:,} sends); "
        f"{r.ledger['rows_replayed']:,} rows in batches sent more than once (deduplicated by ClickHouse)",
        "- ClickHouse: " + "; ".join(f"{t}: {v['raw_rows']:,} raw rows, {v['final_rows']:,} FINAL rows, "
                                      f"{v['final_events']:,} events" for t, v in r.clickhouse.items()),
        "- DLQ (ledger counts): " + ", ".join(f"{k} {v:,}" for k, v in r.ledger["dlq"].items()),
        "- hostile records produced: " + ", ".join(f"{k} {v}" for k, v in sorted(r.hostile_records.items())),
        "",
        "## Verify",
        "",
        "```",
        "\n".join(line for line in r.verify_stdout.strip().splitlines() if not line.startswith("{"))[-4000:],
        "```",
        "",
        "## Fault timeline",
        "",
        "| t (s) | fault | target | what it hit | ended (s) |",
        "|---|---|---|---|---|",
    ]
    for f in r.faults:
        lines.append(f"| {f.at_s:.1f} | {f.kind} | {f.target} | {f.hit} | "
                     f"{'' if f.ended_s is None else f'{f.ended_s:.1f}'} |")
    lines += ["", "## Kills and recovery", "",
              "Recovery: from the kill until the lag is back at its level just before it (blank: "
              "the lag did not visibly rise, or another fault intervened first).", "",
              "| t (s) | target | cause | what it hit | armed with | recovery (s) |", "|---|---|---|---|---|---|"]
    for k in data["kills"]:
        lines.append(f"| {k['t_s']:.1f} | {k['target']}#{k['incarnation']} | {k['cause']} | {k['hit']} | "
                     f"{k['armed'] or ''} | {'' if k['recovery_s'] is None else k['recovery_s']} |")
    lines.append("")
    return "\n".join(lines)
