"""Join the sink-groups, backfill and state branches into one head, so that
`alembic upgrade head` (contract §6) creates the whole ledger.

Revision ID: 0005_merge
Revises: 0002_sink_groups, 0003_backfill, 0004_state
Create Date: 2026-11-26
"""

revision = "0005_merge"
down_revision = ("0002_sink_groups", "0003_backfill", "0004_state")
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
