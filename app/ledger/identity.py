"""Deterministic sink-batch identity: the same input range always yields the same id."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

_ID_MASK = (1 << 63) - 1  # fits both Postgres bigint and ClickHouse UInt64


def batch_id(pipeline_id: str, source: str, topic: str, table: str,
             offset_ranges: Mapping[int, tuple[int, int]], scope: str = "") -> int:
    """A 63-bit id from what the batch covers: pipeline, source, table and the
    `[from, to)` offsets per partition (plus a scope, e.g. a backfill's request)."""
    ranges = ",".join(f"{p}:{a}-{b}" for p, (a, b) in sorted(offset_ranges.items()))
    text = f"{pipeline_id}|{source}|{topic}|{table}|{scope}|{ranges}"
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") & _ID_MASK


def dedup_token(pipeline_id: str, batch: int) -> str:
    """The ClickHouse insert_deduplication_token of a batch: same batch, same token."""
    return f"{pipeline_id}:{batch}"
