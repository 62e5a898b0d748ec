"""What the sink needs to measure the pipeline honestly (issue 11).

- `sink_batch.kafka_ts_min_ms` / `kafka_ts_max_ms`: the Kafka timestamps of the records a
  live batch covers (the first and last record of each consumed run: per partition a
  producer's timestamps ascend). The sink observes each record's latency from its Kafka
  timestamp to the acknowledgement of its rows in ClickHouse (app/sink/latency.py). NULL
  for batches committed before this revision and for backfill batches.
- `settled_window_total`: per rollup table and window start, the windows that became final
  (their partition's watermark passed end + allowed lateness) and what they add up to,
  added in the transaction of the checkpoint that drops them from the processor's state
  (app/processor/settled.py); the sink compares recent settled, acknowledged ranges with
  ClickHouse FINAL (app/sink/reconcile.py). One row per window start: its size follows
  the event-time span, not the number of keys.

Revision ID: 0009_batch_times
Revises: 0008_merge
Create Date: 2026-12-02
"""

from alembic import op

revision = "0009_batch_times"
down_revision = "0008_merge"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    ALTER TABLE sink_batch ADD COLUMN kafka_ts_min_ms bigint, ADD COLUMN kafka_ts_max_ms bigint;

    CREATE TABLE settled_window_total (
        pipeline_id         text NOT NULL,
        table_name          text NOT NULL CHECK (table_name IN ('rollup_minute', 'rollup_hour')),
        window_start_ms     bigint NOT NULL,
        windows             bigint NOT NULL,
        events              numeric NOT NULL,
        amount              numeric NOT NULL,
        last_checkpoint_id  bigint NOT NULL,   -- the latest checkpoint that added to this row
        PRIMARY KEY (pipeline_id, table_name, window_start_ms)
    );
    """)


def downgrade() -> None:
    op.execute("""
    DROP TABLE IF EXISTS settled_window_total;
    ALTER TABLE sink_batch DROP COLUMN IF EXISTS kafka_ts_min_ms, DROP COLUMN IF EXISTS kafka_ts_max_ms;
    """)
