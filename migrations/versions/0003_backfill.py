"""Backfill runs: one row per run of a backfill request, so a SIGKILLed run resumes with
the same pinned input positions, the same version and the same batch ids.

Revision ID: 0003_backfill
Revises: 0001_ledger
Create Date: 2026-11-26
"""

from alembic import op

revision = "0003_backfill"
down_revision = "0001_ledger"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE backfill_run (
        pipeline_id    text NOT NULL,
        request        text NOT NULL,        -- canonical request (range + rules); same text, same batch ids
        run_no         int NOT NULL,         -- a request run again after it landed is a new run
        topic          text NOT NULL,
        checkpoint_id  bigint NOT NULL,      -- ledger_checkpoint (source 'backfill') = version of every row
        pin            jsonb NOT NULL,       -- per partition: next_offset, max_event_time_ms, watermark_ms,
                                             -- DLQ counts, as the ledger stood when the run was planned
        status         text NOT NULL DEFAULT 'planned' CHECK (status IN ('planned', 'landed')),
        windows        bigint,               -- window rows landed
        batches        int,                  -- sink batches committed
        deleted_keys   bigint,               -- keys deleted from ClickHouse (NULL: ClickHouse not readable)
        created_at     timestamptz NOT NULL DEFAULT now(),
        finished_at    timestamptz,
        PRIMARY KEY (pipeline_id, request, run_no)
    );
    CREATE UNIQUE INDEX backfill_run_checkpoint ON backfill_run (checkpoint_id);
    """)


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS backfill_run")
