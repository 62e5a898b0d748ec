"""The ledger: partition offsets and watermarks, checkpoints, sink batches, window
snapshots, DLQ counts and until-end runs. Every row is scoped by pipeline_id.

Revision ID: 0001_ledger
Revises:
Create Date: 2026-11-26
"""

from alembic import op

revision = "0001_ledger"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE ledger_checkpoint (
        checkpoint_id  bigserial PRIMARY KEY,  -- also the ClickHouse row version
        pipeline_id    text NOT NULL,
        source         text NOT NULL CHECK (source IN ('live', 'backfill')),
        topic          text NOT NULL,
        partitions     int[] NOT NULL,
        records        bigint NOT NULL,
        created_at     timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX ledger_checkpoint_pipeline ON ledger_checkpoint (pipeline_id, checkpoint_id);

    CREATE TABLE partition_state (
        pipeline_id        text NOT NULL,
        topic              text NOT NULL,
        partition          int NOT NULL,
        next_offset        bigint NOT NULL DEFAULT 0,
        max_event_time_ms  bigint,            -- NULL: no valid event read yet
        watermark_ms       bigint,            -- max_event_time_ms - max_out_of_orderness
        owner_generation   bigint NOT NULL DEFAULT 0,
        owner              text,
        last_checkpoint_id bigint,
        updated_at         timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (pipeline_id, topic, partition)
    );

    CREATE TABLE sink_batch (
        pipeline_id     text NOT NULL,
        batch_id        bigint NOT NULL,      -- deterministic, from the offset ranges covered
        checkpoint_id   bigint NOT NULL,      -- = version of every row of the batch
        table_name      text NOT NULL CHECK (table_name IN ('rollup_minute', 'rollup_hour')),
        source          text NOT NULL CHECK (source IN ('live', 'backfill')),
        topic           text NOT NULL,
        partitions      int[] NOT NULL,
        offset_ranges   jsonb NOT NULL,       -- [[partition, from_offset, to_offset), ...]
        row_count       int NOT NULL,
        total_events    numeric NOT NULL,     -- sum(event_count) over the rows
        total_amount    numeric NOT NULL,     -- sum(sum_amount) over the rows
        payload         bytea,                -- Arrow IPC stream of the rows
        status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'acked')),
        insert_attempts int NOT NULL DEFAULT 0,
        created_at      timestamptz NOT NULL DEFAULT now(),
        acked_at        timestamptz,
        PRIMARY KEY (pipeline_id, batch_id)
    );
    -- pglz on multi-MB payloads costs ~10x the commit time; the payload is already compact.
    ALTER TABLE sink_batch ALTER COLUMN payload SET STORAGE EXTERNAL;
    CREATE INDEX sink_batch_pending ON sink_batch (pipeline_id, checkpoint_id) WHERE status = 'pending';
    CREATE INDEX sink_batch_by_checkpoint ON sink_batch (pipeline_id, topic, checkpoint_id);

    CREATE TABLE window_snapshot (
        pipeline_id    text NOT NULL,
        topic          text NOT NULL,
        partition      int NOT NULL,
        checkpoint_id  bigint NOT NULL,       -- state as of this checkpoint
        window_count   int NOT NULL,
        payload        bytea NOT NULL,
        created_at     timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (pipeline_id, topic, partition)
    );
    ALTER TABLE window_snapshot ALTER COLUMN payload SET STORAGE EXTERNAL;

    CREATE TABLE dlq_count (
        pipeline_id  text NOT NULL,
        topic        text NOT NULL,
        partition    int NOT NULL,
        reason       text NOT NULL CHECK (reason IN ('late', 'invalid')),
        window_kind  text NOT NULL DEFAULT '',  -- '' for invalid
        count        bigint NOT NULL,
        PRIMARY KEY (pipeline_id, topic, partition, reason, window_kind)
    );

    CREATE TABLE pipeline_run (
        pipeline_id  text PRIMARY KEY,
        topic        text NOT NULL,
        end_offsets  jsonb NOT NULL,          -- {"partition": end_offset} seen at start
        started_at   timestamptz NOT NULL DEFAULT now(),
        finished_at  timestamptz
    );
    """)


def downgrade() -> None:
    op.execute("""
    DROP TABLE IF EXISTS pipeline_run, dlq_count, window_snapshot, sink_batch, partition_state,
                         ledger_checkpoint;
    """)
