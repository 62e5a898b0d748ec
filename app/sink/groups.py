"""Pure rules of coalesced inserts: which pending batches form the next group, and the
exact rows (and blocks) a group inserts. No I/O here: the same inputs always give the
same group, the same row order and, for the group's recorded layout, the same block
boundaries, which is what lets ClickHouse recognise every block of a retried insert by
its token (docs/sink.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from app.ledger.sink_groups import BatchHeader, BlockLayout, InsertGroup, MemberRows

DAY_S: Final = 86_400
ROLLUP_COLUMNS: Final = ("window_start", "account_id", "country", "event_count", "sum_amount", "batch_id",
                         "version")
# A total order: (window, key) is unique within a batch and version is unique per batch,
# so sorting by all four never depends on the order rows arrived in. window_start first
# puts each day partition's rows side by side: few parts per block.
SORT_KEYS: Final = [("window_start", "ascending"), ("account_id", "ascending"), ("country", "ascending"),
                    ("version", "ascending")]


@dataclass(frozen=True, slots=True)
class GroupPolicy:
    batch_rows: int = 100_000      # a group closes once it holds this many rows (a backlog is cut into such groups)
    max_wait_s: float = 5.0        # a group smaller than min_rows goes once its oldest batch waited this long
    min_rows: int = 10_000         # ... a group this large goes at once: no insert waits for rows it need not have

    @property
    def ready_rows(self) -> int:
        return min(self.min_rows, self.batch_rows)


@dataclass(frozen=True, slots=True)
class GroupPlan:
    table_name: str
    members: tuple[BatchHeader, ...]
    reason: str                    # 'rows' | 'max_wait' | 'drain'

    @property
    def row_count(self) -> int:
        return sum(m.row_count for m in self.members)


def plan_group(batches: Sequence[BatchHeader], policy: GroupPolicy, *, drain: bool) -> GroupPlan | None:
    """The next group from ungrouped pending batches (checkpoint order), or None to wait.

    Per table, consecutive batches accumulate up to batch_rows (the batch that reaches it
    included). The group goes as soon as it holds min_rows ('rows'): waiting for more
    would only add latency, and a backlog still makes large groups because everything
    pending, up to batch_rows, is taken. A group below min_rows goes only once its oldest
    batch has waited max_wait_s ('max_wait') or no more batches will come (`drain`: the
    processor finished its --until-end run). Among ready tables, the one whose oldest batch
    is oldest goes first."""
    by_table: dict[str, list[BatchHeader]] = {}
    for b in sorted(batches, key=lambda b: (b.checkpoint_id, b.table_name)):
        by_table.setdefault(b.table_name, []).append(b)
    ready: list[GroupPlan] = []
    for table, pending in sorted(by_table.items()):
        members: list[BatchHeader] = []
        rows = 0
        for b in pending:
            members.append(b)
            rows += b.row_count
            if rows >= policy.batch_rows:
                break
        if rows >= policy.ready_rows:
            reason = "rows"
        elif drain:
            reason = "drain"
        elif max(m.age_s for m in members) >= policy.max_wait_s:
            reason = "max_wait"
        else:
            continue
        ready.append(GroupPlan(table, tuple(members), reason))
    if not ready:
        return None
    return min(ready, key=lambda g: (g.members[0].checkpoint_id, g.table_name))


def rollup_columns(rows: pa.Table, batch_id: int, version: int) -> pa.Table:
    """Ledger window rows -> the rollup table's columns (contract §4)."""
    n = rows.num_rows
    return pa.Table.from_arrays(
        [rows.column("window_start").cast(pa.timestamp("s")),
         rows.column("account_id"),
         rows.column("country"),
         rows.column("event_count"),
         rows.column("sum_amount"),
         pa.array(np.full(n, batch_id, dtype=np.uint64)),
         pa.array(np.full(n, version, dtype=np.uint64))],
        names=list(ROLLUP_COLUMNS))


def group_rows(members: Sequence[MemberRows]) -> pa.Table:
    """Every member's rows (version = its checkpoint id), in one deterministic total order."""
    table = pa.concat_tables([rollup_columns(m.rows, m.batch_id, m.checkpoint_id) for m in members])
    table = table.combine_chunks()
    return table.take(pc.sort_indices(table, sort_keys=SORT_KEYS))


def split_blocks(table: pa.Table, block_rows: int) -> pa.Table:
    """Re-chunk into record batches of exactly block_rows (the last one shorter): the
    writer sends each record batch as one ClickHouse block."""
    table = table.combine_chunks()
    return pa.Table.from_batches(table.to_batches(max_chunksize=block_rows), schema=table.schema)


def block_count(rows: int, block_rows: int) -> int:
    return max(1, -(-rows // block_rows))


def cut_blocks(table: pa.Table, block_rows: int, cut: str) -> pa.Table:
    """A group's rows as the blocks of its recorded layout (record batches, in order).

    'rows': every block_rows rows (`split_blocks`), the layout of groups recorded before
    migration 0006. 'utc_day': a new block also starts wherever the UTC day of
    window_start changes, so a block holds one day: it touches one day partition (two on
    a server whose time zone is not UTC), never more than max_partitions_per_insert_block,
    and makes as many parts as the 'rows' cut did. Rows arrive sorted by window_start
    (`group_rows`); vectorised: only the loops over days and blocks are Python."""
    if cut == "rows":
        return split_blocks(table, block_rows)
    if cut != "utc_day":
        raise ValueError(f"unknown block cut {cut!r}")
    table = table.combine_chunks()
    n = table.num_rows
    if n == 0:
        return split_blocks(table, block_rows)
    day = table.column("window_start").cast(pa.int64()).to_numpy() // DAY_S
    day_starts = np.concatenate(([0], np.flatnonzero(day[1:] != day[:-1]) + 1, [n]))
    starts = np.concatenate([np.arange(a, b, block_rows) for a, b in zip(day_starts[:-1], day_starts[1:],
                                                                          strict=True)])
    ends = np.append(starts[1:], n)
    (whole,) = table.to_batches()
    return pa.Table.from_batches([whole.slice(int(a), int(b - a)) for a, b in zip(starts, ends, strict=True)],
                                 schema=table.schema)


def resolve_layout(group: InsertGroup, *, current: BlockLayout, legacy: BlockLayout) -> tuple[BlockLayout, bool]:
    """The layout of a group recorded before migration 0006 (none recorded): (layout,
    assumed). Never sent (no attempt counted, still pending): nothing in ClickHouse
    carries its token, any layout is safe, so the current one. Sent before: its blocks
    were cut by the pre-0006 rules with the flags of the sink that sent it, which the
    ledger does not know; the current flags are assumed (exactly what the old sink did on
    a resume). docs/sink.md says how to upgrade without that assumption: drain first."""
    if group.insert_attempts == 0 and group.status == "pending":
        return current, False
    return legacy, True
