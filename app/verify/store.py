"""verify's own embedded ClickHouse (chDB), in a work directory of its own: where the truth
is aggregated in bounded memory, whatever the size of the log.

Python only classifies (truth.py `Classifier`); the classified events, the DLQ offsets the
truth expects, the identities found in the DLQ topic and a copy of the pipeline's FINAL
rows are appended here in batches and aggregated and diffed in SQL (sql_diff.py), with
ClickHouse spilling GROUP BY and ORDER BY state to disk past a fixed budget. Memory: one
batch of columns (FLUSH_ROWS rows) in Python plus ClickHouse's bounded working set.

The pipeline's own embedded ClickHouse cannot be opened here as well (one chDB path per
process), so its FINAL rows arrive as Native files written by final_export.py.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from array import array
from pathlib import Path
from typing import Any, Final, Self

import chdb
import numpy as np
import structlog

from app.verify.truth import INVALID, LATE_HOUR, LATE_MINUTE, ClassifiedRun

log = structlog.get_logger("verify.store")

# The DLQ slot of an identity, numbered in the order (reason, window_kind) sorts as text,
# which is the order the report lists them in.
SLOT_OF: Final[dict[tuple[str, str], int]] = {INVALID: 0, LATE_HOUR: 1, LATE_MINUTE: 2}
SLOTS: Final[tuple[tuple[str, str], ...]] = tuple(sorted(SLOT_OF, key=SLOT_OF.__getitem__))

# One row per valid event, packed as ClickHouse's RowBinary expects it (little endian, in
# column order), so a numpy buffer is the insert as it stands.
EVENT_ROW: Final = np.dtype([("partition", "<u4"), ("minute_start", "<u4"), ("account_id", "<u8"),
                             ("country", "<u2"), ("amount", "<i8"), ("late", "u1")])
IDENTITY_ROW: Final = np.dtype([("partition", "<u4"), ("slot", "u1"), ("offset", "<u8")])

EVENT_COLUMNS: Final = ("partition UInt32, minute_start UInt32, account_id UInt64, country UInt16, "
                        "amount Int64, late UInt8")
IDENTITY_COLUMNS: Final = "partition UInt32, slot UInt8, offset UInt64"
FINAL_COLUMNS: Final = ("window_start UInt32, account_id UInt64, country String, event_count UInt64, "
                        "sum_amount Int128")

FLUSH_ROWS: Final = 1_000_000  # ~27 MB of event rows per insert

DEFAULT_SPILL_MIB: Final = 512


def heavy_settings(spill_bytes: int) -> str:
    """Settings of every heavy query: past `spill_bytes` ClickHouse writes its GROUP BY / sort
    state to disk in the work directory instead of growing; max_memory_usage turns a runaway
    into a clear error rather than the machine's OOM killer."""
    limit = max(2 * 1024**3, spill_bytes + 512 * 1024**2)
    return (f"max_bytes_before_external_group_by = {spill_bytes}, max_bytes_before_external_sort = {spill_bytes}, "
            "max_bytes_ratio_before_external_group_by = 0, max_bytes_ratio_before_external_sort = 0, "
            f"max_memory_usage = {limit}, max_threads = 2")


class _Buffer:
    """Rows of one table collected column by column until they are worth an insert."""

    def __init__(self, dtype: np.dtype, typecodes: dict[str, str]) -> None:
        self.dtype = dtype
        self.typecodes = typecodes
        self.columns: dict[str, array[int]] = {}
        self.clear()

    def clear(self) -> None:
        self.columns = {name: array(code) for name, code in self.typecodes.items()}

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def packed(self) -> bytes:
        rows = np.empty(len(self), dtype=self.dtype)
        for name, column in self.columns.items():
            rows[name] = np.frombuffer(column, dtype=rows.dtype[name])
        return rows.tobytes()


class VerifyStore:
    """A fresh chDB database in a temporary directory under `parent` (removed on close)."""

    def __init__(self, parent: Path | None = None, spill_mib: int = DEFAULT_SPILL_MIB) -> None:
        self.heavy_settings = heavy_settings(spill_mib * 1024**2)
        self.work_dir = Path(tempfile.mkdtemp(prefix="verify-", dir=parent))
        self._batch_path = self.work_dir / "batch.rowbinary"
        try:
            self._conn = chdb.connect(str(self.work_dir / "chdb"))
            self._create_tables()
        except BaseException:
            shutil.rmtree(self.work_dir, ignore_errors=True)
            raise
        self._events = _Buffer(EVENT_ROW, {"partition": "I", "minute_start": "I", "account_id": "Q",
                                           "country": "H", "amount": "q", "late": "B"})
        self._dlq_truth = _Buffer(IDENTITY_ROW, {"partition": "I", "slot": "B", "offset": "Q"})
        self._dlq_topic = _Buffer(IDENTITY_ROW, {"partition": "I", "slot": "B", "offset": "Q"})
        log.info("verify_store_open", work_dir=str(self.work_dir))

    def _create_tables(self) -> None:
        # ORDER BY tuple(): inserts append without sorting; every read is a full scan anyway.
        for table, columns in (("events", EVENT_COLUMNS), ("dlq_truth", IDENTITY_COLUMNS),
                               ("dlq_topic", IDENTITY_COLUMNS), ("final_minute", FINAL_COLUMNS),
                               ("final_hour", FINAL_COLUMNS)):
            self.command(f"CREATE TABLE {table} ({columns}) ENGINE = MergeTree ORDER BY tuple()")

    # ---- appending ------------------------------------------------------------------------

    def add_run(self, run: ClassifiedRun) -> None:
        """The valid events of a classified run and the DLQ offsets it expects."""
        n = len(run.late)
        if n:
            c = self._events.columns
            c["partition"].extend(array("I", [run.partition]) * n)
            c["minute_start"].extend(run.minute_start_s)
            c["account_id"].extend(run.account_id)
            c["country"].extend(run.country)
            c["amount"].extend(run.amount)
            c["late"].extend(run.late)
        for slot_key, offsets in run.dlq_offsets():
            if offsets:
                self._add_identities(self._dlq_truth, run.partition, SLOT_OF[slot_key], offsets)
        if len(self._events) >= FLUSH_ROWS:
            self._flush(self._events, "events")
        if len(self._dlq_truth) >= FLUSH_ROWS:
            self._flush(self._dlq_truth, "dlq_truth")

    def add_dlq_topic_identities(self, partition: int, reason_kind: tuple[str, str], offsets: array[int]) -> None:
        """Identities read from the DLQ topic, duplicates included (the diff counts distinct ones)."""
        self._add_identities(self._dlq_topic, partition, SLOT_OF[reason_kind], offsets)
        if len(self._dlq_topic) >= FLUSH_ROWS:
            self._flush(self._dlq_topic, "dlq_topic")

    @staticmethod
    def _add_identities(buffer: _Buffer, partition: int, slot: int, offsets: array[int]) -> None:
        n = len(offsets)
        buffer.columns["partition"].extend(array("I", [partition]) * n)
        buffer.columns["slot"].extend(array("B", [slot]) * n)
        buffer.columns["offset"].extend(array("Q", offsets))

    def flush(self) -> None:
        """Insert whatever is buffered; call before querying."""
        for buffer, table in ((self._events, "events"), (self._dlq_truth, "dlq_truth"),
                              (self._dlq_topic, "dlq_topic")):
            if len(buffer):
                self._flush(buffer, table)

    def _flush(self, buffer: _Buffer, table: str) -> None:
        self._batch_path.write_bytes(buffer.packed())
        buffer.clear()
        self.command(f"INSERT INTO {table} SELECT * FROM file({{path:String}}, RowBinary, {{columns:String}})",
                     {"path": str(self._batch_path), "columns": _columns_of(table)})

    def import_final(self, kind: str, native_file: Path) -> None:
        """The pipeline's `SELECT ... FINAL` rows of one window kind, as final_export.py wrote them."""
        self.command(f"INSERT INTO final_{_kind(kind)} SELECT window_start, account_id, country, event_count, "
                     "sum_amount FROM file({path:String}, Native, {columns:String})",
                     {"path": str(native_file), "columns": FINAL_COLUMNS})

    # ---- querying -------------------------------------------------------------------------

    def command(self, sql: str, params: dict[str, Any] | None = None) -> None:
        self._conn.query(sql, "TabSeparated", params=params or {})

    def rows(self, sql: str, params: dict[str, Any] | None = None) -> list[list[Any]]:
        """A small result as lists of JSON values (ClickHouse may quote 64-bit and wider
        integers: the caller converts with int())."""
        result = self._conn.query(sql, "JSONCompact", params=params or {})
        return list(json.loads(result.bytes())["data"])

    def close(self) -> None:
        try:
            self._conn.close()
        finally:
            shutil.rmtree(self.work_dir, ignore_errors=True)
            log.info("verify_store_closed", work_dir=str(self.work_dir))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _columns_of(table: str) -> str:
    return EVENT_COLUMNS if table == "events" else IDENTITY_COLUMNS


def _kind(kind: str) -> str:
    if kind not in ("minute", "hour"):  # the name goes into SQL text; only our own tables
        raise ValueError(f"not a window kind: {kind!r}")
    return kind
