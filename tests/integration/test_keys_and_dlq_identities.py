"""Contract §2's key rule and verify's new checks, through the real pipeline (issue 9,
items 3 and 8):

- a record whose key is not exactly its account id in ASCII decimal (null, another
  account, a leading zero, a sign, a space) is `invalid` in the processor and in verify;
- verify compares the DLQ topic's distinct (source_partition, source_offset, reason,
  window_kind) with its truth: a record missing from the topic (or one too many) is a
  MISMATCH even when the ledger's counts are right;
- an account whose valid events sit in two partitions (a producer with another
  partitioner) is reported by verify as a distinct error."""

from __future__ import annotations

import json

import orjson
from confluent_kafka import Producer

from app.core.kafka import ensure_topic, producer_config
from tests.conftest import Pipeline
from tests.helpers import read_topic

T0 = 1_763_596_800_000


def ev(i: int, account: int, t: int) -> bytes:
    return json.dumps({"event_id": f"e-{i}", "account_id": account, "country": "DE", "event_time": t,
                       "amount": i, "kind": "purchase"}).encode()


BAD_KEYS: list[bytes | None] = [None, b"", b"43", b"042", b"+42", b" 42", b"42 ", b"4_2"]


def _produce(p: Pipeline, records: list[tuple[int, bytes | None, bytes]], partitions: int = 2) -> None:
    ensure_topic(p.bootstrap, p.topic, partitions, replication=1)
    producer = Producer(producer_config(p.bootstrap))
    for partition, key, value in records:
        producer.produce(p.topic, value, key, partition=partition)
    assert producer.flush(30) == 0


def _ledger_counts(p: Pipeline) -> dict[str, int]:
    with p.ledger() as conn:
        return dict(conn.execute(
            "SELECT reason || '/' || window_kind, sum(count)::bigint FROM dlq_count WHERE pipeline_id = %s "
            "GROUP BY 1", (p.pipeline_id,)).fetchall())


def test_keys_that_are_not_the_account_id_are_invalid(pipeline: Pipeline) -> None:
    p = pipeline
    records: list[tuple[int, bytes | None, bytes]] = [(0, b"42", ev(i, 42, T0 + i * 1000)) for i in range(20)]
    records += [(0, key, ev(100 + i, 42, T0 + 20_000 + i)) for i, key in enumerate(BAD_KEYS)]
    records += [(0, b"42", ev(200, 42, T0 + 30_000))]
    _produce(p, records, partitions=1)
    p.processor("--batch-max-wait", "0.1s")
    p.sink()
    assert _ledger_counts(p) == {"invalid/": len(BAD_KEYS)}
    dlq = [orjson.loads(v) for _, _, _, v in read_topic(p.bootstrap, p.dlq_topic)]
    errors = {d["source_offset"]: d["error"] for d in dlq}
    assert sorted(errors) == list(range(20, 20 + len(BAD_KEYS)))
    assert all("account_id 42 in ASCII decimal" in e for e in errors.values()), errors
    assert "null" in errors[20]
    res = p.verify()
    assert res.returncode == 0 and "EXACT" in res.stdout, res.stdout[-3000:]
    assert f"dlq topic {p.dlq_topic}: equal ({len(BAD_KEYS)} distinct identities" in res.stdout


def test_verify_reads_the_dlq_topic_and_finds_a_missing_record(pipeline: Pipeline) -> None:
    p = pipeline
    p.gen("--seed", "4", "--events", "3000", "--accounts", "200", "--partitions", "2", "--late-fraction", "0.05",
          "--invalid-fraction", "0.02", "--event-time-rate", "100")
    p.processor("--batch-max-wait", "0.1s")
    p.sink()
    assert p.verify().returncode == 0
    # A copy of the DLQ topic without its first record, and with another twice: the ledger's
    # counts still agree with the truth, the topic does not.
    records = read_topic(p.bootstrap, p.dlq_topic)
    assert len(records) > 20
    copy = f"{p.dlq_topic}.copy"
    ensure_topic(p.bootstrap, copy, 1, replication=1)
    producer = Producer(producer_config(p.bootstrap))
    for _, _, key, value in records[1:] + records[5:6]:
        producer.produce(copy, value, key)
    assert producer.flush(30) == 0
    try:
        res = p.verify("--dlq-topic", copy)
        assert res.returncode == 1, res.stdout[-3000:]
        first = orjson.loads(records[0][3])  # type: ignore[arg-type]
        verdict = res.stdout.strip().splitlines()[-1]
        assert verdict == f"verify: MISMATCH (dlq topic {copy}: 1 missing identities)", verdict
        name = first["reason"] + (f"/{first['window_kind']}" if first["window_kind"] else "")
        assert (f"{name} partition {first['source_partition']}, missing from the topic: offsets "
                f"{first['source_offset']}") in res.stdout
    finally:
        from confluent_kafka.admin import AdminClient
        admin = AdminClient({"bootstrap.servers": p.bootstrap, "log_level": 0})
        for f in admin.delete_topics([copy]).values():
            f.result(timeout=30)


def test_verify_reports_an_account_in_two_partitions(pipeline: Pipeline) -> None:
    """The key is right but the record sits in another partition (another partitioner, or
    partitions added): each partition emits its own value of the window, which verify must
    name as its own error."""
    p = pipeline
    records = [(0, b"7", ev(i, 7, T0 + i * 1000)) for i in range(10)]
    records += [(1, b"7", ev(100, 7, T0 + 500))]   # account 7 again, in partition 1
    records += [(1, b"8", ev(101, 8, T0 + 600))]
    _produce(p, records, partitions=2)
    p.processor("--batch-max-wait", "0.1s")
    p.sink()
    res = p.verify()
    assert res.returncode == 1, res.stdout[-3000:]
    assert "accounts in more than one partition: 1" in res.stdout
    assert "  account 7: partitions 0, 1" in res.stdout
    assert "1 accounts in more than one partition" in res.stdout.strip().splitlines()[-1]
