"""Proven delivery: which groups were checked in ClickHouse, and every repair insert.

After a group whose insert was attempted more than once (a crash-resumed group, an error
retried, an operator replay), and for a sample of first attempts, the sink checks in
ClickHouse that every row of the group is there with its version or a newer one for its
key before it acknowledges the group (docs/sink.md, "Proven delivery"). Rows that are not
are re-sent under a fresh token `<group token>:r<repair_no>`. The repair row is committed
BEFORE that insert: a repair number, hence a token, is used for one set of blocks only,
and a sink restarted after a crash takes the next number instead of reusing one whose
blocks it no longer knows.

Revision ID: 0010_group_repairs
Revises: 0008_merge
Create Date: 2026-12-01
"""

from alembic import op

revision = "0010_group_repairs"
down_revision = "0008_merge"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    ALTER TABLE sink_group
        ADD COLUMN checked text CHECK (checked IN ('retried', 'sampled'));  -- why it was checked; NULL: not checked

    CREATE TABLE sink_group_repair (
        pipeline_id     text NOT NULL,
        group_id        bigint NOT NULL,
        repair_no       int NOT NULL CHECK (repair_no > 0),
        token           text NOT NULL,         -- ClickHouse insert_deduplication_token of the repair insert
        missing_rows    bigint NOT NULL CHECK (missing_rows > 0),  -- rows the check found missing: the ones re-sent
        checked_because text NOT NULL CHECK (checked_because IN ('retried', 'sampled')),
        created_at      timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (pipeline_id, group_id, repair_no),
        FOREIGN KEY (pipeline_id, group_id) REFERENCES sink_group (pipeline_id, group_id) ON DELETE CASCADE
    );
    """)


def downgrade() -> None:
    op.execute("""
    DROP TABLE IF EXISTS sink_group_repair;
    ALTER TABLE sink_group DROP COLUMN IF EXISTS checked;
    """)
