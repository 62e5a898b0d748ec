"""Deterministic event generator (`python -m app.gen`).

model.py builds records (pure, no Kafka); produce.py sends them on an open-model schedule.
A verifier can rebuild any record from the seed with `generate_chunk` / `chunk_columns`,
and its partition with `partition.partition_for_key` / `partitions_for_accounts`.
"""

from app.gen.model import (
    CHUNK_SIZE,
    COUNTRIES,
    KINDS,
    ChunkColumns,
    GenSpec,
    chunk_columns,
    generate,
    generate_chunk,
)
from app.gen.partition import murmur2, partition_for_key, partitions_for_accounts

__all__ = [
    "CHUNK_SIZE", "COUNTRIES", "KINDS", "ChunkColumns", "GenSpec", "chunk_columns", "generate",
    "generate_chunk",
    "murmur2", "partition_for_key", "partitions_for_accounts",
]
