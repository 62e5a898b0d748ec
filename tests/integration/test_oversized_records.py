"""Oversized input never crashes the processor and never loses a record (issue 9, item 1).

Records of 600 KB, 2 MB and 10 MB (valid on time, valid late, invalid), mixed with normal
traffic, through the real pipeline. Before the fix a 600 KB late event made the DLQ
producer raise MSG_SIZE_TOO_LARGE (the DLQ record carried the event twice); on the way
down the revoke callback committed offsets past records whose windows were never applied,
so the restart exited 0 and verify reported a mismatch. Now: a DLQ record is capped
(contract §5: a source value over 64 KiB leaves `raw` = its first 64 KiB, `event` null,
`raw_bytes` and `raw_sha256` added), an input value above `--max-record-bytes` is
`invalid`, and the run is exact."""

from __future__ import annotations

import base64
import hashlib
import json
import random
from collections import Counter

import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from app.core.kafka import producer_config
from tests.conftest import Pipeline
from tests.helpers import read_topic

T0 = 1_763_596_800_000  # 2025-11-20T00:00:00Z
KIB = 1024
CAP = 64 * KIB
TOPIC_MAX_BYTES = 16 * 1024 * 1024
SIZES = (600_000, 2_000_000, 10_000_000)


def _event(i: int, account: int, t: int, pad: str = "") -> bytes:
    d: dict[str, object] = {"event_id": f"e-{i}", "account_id": account, "country": "DE", "event_time": t,
                            "amount": i, "kind": "purchase"}
    if pad:
        d["pad"] = pad
    return json.dumps(d).encode()


def _pad(rng: random.Random, size: int) -> str:
    # hex text: JSON-safe and hardly compressible, so the broker sees the real size
    return rng.randbytes(size // 2 + 1).hex()[:size]


def _records(rng: random.Random, big_sizes: tuple[int, ...]) -> list[tuple[bytes, bytes]]:
    """Normal traffic on 20 accounts, the watermark moving forward one second per record,
    with a block of big records every 60 records: for each size a valid on-time event, a
    valid event late for both window kinds, and an invalid value of that size."""
    out: list[tuple[bytes, bytes]] = []
    i = 0
    t = T0
    for size in big_sizes:
        for _ in range(60):
            acc = i % 20
            out.append((b"%d" % acc, _event(i, acc, t)))
            i += 1
            t += 1_000
        out.append((b"7", _event(i, 7, t, _pad(rng, size))))                        # on time
        out.append((b"8", _event(i + 1, 8, T0 - 3 * 3_600_000, _pad(rng, size))))  # late: minute and hour
        bad = b'{"event_id": "x", "pad": "' + _pad(rng, size).encode() + b'"'       # not JSON (cut)
        out.append((b"9", bad))
        # invalid by content whatever the size limit: non-UTF-8 bytes and control characters
        out.append((b"9", b"\xff" + rng.randbytes(size)))
        out.append((b"9", bytes(rng.randrange(0, 32) for _ in range(min(size, 200_000)))))
        i += 2
    for _ in range(60):  # the watermark moves past the windows of the last block
        acc = i % 20
        out.append((b"%d" % acc, _event(i, acc, t)))
        i += 1
        t += 1_000
    return out


def _produce_big(p: Pipeline, records: list[tuple[bytes, bytes]], partitions: int = 2) -> None:
    admin = AdminClient({"bootstrap.servers": p.bootstrap, "log_level": 0})
    futures = admin.create_topics([NewTopic(p.topic, num_partitions=partitions, replication_factor=1,
                                            config={"max.message.bytes": str(TOPIC_MAX_BYTES)})])
    futures[p.topic].result(timeout=30)
    producer = Producer(producer_config(p.bootstrap, **{"message.max.bytes": TOPIC_MAX_BYTES + 1024,
                                                        "compression.type": "none"}))
    for key, value in records:
        producer.produce(p.topic, value, key)
        producer.poll(0)
    assert producer.flush(60) == 0


def _dlq_identities(p: Pipeline) -> tuple[list[dict[str, object]], Counter[tuple[str, str]]]:
    docs = [orjson.loads(v) for _, _, _, v in read_topic(p.bootstrap, p.dlq_topic)]
    distinct = {(d["source_partition"], d["source_offset"], d["reason"], d["window_kind"]) for d in docs}
    return docs, Counter((r, k or "") for _, _, r, k in distinct)


def _ledger_counts(p: Pipeline) -> Counter[tuple[str, str]]:
    with p.ledger() as conn:
        rows = conn.execute("SELECT reason, window_kind, sum(count)::bigint FROM dlq_count WHERE pipeline_id = %s "
                            "GROUP BY 1, 2", (p.pipeline_id,)).fetchall()
    return Counter({(r, k): n for r, k, n in rows if n})


def _expected_raw(source: bytes) -> str:
    """Contract §5 / docs/input.md: the first 64 KiB as text, cut back to a whole UTF-8
    character (at most 3 bytes fewer); base64 of exactly those 64 KiB when they are not text."""
    head = source[:CAP]
    for cut in range(4):
        try:
            return head[:len(head) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return base64.b64encode(head).decode("ascii")


def _check_capped(doc: dict[str, object], source: bytes) -> None:
    assert doc["event"] is None
    assert doc["raw_bytes"] == len(source)
    assert doc["raw_sha256"] == hashlib.sha256(source).hexdigest()
    assert doc["raw"] == _expected_raw(source)


@pytest.mark.parametrize("limit", [None, 12 * 1024 * 1024], ids=["default-1MiB", "12MiB"])
def test_big_records_mixed_with_normal_traffic(pipeline: Pipeline, limit: int | None) -> None:
    """Default limit (1 MiB): the 600 KB events are valid (folded or late), the 2 MB and
    10 MB ones invalid by size. With a 12 MB limit every size is valid and the late 10 MB
    event goes to the DLQ: its record must still be small."""
    p = pipeline
    rng = random.Random(9)
    records = _records(rng, SIZES)
    _produce_big(p, records)
    flags = ("--batch-max-wait", "0.2s", "--poll-records", "50", "--log-level", "info")
    rules = () if limit is None else ("--max-record-bytes", str(12 * 1024 * 1024))
    first = p.processor(*flags, *rules, check=False)
    assert first.returncode == 0, first.stderr[-4000:]
    assert "MSG_SIZE_TOO_LARGE" not in first.stderr
    p.sink()
    res = p.verify(*rules)
    assert res.returncode == 0, f"verify exit {res.returncode}\n{res.stdout[-4000:]}\n{res.stderr[-2000:]}"
    assert "EXACT" in res.stdout

    docs, identities = _dlq_identities(p)
    ledger = _ledger_counts(p)
    assert identities == ledger, (identities, ledger)
    limit_bytes = 1 << 20 if limit is None else limit
    late_big = [s for s in SIZES if s + 200 <= limit_bytes]
    # each size: 3 invalid by content, plus the two valid-shaped events when over the limit;
    # the late event of each size within the limit: too late for its minute and its hour
    expected_invalid = 3 * len(SIZES) + 2 * (len(SIZES) - len(late_big))
    assert ledger == Counter({("invalid", ""): expected_invalid, ("late", "minute"): len(late_big),
                              ("late", "hour"): len(late_big)})
    assert max(len(orjson.dumps(d)) for d in docs) < 600_000
    by_offset = {(part, off): v for part, off, _, v in read_topic(p.bootstrap, p.topic)}
    capped = 0
    for d in docs:
        source = by_offset[(d["source_partition"], d["source_offset"])]
        if len(source) > CAP:
            _check_capped(d, source)
            capped += 1
        else:
            assert "raw_bytes" not in d
    assert capped >= 4 * len(SIZES)  # at least the 4 big invalid or late records of each size
    oversize = [d for d in docs if d["reason"] == "invalid" and "--max-record-bytes" in str(d["error"])]
    assert len(oversize) == sum(1 for v in by_offset.values() if len(v) > limit_bytes), [d["error"] for d in docs]
    if limit is None:
        assert oversize
