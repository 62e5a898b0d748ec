"""Window rows as Arrow columns straight from a store's dirty keys (the emit hot path).

`rows_to_table` builds one `WindowRow` per window and converts `sum_amount` from Python
ints (~600 ns/row); here the columns come from the keys and values at once and the sums
go through int64 + a cast to decimal128 (exact), falling back to the Python-int
conversion only when a sum is outside int64. The table equals
`rows_to_table([WindowRow(...) for each key])`, row for row.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from app.core.errors import InvariantViolation
from app.ledger.rows import WINDOW_ROW_SCHEMA
from app.processor.deltas import LETTERS, Keys, Values
from app.processor.windows import WindowKey, WindowKind

_DECIMAL = pa.decimal128(38, 0)


def window_table(partition: int, keys: Sequence[WindowKey], counts: Sequence[int],
                 sums: Sequence[int]) -> pa.Table:
    """Rows (kind, partition, start_s, account, country, count, sum) in the order of `keys`."""
    if not keys:
        return WINDOW_ROW_SCHEMA.empty_table()
    kinds, starts, accounts, countries = zip(*keys, strict=True)
    return columns_table(partition, np.array(kinds, dtype=np.int8), np.array(starts, dtype=np.int64) // 1000,
                         np.array(accounts, dtype=np.uint64), pa.array(countries, pa.string()), counts, sums)


def columns_table(partition: int, kinds: np.ndarray, starts_s: np.ndarray, accounts: np.ndarray,
                  countries: pa.Array, counts: Sequence[int], sums: Sequence[int]) -> pa.Table:
    n = len(kinds)
    try:
        sum_arr = pa.array(np.array(sums, dtype=np.int64)).cast(_DECIMAL)
    except OverflowError:  # a sum beyond int64: the exact (slower) conversion
        sum_arr = pa.array(sums, _DECIMAL)
    return pa.Table.from_arrays([
        pa.array(kinds.astype(np.int8, copy=False)),
        pa.array(np.full(n, partition, dtype=np.int32)),
        pa.array(starts_s.astype(np.int64, copy=False)),
        pa.array(accounts.astype(np.uint64, copy=False)),
        countries,
        pa.array(np.array(counts, dtype=np.uint64)),
        sum_arr,
    ], schema=WINDOW_ROW_SCHEMA)


def tables_by_kind(tables: Sequence[pa.Table]) -> dict[str, pa.Table]:
    """Per rollup table, the rows of that kind in input order (partition by partition)."""
    nonempty = [t for t in tables if t.num_rows]
    if not nonempty:
        return {}
    all_rows = pa.concat_tables(nonempty).combine_chunks()
    kinds = all_rows.column("kind").to_numpy()
    out: dict[str, pa.Table] = {}
    for k in np.unique(kinds).tolist():
        idx = np.flatnonzero(kinds == k)
        out[WindowKind(k).table] = (all_rows if idx.size == all_rows.num_rows
                                    else all_rows.take(pa.array(idx))).combine_chunks()
    return out


def rows_table(partition: int, keys: Keys, values: Values) -> pa.Table:
    """Window rows from columns: no Python object per row (the emit hot path)."""
    n = len(keys)
    if n == 0:
        return WINDOW_ROW_SCHEMA.empty_table()
    sums = np.empty((n, 2), dtype=np.uint64)
    sums[:, 0], sums[:, 1] = values.lo, values.hi.view(np.uint64)  # little-endian Int128 = decimal128
    return pa.Table.from_arrays([
        pa.array(keys.kind.astype(np.int8)),
        pa.array(np.full(n, partition, dtype=np.int32)),
        pa.array(keys.start_s.astype(np.int64)),
        pa.array(keys.account),
        country_array(keys.country),
        pa.array(values.count),
        pa.Array.from_buffers(_DECIMAL, n, [None, pa.py_buffer(sums)]),
    ], schema=WINDOW_ROW_SCHEMA)


def country_array(codes: np.ndarray) -> pa.Array:
    n = codes.size
    return pa.StringArray.from_buffers(n, pa.py_buffer(np.arange(0, 2 * n + 1, 2, dtype=np.int32)),
                                       pa.py_buffer(np.ascontiguousarray(LETTERS[codes])))


def table_columns(table: pa.Table) -> tuple[Keys, Values]:
    """Window rows -> columns (restore); raises InvariantViolation on a country that is not
    two letters A-Z."""
    n = table.num_rows
    country = table.column("country").combine_chunks()
    offsets = np.frombuffer(country.buffers()[1], dtype=np.int32)[country.offset:country.offset + n + 1]
    if country.null_count or not np.all(np.diff(offsets) == 2):
        raise InvariantViolation("window rows with a country that is not two letters")
    letters = np.frombuffer(country.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]].reshape(n, 2)
    if np.any((letters < 65) | (letters > 90)):
        raise InvariantViolation("window rows with a country that is not two letters A-Z")
    codes = (letters[:, 0].astype(np.uint16) - 65) * 26 + (letters[:, 1] - 65)
    sums = table.column("sum_amount").combine_chunks()
    raw = np.frombuffer(sums.buffers()[1], dtype=np.uint64)[2 * sums.offset:2 * (sums.offset + n)].reshape(n, 2)
    keys = Keys(table.column("kind").to_numpy().astype(np.uint8), table.column("window_start").to_numpy()
                .astype(np.uint32), table.column("account_id").to_numpy().astype(np.uint64), codes.astype(np.uint16))
    return keys, Values(table.column("event_count").to_numpy().astype(np.uint64), raw[:, 0].copy(),
                        raw[:, 1].view(np.int64).copy())
