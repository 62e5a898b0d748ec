"""Join the group-layout and pipeline-rules branches into one head, so that
`alembic upgrade head` (contract §6) creates the whole ledger.

Revision ID: 0008_merge
Revises: 0006_group_layout, 0007_pipeline_rules
Create Date: 2026-12-01
"""

revision = "0008_merge"
down_revision = ("0006_group_layout", "0007_pipeline_rules")
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
