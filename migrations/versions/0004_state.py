"""Chunked window snapshots: a partition's open windows in many bounded rows instead of one
bytea, so 10M windows never have to be encoded, sent or decoded in one piece.

`window_snapshot` stays the pointer to a partition's latest complete snapshot: `chunks` = 0
means the (legacy) whole snapshot is its own `payload`; `chunks` = N > 0 means the payload
is empty and the rows are the N `window_snapshot_chunk` rows of the same checkpoint_id.

Revision ID: 0004_state
Revises: 0001_ledger
Create Date: 2026-11-27
"""

from alembic import op

revision = "0004_state"
down_revision = "0001_ledger"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    ALTER TABLE window_snapshot ADD COLUMN chunks int NOT NULL DEFAULT 0;

    CREATE TABLE window_snapshot_chunk (
        pipeline_id    text NOT NULL,
        topic          text NOT NULL,
        partition      int NOT NULL,
        checkpoint_id  bigint NOT NULL,       -- the snapshot is the state as of this checkpoint
        chunk          int NOT NULL,          -- 0, 1, ... in key order
        window_count   int NOT NULL,
        payload        bytea NOT NULL,        -- Arrow IPC stream of window rows
        created_at     timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (pipeline_id, topic, partition, checkpoint_id, chunk)
    );
    -- already lz4-compressed Arrow: pglz would only cost time (see sink_batch)
    ALTER TABLE window_snapshot_chunk ALTER COLUMN payload SET STORAGE EXTERNAL;
    """)


def downgrade() -> None:
    op.execute("""
    DROP TABLE IF EXISTS window_snapshot_chunk;
    ALTER TABLE window_snapshot DROP COLUMN IF EXISTS chunks;
    """)
