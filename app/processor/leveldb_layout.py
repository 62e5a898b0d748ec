"""How window state is laid out in LevelDB, and the conversions between that layout and
window rows (Arrow tables, numpy structured arrays: no per-row Python ints).

    key   15 bytes  >B I Q 2s   kind, window_start (epoch s), account_id, country
    value 24 bytes  <Q Q q      event_count, sum_amount as Int128 (low 64 bits, high 64 bits)
    b"\\xff"         JSON meta   {"state": "committed"|"prepared", "checkpoint": ref, ...}

Keys sort by (kind, window_start) first, so every final window of a kind is one key range
at the front. The value is the little-endian two's-complement Int128 that Arrow's
decimal128 uses, so sums are exact for the whole ClickHouse Int128 range.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Sequence
from typing import Final, Protocol

import numpy as np
import pyarrow as pa

from app.core.errors import InvariantViolation
from app.ledger.rows import WINDOW_ROW_SCHEMA
from app.processor.deltas import LETTERS, Keys, Values
from app.processor.windows import WindowKey

KEY: Final = struct.Struct(">BIQ2s")
PREFIX: Final = struct.Struct(">BI")
VALUE: Final = struct.Struct("<QQq")
_M64: Final = (1 << 64) - 1
MAX_START_S: Final = (1 << 32) - 1
META_KEY: Final = b"\xff"  # after every window key (kinds are 0 and 1)

_KEY_DTYPE: Final = np.dtype([("kind", "u1"), ("start", ">u4"), ("account", ">u8"), ("country", "S2")])
VALUE_DTYPE: Final = np.dtype([("count", "<u8"), ("lo", "<u8"), ("hi", "<i8")])
_SUM_DTYPE: Final = np.dtype([("lo", "<u8"), ("hi", "<i8")])
assert _KEY_DTYPE.itemsize == KEY.size and VALUE_DTYPE.itemsize == VALUE.size


def pack_key(key: WindowKey) -> bytes:
    kind, start_ms, account, country = key
    return KEY.pack(kind, start_ms // 1000, account, country.encode("ascii"))


def unpack_key(raw: bytes) -> WindowKey:
    kind, start_s, account, country = KEY.unpack(raw)
    return (kind, start_s * 1000, account, country.decode("ascii"))


def pack_value(count: int, amount: int) -> bytes:
    try:
        return VALUE.pack(count, amount & _M64, amount >> 64)
    except struct.error as e:
        raise InvariantViolation(f"window value out of range (count {count}, sum beyond Int128): {e}") from e


def unpack_value(raw: bytes) -> tuple[int, int]:
    count, lo, hi = VALUE.unpack(raw)
    return count, (hi << 64) | lo


# ---- columnar conversion (numpy, no per-row Python ints) -------------------


def table_from_raw(partition: int, keys: list[bytes], values: list[bytes]) -> pa.Table:
    """LevelDB entries -> window rows (WINDOW_ROW_SCHEMA)."""
    n = len(keys)
    k = np.frombuffer(b"".join(keys), dtype=_KEY_DTYPE)
    v = np.frombuffer(b"".join(values), dtype=VALUE_DTYPE)
    if len(v) != n:
        raise InvariantViolation("LevelDB state holds a value of the wrong size")
    sums = np.empty(n, dtype=_SUM_DTYPE)
    sums["lo"], sums["hi"] = v["lo"], v["hi"]
    countries = pa.StringArray.from_buffers(
        n, pa.py_buffer(np.arange(0, 2 * n + 1, 2, dtype=np.int32).tobytes()),
        pa.py_buffer(np.ascontiguousarray(k["country"]).tobytes()))
    return pa.Table.from_arrays([
        pa.array(k["kind"].astype(np.int8)),
        pa.array(np.full(n, partition, dtype=np.int32)),
        pa.array(k["start"].astype(np.int64)),
        pa.array(k["account"].astype(np.uint64)),
        countries,
        pa.array(v["count"].astype(np.uint64)),
        pa.Array.from_buffers(pa.decimal128(38, 0), n, [None, pa.py_buffer(sums.tobytes())]),
    ], schema=WINDOW_ROW_SCHEMA)


def raw_from_table(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Window rows -> packed keys and values (structured arrays of KEY / VALUE layout)."""
    n = table.num_rows
    keys = np.empty(n, dtype=_KEY_DTYPE)
    keys["kind"] = table.column("kind").to_numpy()
    keys["start"] = table.column("window_start").to_numpy()
    keys["account"] = table.column("account_id").to_numpy()
    country = table.column("country").combine_chunks()
    offsets = np.frombuffer(country.buffers()[1], dtype=np.int32)[country.offset:country.offset + n + 1]
    if country.null_count or not np.all(np.diff(offsets) == 2):
        raise InvariantViolation("window rows with a country that is not two ASCII letters")
    data = np.frombuffer(country.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]]
    keys["country"] = data.view("S2")
    values = np.empty(n, dtype=VALUE_DTYPE)
    values["count"] = table.column("event_count").to_numpy()
    sums = table.column("sum_amount").combine_chunks()
    raw_sums = np.frombuffer(sums.buffers()[1], dtype=_SUM_DTYPE)[sums.offset:sums.offset + n]
    values["lo"], values["hi"] = raw_sums["lo"], raw_sums["hi"]
    return keys, values


def put_order(keys: Keys) -> np.ndarray:
    """An order close to LevelDB's key order (kind, start, account; the country is left out),
    for writes: LevelDB takes sorted keys ~2x cheaper than random ones. Approximate is enough:
    any order is correct."""
    bucket = keys.bucket()
    if bucket.size and bucket.min() == bucket.max():
        return np.argsort(keys.account)
    _, rank = np.unique(bucket, return_inverse=True)
    return np.argsort((rank.astype(np.uint64) << np.uint64(54)) | (keys.account >> np.uint64(10)))


def pack_columns(keys: Keys, values: Values | None, *, in_put_order: bool = True) -> tuple[list[bytes], list[bytes]]:
    """Columns -> LevelDB keys (and values), in put_order (or as given)."""
    order = put_order(keys) if in_put_order else np.arange(len(keys))
    n = order.size
    k = np.empty(n, dtype=_KEY_DTYPE)
    k["kind"], k["start"], k["account"] = keys.kind[order], keys.start_s[order], keys.account[order]
    k["country"] = np.ascontiguousarray(LETTERS[keys.country[order]]).view("S2").reshape(n)
    packed_keys = k.view("S15").tolist()  # a key ends with a letter: no NUL byte is stripped
    if values is None:
        return packed_keys, []
    v = np.empty(n, dtype=VALUE_DTYPE)
    v["count"], v["lo"], v["hi"] = values.count[order], values.lo[order], values.hi[order]
    return packed_keys, v.view("V24").tolist()


class Puts(Protocol):
    """What put_packed writes into: a plyvel WriteBatch."""

    def put(self, key: bytes, value: bytes, /) -> None: ...


def put_packed(batch: Puts, keys: Sequence[bytes], values: Sequence[bytes]) -> None:
    """Every packed (key, value) into a LevelDB write batch: map() drives the C calls without
    a Python loop, half the time of a for loop here (0.20 vs 0.38 s per 1M puts)."""
    if len(keys) != len(values):
        raise ValueError(f"{len(keys)} keys for {len(values)} values")
    deque(map(batch.put, keys, values), maxlen=0)
