"""Coalesced sink inserts: a group of consecutive pending batches of one table, recorded
before its ClickHouse insert so a retry after a crash re-sends exactly the same rows with
the same dedup token (docs/sink.md).

Revision ID: 0002_sink_groups
Revises: 0001_ledger
Create Date: 2026-11-26
"""

from alembic import op

revision = "0002_sink_groups"
down_revision = "0001_ledger"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE sink_group (
        pipeline_id      text NOT NULL,
        group_id         bigint NOT NULL,      -- deterministic, from the member batch ids
        seq              bigserial,            -- formation order: open groups resume in this order
        table_name       text NOT NULL CHECK (table_name IN ('rollup_minute', 'rollup_hour')),
        token            text NOT NULL,        -- ClickHouse insert_deduplication_token
        member_batch_ids bigint[] NOT NULL,    -- in checkpoint order; the insert's rows derive from them
        row_count        bigint NOT NULL,
        reason           text NOT NULL CHECK (reason IN ('rows', 'max_wait', 'drain')),
        status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'acked')),
        insert_attempts  int NOT NULL DEFAULT 0,
        created_at       timestamptz NOT NULL DEFAULT now(),
        acked_at         timestamptz,
        PRIMARY KEY (pipeline_id, group_id)
    );
    CREATE INDEX sink_group_pending ON sink_group (pipeline_id, seq) WHERE status = 'pending';
    CREATE INDEX sink_group_by_seq ON sink_group (pipeline_id, seq);

    -- A batch belongs to at most one group, for good: once grouped it is only ever sent
    -- as part of that group (same rows, same token).
    ALTER TABLE sink_batch ADD COLUMN group_id bigint;
    CREATE INDEX sink_batch_ungrouped ON sink_batch (pipeline_id, checkpoint_id)
        WHERE status = 'pending' AND group_id IS NULL;
    -- members of acknowledged groups set back to pending (an operator replay)
    CREATE INDEX sink_batch_pending_group ON sink_batch (pipeline_id, group_id)
        WHERE status = 'pending' AND group_id IS NOT NULL;
    """)


def downgrade() -> None:
    op.execute("""
    DROP INDEX IF EXISTS sink_batch_pending_group;
    DROP INDEX IF EXISTS sink_batch_ungrouped;
    ALTER TABLE sink_batch DROP COLUMN IF EXISTS group_id;
    DROP TABLE IF EXISTS sink_group;
    """)
