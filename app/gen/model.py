"""Pure, deterministic event synthesis: record i is a function of (GenSpec, i) only.

Records are generated in fixed chunks of CHUNK_SIZE. Chunk c draws from PCG64 streams
spawned from SeedSequence([seed, c]), one independent stream per column, so
  * record i never depends on --rate, timing, batching or --events (a chunk is always
    drawn whole and then truncated), and
  * changing one knob (say --late-fraction) does not reshuffle unrelated columns.
No Kafka here: app/gen/produce.py sends what this module builds, and a verifier can
rebuild the same columns (`chunk_columns`) to compute ground truth without reading JSON.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import numpy as np

from app.gen.accounts import account_for_rank, home_country, mix64
from app.gen.encode import encode_valid
from app.gen.invalid import INVALID_CLASSES, MAX_EVENT_TIME_MS, make_invalid, make_invalid_key
from app.gen.vocab import COUNTRIES, KIND_PAGE, KIND_WEIGHTS, KINDS, USER_AGENTS
from app.gen.zipf import ZipfSampler

__all__ = ["COUNTRIES", "KINDS", "KIND_WEIGHTS", "USER_AGENTS"]  # re-exported: the vocabulary lives in vocab.py

CHUNK_SIZE = 65_536
DEFAULT_START_MS = int(datetime(2025, 11, 20, tzinfo=UTC).timestamp() * 1000)
MAX_ACCOUNTS = 2**31  # keeps (rank * multiplier) inside int64 in the rank -> id bijection

# Traffic share of country j ~ 1/(j+1)**0.8: a few big markets and a long tail.
TRAVEL_FRACTION = 0.02  # events sent from a country other than the account's home

_AMOUNT_KINDS = (KINDS.index("add_to_cart"), KINDS.index("purchase"))
_REFUND_KIND = KINDS.index("refund")
_AMOUNT_MEDIAN_MINOR = 2_500   # 25.00 in minor units
_AMOUNT_SIGMA = 1.1
_AMOUNT_MAX_MINOR = 10_000_000

# Late events: an extra lag on top of the normal jitter. Lognormal, median 100 s: with the
# default 5 s out-of-orderness and 60 s allowed lateness about half of them are still folded
# into their minute window; the tail (capped at 2 h) reaches past hour windows too.
LATE_MEDIAN_MS = 100_000
LATE_SIGMA = 1.5
LATE_MAX_MS = 2 * 3_600_000
_SESSION_MS = 30 * 60_000

# One independent stream per column; the order is part of the data format.
_S_ACCOUNT, _S_TRAVEL, _S_JITTER, _S_LATE, _S_KIND, _S_AMOUNT, _S_PAGE, _S_INVALID = range(8)
_N_STREAMS = 8


@dataclass(frozen=True, slots=True)
class GenSpec:
    """Every input that shapes the data. Two runs with equal specs produce equal records."""

    seed: int = 42
    events: int = 1_000_000
    accounts: int = 10_000_000
    zipf_s: float = 1.1
    countries: int = 50
    late_fraction: float = 0.02
    out_of_order_spread_ms: int = 2_000
    invalid_fraction: float = 0.001
    start_ms: int = DEFAULT_START_MS
    event_time_rate: float = 1_000.0

    def __post_init__(self) -> None:
        checks = (
            (self.seed >= 0, "seed must be >= 0"),
            (self.events >= 0, "events must be >= 0"),
            (1 <= self.accounts <= MAX_ACCOUNTS, f"accounts must be within [1, {MAX_ACCOUNTS}]"),
            (self.zipf_s > 0 and math.isfinite(self.zipf_s), "zipf_s must be a finite number > 0"),
            (1 <= self.countries <= len(COUNTRIES), f"countries must be within [1, {len(COUNTRIES)}]"),
            (0.0 <= self.late_fraction <= 1.0, "late_fraction must be within [0, 1]"),
            (self.out_of_order_spread_ms >= 0, "out_of_order_spread_ms must be >= 0"),
            (0.0 <= self.invalid_fraction <= 1.0, "invalid_fraction must be within [0, 1]"),
            (0 <= self.start_ms < MAX_EVENT_TIME_MS, "start_ms must be within [0, 4102444800000)"),
            (self.event_time_rate > 0 and math.isfinite(self.event_time_rate),
             "event_time_rate must be a finite number > 0"),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def chunks(self) -> int:
        return -(-self.events // CHUNK_SIZE)

    def ingest_ms(self, index: int) -> int:
        """Simulated ingest time of record `index` (event times lag behind it)."""
        return int(_ingest_ms(self, np.array([index], dtype=np.int64))[0])


@dataclass(frozen=True, slots=True)
class ChunkColumns:
    """The numbers behind one chunk's records (after truncation to spec.events).

    `invalid_class` is -1 for a valid event, else an index into INVALID_CLASSES; an
    invalid record's other columns say what the event would have been.
    """

    first_index: int
    account_id: np.ndarray      # int64
    country: np.ndarray         # int64 index into COUNTRIES
    event_time: np.ndarray      # int64 epoch ms
    amount: np.ndarray          # int64 minor units
    kind: np.ndarray            # int64 index into KINDS
    late: np.ndarray            # bool: an extra long-tail lag was injected
    invalid_class: np.ndarray   # int64, -1 = valid
    invalid_variant: np.ndarray  # int64, picks the sub-case of the invalid class
    session: np.ndarray         # uint64
    page_id: np.ndarray         # int64

    def __len__(self) -> int:
        return int(self.account_id.size)

    @property
    def valid(self) -> np.ndarray:
        return self.invalid_class < 0


@lru_cache(maxsize=16)
def _zipf(accounts: int, s: float) -> ZipfSampler:
    return ZipfSampler.create(accounts, s)


# ---- columns --------------------------------------------------------------------------


def _ingest_ms(spec: GenSpec, index: np.ndarray) -> np.ndarray:
    rate = spec.event_time_rate
    if float(rate).is_integer():
        exact: np.ndarray = spec.start_ms + (index * 1000) // int(rate)  # exact integer arithmetic
        return exact
    out: np.ndarray = spec.start_ms + np.floor(index * 1000.0 / rate).astype(np.int64)
    return out


def _kind_cdf() -> np.ndarray:
    cdf = np.cumsum(np.array(KIND_WEIGHTS, dtype=np.float64))
    out: np.ndarray = cdf / cdf[-1]
    return out


_KIND_CDF = _kind_cdf()


def chunk_columns(spec: GenSpec, chunk_index: int) -> ChunkColumns:
    """Columns of records [chunk_index*CHUNK_SIZE, ...), truncated at spec.events."""
    if not 0 <= chunk_index < max(spec.chunks, 1):
        raise ValueError(f"chunk {chunk_index} outside [0, {spec.chunks})")
    streams = np.random.SeedSequence([spec.seed, chunk_index]).spawn(_N_STREAMS)
    rng = [np.random.Generator(np.random.PCG64(s)) for s in streams]
    n = CHUNK_SIZE
    first = chunk_index * CHUNK_SIZE
    index = np.arange(first, first + n, dtype=np.int64)

    ranks = _zipf(spec.accounts, spec.zipf_s).sample(rng[_S_ACCOUNT], n)
    account = account_for_rank(ranks, spec.accounts, spec.seed)

    country = home_country(account, spec.countries)
    travel_u = rng[_S_TRAVEL].random(n)
    other = rng[_S_TRAVEL].integers(0, max(spec.countries - 1, 1), n)
    if spec.countries > 1:
        # Adding 1..C-1 modulo C always lands on a country other than home.
        country = np.where(travel_u < TRAVEL_FRACTION, (country + 1 + other) % spec.countries, country)

    jitter = np.floor(rng[_S_JITTER].random(n) * spec.out_of_order_spread_ms).astype(np.int64)
    late = rng[_S_LATE].random(n) < spec.late_fraction
    lag = np.minimum(rng[_S_LATE].lognormal(math.log(LATE_MEDIAN_MS), LATE_SIGMA, n), LATE_MAX_MS)
    event_time = _ingest_ms(spec, index) - jitter - np.where(late, lag.astype(np.int64), 0)
    event_time = np.maximum(event_time, 0)

    kind = np.searchsorted(_KIND_CDF, rng[_S_KIND].random(n), side="right").astype(np.int64)
    kind = np.minimum(kind, len(KINDS) - 1)
    raw_amount = rng[_S_AMOUNT].lognormal(math.log(_AMOUNT_MEDIAN_MINOR), _AMOUNT_SIGMA, n)
    magnitude = np.clip(np.rint(raw_amount), 1, _AMOUNT_MAX_MINOR).astype(np.int64)
    amount = np.where(np.isin(kind, _AMOUNT_KINDS), magnitude, 0)
    amount = np.where(kind == _REFUND_KIND, -magnitude, amount)

    page_id = rng[_S_PAGE].integers(1, 1_000_000, n)
    # A session is an account's 30-minute slice of simulated time.
    session = mix64(account.astype(np.uint64) * np.uint64(1_000_003)
                     ^ (_ingest_ms(spec, index) // _SESSION_MS).astype(np.uint64))

    inv_rng = rng[_S_INVALID]
    is_invalid = inv_rng.random(n) < spec.invalid_fraction
    # Round-robin from a random start splits invalid records evenly across the classes.
    start_class = int(inv_rng.integers(0, len(INVALID_CLASSES)))
    variant = inv_rng.integers(0, 2**31, n)
    invalid_class = np.full(n, -1, dtype=np.int64)
    positions = np.nonzero(is_invalid)[0]
    invalid_class[positions] = (start_class + np.arange(positions.size)) % len(INVALID_CLASSES)

    keep = min(n, spec.events - first)
    return ChunkColumns(
        first_index=first,
        account_id=account[:keep],
        country=country[:keep].astype(np.int64),
        event_time=event_time[:keep],
        amount=amount[:keep],
        kind=kind[:keep],
        late=late[:keep],
        invalid_class=invalid_class[:keep],
        invalid_variant=variant[:keep],
        session=session[:keep],
        page_id=page_id[:keep],
    )


# ---- encoding -------------------------------------------------------------------------


def _ip_octets(session: int) -> tuple[int, int, int, int]:
    # Must match the octets app/gen/encode.py computes for the whole chunk.
    return (11 + (session >> 8) % 212, (session >> 16) & 255, (session >> 24) & 255,
            1 + (session >> 32) % 254)


def event_dict(cols: ChunkColumns, j: int) -> dict[str, Any]:
    """Record j of a chunk as a JSON-ready dict (the reference the fast encoder must match)."""
    account = int(cols.account_id[j])
    kind = int(cols.kind[j])
    session = int(cols.session[j])
    return {
        "event_id": "e-%09d" % (cols.first_index + j),
        "account_id": account,
        "country": COUNTRIES[int(cols.country[j])],
        "event_time": int(cols.event_time[j]),
        "amount": int(cols.amount[j]),
        "kind": KINDS[kind],
        "session_id": "s-%016x" % session,
        "page": KIND_PAGE[kind] + str(int(cols.page_id[j])),
        "ip": "%d.%d.%d.%d" % _ip_octets(session),
        "user_agent": USER_AGENTS[session % len(USER_AGENTS)],
    }


def encode_columns(cols: ChunkColumns) -> list[tuple[bytes, bytes]]:
    """(key, value) records of a chunk. Key: the account id as ASCII decimal (also for
    invalid records, so every key is non-empty and partitions like its account), except
    for the `key_mismatch` class, whose key is other ASCII digits (app/gen/invalid.py).
    Valid records are encoded column-wise (app/gen/encode.py): byte-for-byte what
    orjson.dumps(event_dict(...)) gives (a unit test holds this)."""
    out = encode_valid(cols.first_index, cols.account_id, cols.country, cols.event_time, cols.amount, cols.kind,
                       cols.session, cols.page_id)
    # Invalid records are rare (default 0.1%): patch them in afterwards.
    variants = cols.invalid_variant
    for j in np.nonzero(cols.invalid_class >= 0)[0].tolist():
        cls, variant, event = int(cols.invalid_class[j]), int(variants[j]), event_dict(cols, j)
        out[j] = (make_invalid_key(cls, variant, event, out[j][0]), make_invalid(cls, variant, event))
    return out


def generate_chunk(spec: GenSpec, chunk_index: int) -> list[tuple[bytes, bytes]]:
    """The (key, value) records of chunk `chunk_index`: a pure function of (spec, chunk_index)."""
    return encode_columns(chunk_columns(spec, chunk_index))


def generate(spec: GenSpec) -> list[tuple[bytes, bytes]]:
    """All records of a spec in order (small specs / tests; the producer streams chunks)."""
    out: list[tuple[bytes, bytes]] = []
    for c in range(spec.chunks):
        out.extend(generate_chunk(spec, c))
    return out
