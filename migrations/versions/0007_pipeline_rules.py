"""Pipeline rules: the classification rules and the input log a pipeline id is pinned to.

Contract §2 and §3: the rules (--max-out-of-orderness, allowed lateness per kind,
--max-record-bytes) and the input topic's identity (name, Kafka topic id, partition
count) belong to the PIPELINE_ID. The processor records them in the same transaction as
its first checkpoint and refuses to start, assign or commit with any other value
(app/ledger/pipeline_rules.py). The row is never updated: other rules or another log
mean another pipeline id (docs/watermarks.md).

Revision ID: 0007_pipeline_rules
Revises: 0005_merge
Create Date: 2026-11-28
"""

from alembic import op

revision = "0007_pipeline_rules"
down_revision = "0005_merge"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE pipeline_rules (
        pipeline_id                text PRIMARY KEY,
        max_out_of_orderness_ms    bigint NOT NULL,
        allowed_lateness_minute_ms bigint NOT NULL,
        allowed_lateness_hour_ms   bigint NOT NULL,
        max_record_bytes           bigint NOT NULL,
        topic                      text NOT NULL,
        topic_id                   text,          -- Kafka topic id (base64 UUID); NULL: broker reports none
        partitions                 int NOT NULL,  -- the topic's partition count (contract §2)
        checkpoint_id              bigint NOT NULL,  -- the first checkpoint, which recorded this row
        pinned_at                  timestamptz NOT NULL DEFAULT now()
    );
    """)


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS pipeline_rules")
