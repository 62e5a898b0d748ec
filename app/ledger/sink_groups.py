"""Sink side of the ledger for coalesced inserts: groups of pending batches of one table.

A group is recorded (id, token, ordered member list, block layout) in one transaction
BEFORE its ClickHouse insert, and acknowledged (group and every member) in one
transaction after it. A batch joins at most one group, for good: after a crash the sink
resumes the open group with the same members and the same recorded layout, hence the same
rows in the same blocks with the same token, instead of sending blocks ClickHouse could
not recognise (it deduplicates a block by token and position, not by content).

Proven delivery: a checked group's acknowledgement records why it was checked, and every
repair insert is recorded (its number, hence its token) before it is sent.

The backlog figures (what backpressure bounds) are in backlog.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

import pyarrow as pa
from psycopg.types.json import Jsonb

from app.core.errors import InvariantViolation, RetryableError
from app.ledger import rows as window_rows
from app.ledger.identity import group_id, group_token, repair_token
from app.ledger.ledger import Connection, Ledger


class GroupConflict(RetryableError):
    """A candidate member already joined another group (a second sink raced us): re-plan."""


@dataclass(frozen=True, slots=True)
class BatchHeader:
    """A pending batch not yet in any group, without its payload."""

    batch_id: int
    checkpoint_id: int
    table_name: str
    row_count: int
    age_s: float                       # now() - created_at, by the ledger's clock


BLOCK_CUTS: Final = ("rows", "utc_day")
CHECK_REASONS: Final = ("retried", "sampled")


@dataclass(frozen=True, slots=True)
class BlockLayout:
    """How a group's rows become ClickHouse blocks: part of the group, recorded with it
    before its first insert and used by every retry, whatever the flags say then."""

    block_rows: int                    # at most this many rows per block
    cut: str                           # 'utc_day': also cut where the UTC day changes; 'rows': only every block_rows
    settings: Mapping[str, Any]        # every insert setting except the token, as sent

    def __post_init__(self) -> None:
        if self.block_rows < 1 or self.cut not in BLOCK_CUTS:
            raise InvariantViolation(f"invalid block layout: {self.block_rows} rows per block, cut {self.cut!r}")


@dataclass(frozen=True, slots=True)
class InsertGroup:
    group_id: int
    table_name: str
    token: str
    member_batch_ids: tuple[int, ...]  # checkpoint order
    row_count: int
    reason: str                        # 'rows' | 'max_wait' | 'drain'
    insert_attempts: int = 0
    status: str = "pending"
    layout: BlockLayout | None = None  # None: recorded before migration 0006 (docs/sink.md)


@dataclass(frozen=True, slots=True)
class MemberRows:
    batch_id: int
    checkpoint_id: int                 # = ClickHouse version of the member's rows
    rows: pa.Table                     # window rows (app.ledger.rows schema)


@dataclass(frozen=True, slots=True)
class GroupRepair:
    """One repair insert of a group: the rows a check found missing, under a token used
    for these blocks only."""

    group_id: int
    repair_no: int                     # 1, 2, ... per group, never reused
    token: str
    missing_rows: int
    checked_because: str               # 'retried' | 'sampled'


def new_group(pipeline_id: str, table: str, members: Sequence[BatchHeader], reason: str,
              layout: BlockLayout | None = None) -> InsertGroup:
    ids = tuple(m.batch_id for m in members)
    gid = group_id(pipeline_id, table, ids)
    return InsertGroup(gid, table, group_token(pipeline_id, gid), ids, sum(m.row_count for m in members), reason,
                       layout=layout)


# ---- reads ----------------------------------------------------------------

def open_groups(ledger: Ledger, limit: int = 1) -> list[InsertGroup]:
    """Groups to (re)send first: recorded but not acknowledged, or acknowledged while a
    member is pending again (an operator reset a batch: the whole group is re-sent)."""
    # Two index-driven halves, not one OR: sink_group grows by one row per insert forever,
    # while both the pending groups and the pending batches are few.
    def tx(conn: Connection) -> list[InsertGroup]:
        return [_group(r) for r in conn.execute(
            f"""SELECT {_GROUP_COLUMNS}, seq
               FROM sink_group WHERE pipeline_id = %(p)s AND status = 'pending'
               UNION ALL
               SELECT {_GROUP_COLUMNS}, seq
               FROM sink_group g
               WHERE g.pipeline_id = %(p)s AND g.status = 'acked' AND g.group_id IN (
                     SELECT b.group_id FROM sink_batch b
                     WHERE b.pipeline_id = %(p)s AND b.status = 'pending' AND b.group_id IS NOT NULL)
               ORDER BY seq LIMIT %(n)s""", {"p": ledger.pipeline_id, "n": limit})]
    return ledger.transaction(tx)


def ungrouped_batches(ledger: Ledger, limit: int) -> list[BatchHeader]:
    """Pending batches in no group yet, in checkpoint order (headers only)."""
    def tx(conn: Connection) -> list[BatchHeader]:
        return [BatchHeader(int(r[0]), int(r[1]), r[2], int(r[3]), float(r[4])) for r in conn.execute(
            """SELECT batch_id, checkpoint_id, table_name, row_count,
                      extract(epoch FROM now() - created_at)::float8
               FROM sink_batch
               WHERE pipeline_id = %s AND status = 'pending' AND group_id IS NULL
               ORDER BY checkpoint_id, table_name LIMIT %s""", (ledger.pipeline_id, limit))]
    return ledger.transaction(tx)


def load_members(ledger: Ledger, group: InsertGroup) -> list[MemberRows]:
    """The members' stored rows, in the group's member order."""
    def tx(conn: Connection) -> dict[int, tuple[int, bytes]]:
        return {int(r[0]): (int(r[1]), bytes(r[2])) for r in conn.execute(
            """SELECT batch_id, checkpoint_id, payload FROM sink_batch
               WHERE pipeline_id = %s AND batch_id = ANY(%s) AND payload IS NOT NULL""",
            (ledger.pipeline_id, list(group.member_batch_ids)))}
    found = ledger.transaction(tx)
    missing = [b for b in group.member_batch_ids if b not in found]
    if missing:
        raise InvariantViolation(f"group {group.group_id}: member batches {missing} have no payload")
    return [MemberRows(b, found[b][0], window_rows.decode(found[b][1])) for b in group.member_batch_ids]


# ---- writes ---------------------------------------------------------------

def record_group(ledger: Ledger, group: InsertGroup) -> InsertGroup:
    """Step 1 of a group's life, one transaction: the group row with its block layout and
    every member's group_id. Raises GroupConflict (nothing written) if a member is already
    grouped. Returns the group as recorded.

    A group row with the same id can only pre-exist if its ledger batches were deleted and
    re-created (a reset scope re-running the same offsets): it is taken over, keeping the
    layout and the attempt count it already had, since its earlier blocks may be in
    ClickHouse."""
    if group.layout is None:
        raise InvariantViolation(f"group {group.group_id}: a group is recorded with its block layout")
    layout = group.layout

    def tx(conn: Connection) -> InsertGroup:
        row = conn.execute(
            """INSERT INTO sink_group AS g (pipeline_id, group_id, table_name, token, member_batch_ids,
                                            row_count, reason, insert_block_rows, block_cut, insert_settings)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
               ON CONFLICT (pipeline_id, group_id) DO UPDATE
                 SET status = 'pending', acked_at = NULL, reason = EXCLUDED.reason,
                     row_count = EXCLUDED.row_count, created_at = now(),
                     insert_block_rows = coalesce(g.insert_block_rows, EXCLUDED.insert_block_rows),
                     block_cut = coalesce(g.block_cut, EXCLUDED.block_cut),
                     insert_settings = coalesce(g.insert_settings, EXCLUDED.insert_settings)
               RETURNING insert_block_rows, block_cut, insert_settings, insert_attempts""",
            (ledger.pipeline_id, group.group_id, group.table_name, group.token, list(group.member_batch_ids),
             group.row_count, group.reason, layout.block_rows, layout.cut, Jsonb(dict(layout.settings)))).fetchone()
        assert row is not None
        joined = conn.execute(
            """UPDATE sink_batch SET group_id = %s
               WHERE pipeline_id = %s AND batch_id = ANY(%s) AND status = 'pending' AND group_id IS NULL""",
            (group.group_id, ledger.pipeline_id, list(group.member_batch_ids))).rowcount
        if joined != len(group.member_batch_ids):
            raise GroupConflict(f"group {group.group_id}: {len(group.member_batch_ids) - joined} of "
                                f"{len(group.member_batch_ids)} members already grouped or acknowledged")
        # a group taken over keeps its attempt count: its token was sent before, so its
        # next send is a retry, checked before it is acknowledged (app/sink/proof.py)
        return replace(group, layout=_layout(row), insert_attempts=int(row[3]))
    return ledger.transaction(tx)


def adopt_layout(ledger: Ledger, group: InsertGroup, layout: BlockLayout) -> InsertGroup:
    """Give a group recorded before migration 0006 its layout, once: if another sink
    recorded one first, that one is kept and returned."""
    def tx(conn: Connection) -> InsertGroup:
        conn.execute(
            """UPDATE sink_group SET insert_block_rows = %s, block_cut = %s, insert_settings = %s
               WHERE pipeline_id = %s AND group_id = %s AND insert_block_rows IS NULL""",
            (layout.block_rows, layout.cut, Jsonb(dict(layout.settings)), ledger.pipeline_id, group.group_id))
        row = conn.execute(
            """SELECT insert_block_rows, block_cut, insert_settings FROM sink_group
               WHERE pipeline_id = %s AND group_id = %s""", (ledger.pipeline_id, group.group_id)).fetchone()
        if row is None or row[0] is None:
            raise InvariantViolation(f"group {group.group_id} vanished from the ledger while resuming it")
        return replace(group, layout=_layout(row))
    return ledger.transaction(tx)


def record_group_attempt(ledger: Ledger, group: InsertGroup) -> None:
    """Counted before each insert, on the group and its members, so replays are visible."""
    def tx(conn: Connection) -> None:
        conn.execute("""UPDATE sink_group SET insert_attempts = insert_attempts + 1
                        WHERE pipeline_id = %s AND group_id = %s""", (ledger.pipeline_id, group.group_id))
        conn.execute("""UPDATE sink_batch SET insert_attempts = insert_attempts + 1
                        WHERE pipeline_id = %s AND batch_id = ANY(%s)""",
                     (ledger.pipeline_id, list(group.member_batch_ids)))
    ledger.transaction(tx)


def record_repair(ledger: Ledger, group: InsertGroup, missing_rows: int, checked_because: str) -> GroupRepair:
    """Before a repair insert, one transaction: the group's next repair number and its
    token. A number is never reused, also after a crash: the blocks a repair sent are
    known only to the process that computed them, so a restarted sink checks again and
    takes a new number rather than send other blocks under an old token (which ClickHouse
    would drop, block by block, as duplicates). The group row is locked so that two sinks
    cannot take the same number."""
    if missing_rows < 1 or checked_because not in CHECK_REASONS:
        raise InvariantViolation(f"group {group.group_id}: a repair of {missing_rows} rows ({checked_because!r})")

    def tx(conn: Connection) -> GroupRepair:
        if conn.execute("SELECT 1 FROM sink_group WHERE pipeline_id = %s AND group_id = %s FOR UPDATE",
                        (ledger.pipeline_id, group.group_id)).fetchone() is None:
            raise InvariantViolation(f"group {group.group_id} vanished from the ledger while repairing it")
        row = conn.execute("""SELECT coalesce(max(repair_no), 0) + 1 FROM sink_group_repair
                              WHERE pipeline_id = %s AND group_id = %s""",
                           (ledger.pipeline_id, group.group_id)).fetchone()
        assert row is not None
        repair = GroupRepair(group.group_id, int(row[0]), repair_token(ledger.pipeline_id, group.group_id, int(row[0])),
                             missing_rows, checked_because)
        conn.execute("""INSERT INTO sink_group_repair (pipeline_id, group_id, repair_no, token, missing_rows,
                                                       checked_because)
                        VALUES (%s, %s, %s, %s, %s, %s)""",
                     (ledger.pipeline_id, group.group_id, repair.repair_no, repair.token, missing_rows,
                      checked_because))
        return repair
    return ledger.transaction(tx)


def acknowledge_group(ledger: Ledger, group: InsertGroup, checked: str | None = None) -> None:
    """After a successful insert (and, when `checked` says why, a check in ClickHouse that
    found every row), one transaction: the group and all its members acked."""
    if checked is not None and checked not in CHECK_REASONS:
        raise InvariantViolation(f"group {group.group_id}: unknown check reason {checked!r}")

    def tx(conn: Connection) -> None:
        conn.execute("""UPDATE sink_group SET status = 'acked', acked_at = now(), checked = coalesce(%s, checked)
                        WHERE pipeline_id = %s AND group_id = %s""", (checked, ledger.pipeline_id, group.group_id))
        conn.execute("""UPDATE sink_batch SET status = 'acked', acked_at = now()
                        WHERE pipeline_id = %s AND batch_id = ANY(%s) AND status = 'pending'""",
                     (ledger.pipeline_id, list(group.member_batch_ids)))
    ledger.transaction(tx)


_GROUP_COLUMNS: Final = ("group_id, table_name, token, member_batch_ids, row_count, reason, insert_attempts, "
                         "status, insert_block_rows, block_cut, insert_settings")


def _layout(r: Sequence[Any]) -> BlockLayout | None:
    """(insert_block_rows, block_cut, insert_settings) -> the layout; NULLs: before 0006."""
    if r[0] is None:
        return None
    return BlockLayout(int(r[0]), str(r[1]), dict(r[2]))


def _group(r: Sequence[Any]) -> InsertGroup:
    return InsertGroup(int(r[0]), r[1], r[2], tuple(int(b) for b in r[3]), int(r[4]), r[5], int(r[6]), r[7],
                       _layout(r[8:11]))
