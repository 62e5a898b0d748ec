"""The processor's configuration: built once from the flags (app/processor/__main__.py) and
passed down to the loop and its parts."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from app.core.config import DEFAULT_MAX_RECORD_BYTES, ServiceSettings
from app.processor.leveldb_store import LevelDBOptions
from app.processor.windows import LatenessPolicy


@dataclass(frozen=True, slots=True)
class ProcessorConfig:
    services: ServiceSettings
    policy: LatenessPolicy
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES  # contract §2: larger input values are invalid
    batch_max_wait_s: float = 1.0
    batch_rows: int = 200_000
    poll_records: int = 10_000
    snapshot_interval_s: float = 60.0
    max_pending_rows: int = 2_000_000
    max_pending_bytes: int = 1 << 30     # payload bytes awaiting ClickHouse; 0 = no byte bound
    backpressure_check_s: float = 0.5    # how often the ledger backlog is read
    lag_check_s: float = 5.0             # how often consumer lag is published
    until_end: bool = False
    dlq_partitions: int = 1
    dlq_delivery_timeout_s: float = 60.0   # a DLQ record not acknowledged by then is re-sent
    session_timeout_ms: int = 10_000
    instance_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    state_store: str = "leveldb"           # "leveldb" (state beyond RAM) or "memory"
    state_dir: Path | None = None          # None: <repo>/.data/state/<pipeline_id>
    leveldb: LevelDBOptions = field(default_factory=LevelDBOptions)
    snapshot_chunk_rows: int = 100_000
