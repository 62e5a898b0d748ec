"""Deterministic identities: the same input always yields the same id or token.

One hash for every id (`stable_id`): a sink batch's id comes from the input range it
covers, a sink group's from its ordered members; ClickHouse tokens are built on them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

_ID_MASK = (1 << 63) - 1  # fits both Postgres bigint and ClickHouse UInt64


def stable_id(text: str) -> int:
    """A 63-bit id of `text` (blake2b): stable across processes, releases and machines."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") & _ID_MASK


def batch_id(pipeline_id: str, source: str, topic: str, table: str,
             offset_ranges: Mapping[int, tuple[int, int]], scope: str = "") -> int:
    """A 63-bit id from what the batch covers: pipeline, source, table and the
    `[from, to)` offsets per partition (plus a scope, e.g. a backfill's request)."""
    ranges = ",".join(f"{p}:{a}-{b}" for p, (a, b) in sorted(offset_ranges.items()))
    return stable_id(f"{pipeline_id}|{source}|{topic}|{table}|{scope}|{ranges}")


def group_id(pipeline_id: str, table: str, member_batch_ids: Sequence[int]) -> int:
    """A sink group's id: the same members (in the same order) always give the same id."""
    return stable_id(f"{pipeline_id}|{table}|" + ",".join(str(b) for b in member_batch_ids))


def group_token(pipeline_id: str, gid: int) -> str:
    """The ClickHouse insert_deduplication_token of a group (blocks get _0, _1, ... on top)."""
    return f"{pipeline_id}:g{gid}"


def repair_token(pipeline_id: str, gid: int, repair_no: int) -> str:
    """The token of a group's repair insert number `repair_no` (1, 2, ...): never equal to
    the group's own token or to another repair's, so ClickHouse cannot take a repair's
    blocks for blocks it already holds (docs/sink.md, "Proven delivery")."""
    return f"{group_token(pipeline_id, gid)}:r{repair_no}"


def dedup_token(pipeline_id: str, batch: int) -> str:
    """The ClickHouse insert_deduplication_token of a batch: same batch, same token."""
    return f"{pipeline_id}:{batch}"
