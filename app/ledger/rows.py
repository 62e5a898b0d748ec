"""Window rows as they travel through the ledger: one Arrow IPC payload per batch/snapshot.

A row is a window's full current value (not an increment): replaying rows in checkpoint
order rebuilds the state, and re-inserting them into ClickHouse is idempotent.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final

import pyarrow as pa

WINDOW_ROW_SCHEMA: Final = pa.schema([
    pa.field("kind", pa.int8()),              # WindowKind value
    pa.field("partition", pa.int32()),        # input partition that owns the window
    pa.field("window_start", pa.int64()),     # epoch seconds
    pa.field("account_id", pa.uint64()),
    pa.field("country", pa.string()),
    pa.field("event_count", pa.uint64()),
    pa.field("sum_amount", pa.decimal128(38, 0)),  # Int128 in ClickHouse; exact beyond int64
])


@dataclass(frozen=True, slots=True)
class WindowRow:
    kind: int
    partition: int
    window_start_s: int
    account_id: int
    country: str
    event_count: int
    sum_amount: int


def rows_to_table(rows: Iterable[WindowRow]) -> pa.Table:
    kinds, parts, starts, accounts, countries, counts, sums = [], [], [], [], [], [], []
    for r in rows:
        kinds.append(r.kind)
        parts.append(r.partition)
        starts.append(r.window_start_s)
        accounts.append(r.account_id)
        countries.append(r.country)
        counts.append(r.event_count)
        sums.append(r.sum_amount)
    return pa.Table.from_arrays(
        [pa.array(kinds, pa.int8()), pa.array(parts, pa.int32()), pa.array(starts, pa.int64()),
         pa.array(accounts, pa.uint64()), pa.array(countries, pa.string()),
         pa.array(counts, pa.uint64()), pa.array(sums, pa.decimal128(38, 0))],
        schema=WINDOW_ROW_SCHEMA)


def encode(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema,
                           options=pa.ipc.IpcWriteOptions(compression="lz4")) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def decode(payload: bytes) -> pa.Table:
    with pa.ipc.open_stream(pa.py_buffer(payload)) as reader:
        return reader.read_all()


def iter_rows(table: pa.Table) -> Iterator[WindowRow]:
    cols = [table.column(n).to_pylist() for n in WINDOW_ROW_SCHEMA.names]
    for kind, part, start, acc, country, count, amount in zip(*cols, strict=True):
        yield WindowRow(kind, part, start, acc, country, count, int(amount))
