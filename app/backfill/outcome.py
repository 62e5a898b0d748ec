"""What a backfill did (or, in a dry run, would do): the value app/backfill/run.py returns
and app/backfill/render.py prints."""

from __future__ import annotations

from dataclasses import dataclass

from app.backfill.compare import TableDiff
from app.backfill.request import BackfillRequest, Selection
from app.ledger.backfill_runs import BackfillRun, Pin


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened (or, in a dry run, would happen): rendered by app/backfill/render.py."""

    request: BackfillRequest
    dry_run: bool
    pin: Pin
    selection: Selection
    records: int
    replay_s: float
    tables: tuple[TableDiff, ...]
    clickhouse_note: str | None          # why ClickHouse was not read; None when it was
    run: BackfillRun | None = None       # None: dry run, or nothing to land
    resumed: bool = False
    batches_new: int = 0
    batches_existing: int = 0
    deleted_keys: int | None = None
    pending_run: BackfillRun | None = None   # dry run: the unfinished run a real run would resume
    live_max_version: int = 0
    elapsed_s: float = 0.0

    @property
    def windows(self) -> int:
        return sum(t.windows for t in self.tables)
