"""The DLQ record stays small whatever the input (contract §5)."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from app.processor.dlq import RAW_CAP, encode_dead_letter

PRODUCER_MESSAGE_MAX_BYTES = 1_000_000  # librdkafka's default message.max.bytes, which the DLQ producer keeps
WELL_UNDER = 600_000


def _encode(value: bytes | None, *, reason: str = "invalid", key: bytes | None = b"1",
            error: str = "bad") -> tuple[bytes | None, dict[str, object], int]:
    k, v = encode_dead_letter(reason=reason, window_kind="minute" if reason == "late" else None,
                              source_topic="events", partition=3, offset=1841, key=key, value=value, error=error)
    return k, json.loads(v), len(v) + len(k or b"")


def test_small_values_are_kept_whole() -> None:
    event = b'{"event_id":"e","account_id":1,"country":"DE","event_time":5,"amount":7,"kind":"k"}'
    key, doc, _ = _encode(event, reason="late")
    assert key == b"1"
    assert doc["event"] == json.loads(event) and doc["raw"] == event.decode()
    assert "raw_bytes" not in doc and doc["source_offset"] == 1841 and doc["window_kind"] == "minute"
    _, doc, _ = _encode(b"\xff\x00")
    assert doc["raw"] == base64.b64encode(b"\xff\x00").decode() and doc["event"] is None
    _, doc, _ = _encode(None)
    assert doc["raw"] is None


@pytest.mark.parametrize("value, as_text", [
    (b"x" * (RAW_CAP + 1), True),
    (("\u00e9" * RAW_CAP).encode(), True),        # 2-byte characters: the cut falls on a boundary
    (b"ab" + ("\u20ac" * RAW_CAP).encode(), True),  # 3-byte characters: the cut splits one, cut back
    (b"\xff" * (3 * RAW_CAP), False),              # not UTF-8: base64 of exactly the first 64 KiB
    (bytes(range(32)) * (4 * RAW_CAP // 32), True),  # control characters: JSON escapes each as 6 bytes
])
@pytest.mark.parametrize("reason", ["late", "invalid"])
def test_big_values_are_capped_with_length_and_hash(value: bytes, as_text: bool, reason: str) -> None:
    _, doc, size = _encode(value, reason=reason)
    assert doc["event"] is None
    assert doc["raw_bytes"] == len(value) and doc["raw_sha256"] == hashlib.sha256(value).hexdigest()
    raw = doc["raw"]
    assert isinstance(raw, str)
    if as_text:
        text = raw.encode("utf-8")
        assert value.startswith(text) and RAW_CAP - 3 <= len(text) <= RAW_CAP
    else:
        assert base64.b64decode(raw, validate=True) == value[:RAW_CAP]
    assert size < 450_000


def test_worst_case_record_is_well_under_the_producer_limit() -> None:
    # every byte of value and key escaped to \u00XX, the longest error text: still small
    worst = bytes([1]) * (10 * RAW_CAP)
    key, doc, size = _encode(worst, key=bytes([1]) * (10 * RAW_CAP), error="e" * 100_000)
    assert size < WELL_UNDER < PRODUCER_MESSAGE_MAX_BYTES, size
    assert key == bytes([1]) * RAW_CAP and doc["key_bytes"] == 10 * RAW_CAP
    assert doc["key_sha256"] == hashlib.sha256(bytes([1]) * (10 * RAW_CAP)).hexdigest()
    assert len(str(doc["error"])) <= 1024
    # a value just at the cap is kept whole; as a late event it appears twice (event and raw)
    at_cap = b'{"pad":"' + b"\\\\" * ((RAW_CAP - 10) // 2) + b'"}'
    assert len(at_cap) <= RAW_CAP
    _, doc, size = _encode(at_cap, reason="late")
    assert "raw_bytes" not in doc and size < 300_000
