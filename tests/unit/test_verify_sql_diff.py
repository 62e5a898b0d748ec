"""verify's SQL diff (store.py + sql_diff.py, what the command runs at any scale) gives the
same Report as the in-memory diff of compare.py on the same data: random logs with invalid
and late records, sums beyond Int64, accounts near 2^64, every country code, accounts in
two partitions; ClickHouse rows missing, extra, different and duplicated; DLQ identities
missing, extra and repeated.

Each case runs in a child process: verify's store is an embedded ClickHouse (chDB), and a
process can hold one chDB path only, which other tests of this session may hold.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from array import array
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from app.verify.compare import DlqTopicReport, Report, TableSnapshot, diff
from app.verify.dlq_topic import DlqTopicSnapshot, DlqTopicTally
from app.verify.store import VerifyStore  # importing chDB is fine; opening a path is not
from app.verify.truth import COUNTRY_CODES, Classifier, RollupKey, RollupValue, Rules, Truth, TruthBuilder

REPO = Path(__file__).resolve().parents[2]
T0 = 1_763_596_800_000  # an hour edge
RULES = Rules(5_000, 60_000, 120_000, 2_000)
FINAL_COLUMNS = "window_start UInt32, account_id UInt64, country String, event_count UInt64, sum_amount Int128"


def random_log(rng: random.Random, partitions: int, records: int) -> dict[int, list[tuple[bytes | None, bytes | None]]]:
    """(key, value) per partition: mostly valid events, some invalid, some far out of order."""
    accounts = [rng.randrange(0, 50) for _ in range(40)] + [2**64 - 1, 2**64 - 2]
    countries = ["AA", "DE", "FR", "ZZ", "QX"]
    log: dict[int, list[tuple[bytes | None, bytes | None]]] = {}
    for p in range(partitions):
        out: list[tuple[bytes | None, bytes | None]] = []
        t = T0
        for i in range(records):
            t += rng.randrange(0, 3_000)
            account = rng.choice(accounts)
            when = t - rng.choice([0, 0, 0, 1_000, 70_000, 130_000, 3_700_000])
            amount = rng.choice([rng.randrange(-1_000, 1_000), 2**63 - 1, -(2**63)])
            event = {"event_id": f"e{p}-{i}", "account_id": account, "country": rng.choice(countries),
                     "event_time": when, "amount": amount, "kind": "k"}
            value: bytes | None = json.dumps(event).encode()
            key: bytes | None = str(account).encode()
            shape = rng.randrange(40)
            if shape == 0:
                value = b"not json"
            elif shape == 1:
                key = b"x"
            elif shape == 2:
                value = None
            elif shape == 3:
                value = json.dumps({**event, "pad": "x" * RULES.max_record_bytes}).encode()
            out.append((key, value))
        log[p] = out
    return log


def perturbed_final(rng: random.Random, truth: Truth, kind: str,
                    ) -> tuple[dict[RollupKey, RollupValue], list[tuple[object, ...]], tuple[RollupKey, ...]]:
    """FINAL rows from the truth, with some missing, different, extra and duplicated keys: the
    in-memory TableSnapshot's rows, the same as the rows FINAL returns, the duplicated keys."""
    rows = dict(truth.rollups[kind])
    keys = sorted(rows)
    for key in rng.sample(keys, min(5, len(keys))):
        del rows[key]
    for key in rng.sample(sorted(rows), min(5, len(rows))):
        count, total = rows[key]
        rows[key] = (count + rng.choice([0, 1]), total + rng.choice([1, 2**64]))
    for _ in range(4):
        rows[(rng.randrange(0, 2**32 - 1) // 60 * 60, rng.randrange(0, 2**64), rng.choice(["DE", "xyz", ""]))] = \
            (rng.randrange(0, 9), rng.randrange(-(2**100), 2**100))
    duplicates = tuple(rng.sample(sorted(rows), min(3, len(rows))))
    flat = [(*k, *v) for k, v in rows.items()] + [(*k, *rows[k]) for k in duplicates]
    return rows, flat, duplicates


def insert_final(store: VerifyStore, kind: str, rows: list[tuple[object, ...]]) -> None:
    """Rows as FINAL would return them, into the store's copy of a rollup table."""
    path = store.work_dir / f"final_{kind}.jsonl"
    path.write_text("".join(json.dumps({"window_start": ws, "account_id": a, "country": c, "event_count": n,
                                        "sum_amount": str(s)}) + "\n" for ws, a, c, n, s in rows))
    store.command(f"INSERT INTO final_{kind} SELECT * FROM file({{path:String}}, JSONEachRow, {{s:String}})",
                  {"path": str(path), "s": FINAL_COLUMNS})


def compare_in_child(seed: int) -> None:
    """Runs in the child: both diffs of one random case must be equal."""
    from app.verify.sql_diff import diff_store

    rng = random.Random(seed)
    log = random_log(rng, 3, 400)
    builder, classifier = TruthBuilder(RULES), Classifier(RULES)
    with VerifyStore() as store:
        for p, records in log.items():
            for a in range(0, len(records), 97):  # runs of any length, as Kafka hands them out
                keys, values = [k for k, _ in records[a:a + 97]], [v for _, v in records[a:a + 97]]
                builder.feed(p, values, keys)
                store.add_run(classifier.feed(p, values, keys))
        # every split account's valid events: account 7 in partitions 0 and 2 as well
        for p in (0, 2):
            event = {"event_id": "s", "account_id": 7, "country": "DE", "event_time": T0, "amount": 1, "kind": "k"}
            builder.feed(p, [json.dumps(event).encode()], [b"7"])
            store.add_run(classifier.feed(p, [json.dumps(event).encode()], [b"7"]))
        truth = builder.build()
        assert classifier.counts() == truth.counts
        assert truth.split_accounts, "the case must have accounts in more than one partition"

        snapshots = {}
        for kind in ("minute", "hour"):
            rows, flat, duplicates = perturbed_final(rng, truth, kind)
            snapshots[kind] = TableSnapshot(f"rollup_{kind}", rows, duplicates)
            insert_final(store, kind, flat)

        topic: dict[tuple[int, str, str], list[int]] = {}
        for slot, offsets in truth.dlq_offsets.items():
            kept = [o for o in offsets if rng.random() > 0.1]
            topic[slot] = kept + kept[:3]  # some missing, some twice
        topic.setdefault((0, "late", "hour"), []).extend([10_000, 10_001])  # extra identities
        topic[(9, "invalid", "")] = [5]  # a slot the truth lacks
        for (p, reason, kind), offsets in topic.items():
            store.add_dlq_topic_identities(p, (reason, kind), array("q", offsets))
        snapshot = DlqTopicSnapshot("dlq", True, sum(map(len, topic.values())),
                                    {s: np.unique(np.array(o, dtype=np.int64)) for s, o in topic.items() if o}, 1)
        tally = DlqTopicTally("dlq", True, snapshot.records, 1)
        ledger = {("invalid", ""): truth.dlq[("invalid", "")], ("late", "minute"): 1, ("late", "day"): 2}

        for max_diffs in (0, 3, 1_000):
            want = diff(truth, snapshots, ledger, max_diffs, dlq_topic=snapshot)
            got = diff_store(store, classifier.counts(), {"minute": True, "hour": True}, ledger, max_diffs, tally)
            assert got.split_count == want.split_count == len(truth.split_accounts)
            assert replace(got, split_account_count=None) == want, (got, want)
            assert not got.exact
            assert all(t.missing and t.extra and t.different and t.duplicates for t in got.tables)
            assert isinstance(got.dlq_topic, DlqTopicReport) and got.dlq_topic.missing and got.dlq_topic.extra
    print("equal")


def _run_child(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, text=True, capture_output=True, timeout=300,
                          check=False)


@pytest.mark.parametrize("seed", [1, 2])
def test_sql_diff_equals_the_in_memory_diff(seed: int) -> None:
    done = _run_child(f"from tests.unit.test_verify_sql_diff import compare_in_child; compare_in_child({seed})")
    assert done.returncode == 0 and done.stdout.strip().endswith("equal"), done.stdout + done.stderr


def test_an_exact_store_is_exact_and_every_country_code_round_trips() -> None:
    """One event per country code (the store keeps a 2-byte index, the diff turns it back into
    text), FINAL equal to the truth: EXACT, and every key equal."""
    done = _run_child("from tests.unit.test_verify_sql_diff import exact_in_child; exact_in_child()")
    assert done.returncode == 0 and done.stdout.strip().endswith("exact"), done.stdout + done.stderr


def exact_in_child() -> None:
    from app.verify.sql_diff import diff_store

    values = [json.dumps({"event_id": i, "account_id": i, "country": c, "event_time": T0 + i, "amount": 2**63 - 1,
                          "kind": "k"}).encode() for i, c in enumerate(COUNTRY_CODES)]
    builder, classifier = TruthBuilder(RULES), Classifier(RULES)
    builder.feed(0, values * 3)
    with VerifyStore() as store:
        store.add_run(classifier.feed(0, values * 3))
        truth = builder.build()
        assert {k[2] for k in truth.rollups["minute"]} == set(COUNTRY_CODES)
        for kind in ("minute", "hour"):
            insert_final(store, kind, [(*k, *v) for k, v in truth.rollups[kind].items()])
        report = diff_store(store, classifier.counts(), {"minute": True, "hour": True}, truth.dlq, 20)
        assert report.exact, report
        minute = report.tables[0]
        assert minute.truth_rows == minute.clickhouse_rows == len(COUNTRY_CODES)
        assert minute.truth_amount == 3 * len(COUNTRY_CODES) * (2**63 - 1)  # beyond Int64, exact
    print("exact")


def test_country_codes_are_every_pair_of_capitals_in_order() -> None:
    # sql_diff turns an index back into text as AA + index: that is this order exactly
    assert COUNTRY_CODES == tuple(chr(65 + i // 26) + chr(65 + i % 26) for i in range(26 * 26))
