"""Hand-made input through the real pipeline: every invalid class of contract §2 lands in
the DLQ with its reason and is counted in the ledger; the edges of §3 (window boundaries,
a far-future event jumping the watermark, sums beyond Int64, account ids near 2^64) land
exactly as the rules say."""

from __future__ import annotations

import json

import orjson

from tests.conftest import Pipeline
from tests.helpers import clickhouse_rows, produce, read_topic

T0 = 1_763_596_800_000  # 2025-11-20T00:00:00Z, an hour boundary


def ev(i: int, account: int = 1, t: int = T0, amount: int = 1, country: str = "DE") -> dict[str, object]:
    return {"event_id": f"e-{i}", "account_id": account, "country": country, "event_time": t,
            "amount": amount, "kind": "purchase"}


def dumps(d: dict[str, object]) -> bytes:
    return json.dumps(d).encode()  # stdlib: ints beyond 64 bits are written as-is


INVALID: list[bytes | None] = [
    b"not json at all", b"\xff\xfe\x00garbage", b"[1, 2, 3]", b'"just a string"', b"",
    dumps({k: v for k, v in ev(1).items() if k != "country"}),
    dumps({**ev(2), "account_id": 5.0}), dumps({**ev(3), "amount": 1.5}), dumps({**ev(4), "event_time": True}),
    dumps({**ev(5), "account_id": -1}), dumps({**ev(6), "account_id": 2**64}),
    dumps({**ev(7), "country": "de"}), dumps({**ev(8), "country": "DEU"}),
    dumps({**ev(9), "event_time": -1}), dumps({**ev(10), "event_time": 4_102_444_800_000}),
    dumps({**ev(11), "amount": 2**63}), dumps({**ev(12), "amount": -(2**63) - 1}),
    dumps({**ev(13), "kind": ""}), dumps({**ev(14), "kind": "k" * 33}),
    dumps({**ev(15), "event_id": ""}), dumps({**ev(16), "event_id": "x" * 129}), None,
]


def test_every_invalid_class_goes_to_the_dlq_and_is_counted(pipeline: Pipeline) -> None:
    good = [dumps(ev(100 + i, account=i, t=T0 + i)) for i in range(5)]
    records = [(b"1", v) for v in INVALID] + [(b"%d" % i, v) for i, v in enumerate(good)]  # key = account id
    produce(pipeline.bootstrap, pipeline.topic, records)
    pipeline.processor()
    pipeline.sink()
    dlq = [orjson.loads(v) for _, _, _, v in read_topic(pipeline.bootstrap, pipeline.dlq_topic)]
    invalid = {d["source_offset"]: d for d in dlq if d["reason"] == "invalid"}
    assert sorted(invalid) == list(range(len(INVALID)))  # each exactly once (no crash here)
    for offset, d in invalid.items():
        assert d["window_kind"] is None and d["source_topic"] == pipeline.topic and d["error"]
        raw = INVALID[offset]
        if raw is not None and raw.startswith(b"{") and raw.isascii():
            assert d["raw"] == raw.decode()
    with pipeline.ledger() as conn:
        counts = dict(conn.execute(
            "SELECT reason || '/' || window_kind, sum(count)::bigint FROM dlq_count WHERE pipeline_id = %s "
            "GROUP BY 1", (pipeline.pipeline_id,)).fetchall())
    assert counts == {"invalid/": len(INVALID)}
    res = pipeline.verify()
    assert res.returncode == 0, res.stdout[-3000:]
    rows = clickhouse_rows(pipeline.clickhouse_url, "rollup_minute", final=True)
    assert sum(r[3] for r in rows) == len(good)


def test_watermark_edges_big_sums_and_big_accounts(pipeline: Pipeline) -> None:
    big = 2**63 - 1
    acc = 2**64 - 1
    seq = [
        ev(0, account=acc, t=T0, amount=big),                 # minute [T0, T0+60s)
        ev(1, account=acc, t=T0 + 59_999, amount=big),        # same minute, last ms: sum beyond int64
        ev(2, account=acc, t=T0 + 60_000, amount=-5),         # next minute, first ms
        ev(3, account=7, t=T0 + 10 * 3_600_000),              # far future: watermark jumps 10 h
        ev(4, account=7, t=T0 + 120_000),                     # too late for minute AND hour
        ev(5, account=7, t=T0 + 10 * 3_600_000 - 130_000),    # its minute ended >= 60 s before wm: late;
                                                              # hour 9 ends at 10 h, + 60 s > wm: folded
        ev(6, account=7, t=T0 + 10 * 3_600_000 - 5_000),      # the open minute and hour 9: folded
        ev(7, account=7, t=T0 + 9 * 3_600_000 + 1),           # minute late, hour 9 folded
    ]
    produce(pipeline.bootstrap, pipeline.topic, [(str(e["account_id"]).encode(), dumps(e)) for e in seq])
    pipeline.processor()
    pipeline.sink()
    res = pipeline.verify()
    assert res.returncode == 0, res.stdout[-3000:]
    minute = {(r[0], r[1]): (r[3], int(r[4])) for r in clickhouse_rows(pipeline.clickhouse_url, "rollup_minute",
                                                                         final=True)}
    assert minute[(T0 // 1000, acc)] == (2, 2 * big)
    assert minute[((T0 + 60_000) // 1000, acc)] == (1, -5)
    assert ((T0 + 120_000) // 1000, 7) not in minute
    hour = {(r[0], r[1]): (r[3], int(r[4])) for r in clickhouse_rows(pipeline.clickhouse_url, "rollup_hour",
                                                                     final=True)}
    assert hour[(T0 // 1000, acc)] == (3, 2 * big - 5)
    assert hour[((T0 + 9 * 3_600_000) // 1000, 7)] == (3, 3)  # events 5, 6 and 7
    with pipeline.ledger() as conn:
        counts = dict(conn.execute(
            "SELECT reason || '/' || window_kind, sum(count)::bigint FROM dlq_count WHERE pipeline_id = %s "
            "GROUP BY 1", (pipeline.pipeline_id,)).fetchall())
    # event 4: late for minute and hour; events 5 and 7: late for their minute only
    assert counts == {"late/minute": 3, "late/hour": 1}
