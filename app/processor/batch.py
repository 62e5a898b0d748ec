"""Window rows as Arrow columns straight from a store's dirty keys (the emit hot path).

`rows_to_table` builds one `WindowRow` per window and converts `sum_amount` from Python
ints (~600 ns/row); here the columns come from the keys and values at once and the sums
go through int64 + a cast to decimal128 (exact), falling back to the Python-int
conversion only when a sum is outside int64. The table equals
`rows_to_table([WindowRow(...) for each key])`, row for row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa

from app.ledger.rows import WINDOW_ROW_SCHEMA
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


def counts_sums(values: Mapping[WindowKey, Sequence[int]], keys: Sequence[WindowKey]) -> tuple[list[int], list[int]]:
    vals = [values[k] for k in keys]
    return [v[0] for v in vals], [v[1] for v in vals]
