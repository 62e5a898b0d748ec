"""Join the batch-times (metrics) and group-repairs (proven delivery) branches into one
head, so that `alembic upgrade head` (contract §6) creates the whole ledger.

Revision ID: 0011_merge
Revises: 0009_batch_times, 0010_group_repairs
Create Date: 2026-12-01
"""

revision = "0011_merge"
down_revision = ("0009_batch_times", "0010_group_repairs")
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
