"""A group's block layout is part of the group: recorded with it, before its first insert.

ClickHouse deduplicates a retried insert block by block, by the token and the block's
position, not by its content. A group re-sent with other blocks (another
--insert-block-rows, another --async-insert, another default in a later release) has its
first blocks dropped as duplicates of different rows: rows lost for good. So the sink
records, in the transaction that records the group, how its rows are cut into blocks and
every insert setting it sends except the token, and every retry uses what is recorded.

Groups recorded before this revision have NULL in all three columns; the sink gives such
a group its layout, once, before it sends anything more (docs/sink.md, "groups recorded
before 0006"): the current one if it was never sent, else the pre-0006 layout with the
current flags, which is what the sink that sent it did.

Revision ID: 0006_group_layout
Revises: 0005_merge
Create Date: 2026-12-01
"""

from alembic import op

revision = "0006_group_layout"
down_revision = "0005_merge"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    ALTER TABLE sink_group
        ADD COLUMN insert_block_rows integer CHECK (insert_block_rows > 0),  -- at most this many rows per block
        ADD COLUMN block_cut text CHECK (block_cut IN ('rows', 'utc_day')),  -- also cut at each UTC day?
        ADD COLUMN insert_settings jsonb,                                    -- as sent, token excluded
        ADD CONSTRAINT sink_group_layout_whole CHECK (
            (insert_block_rows IS NULL) = (block_cut IS NULL) AND (block_cut IS NULL) = (insert_settings IS NULL));
    """)


def downgrade() -> None:
    op.execute("""
    ALTER TABLE sink_group
        DROP CONSTRAINT IF EXISTS sink_group_layout_whole,
        DROP COLUMN IF EXISTS insert_settings,
        DROP COLUMN IF EXISTS block_cut,
        DROP COLUMN IF EXISTS insert_block_rows;
    """)
