"""Who sends the generated events: Zipf ranks mapped onto account ids by a seeded
bijection (hot accounts are scattered, not 0, 1, 2), and each account's home country by
a fixed hash of its id (skewed: low country indexes are more common). Pure numpy."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

_COUNTRY_SKEW = 0.8


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a fixed, well-spread hash of uint64 values (wraps on purpose)."""
    z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    out: np.ndarray = z ^ (z >> np.uint64(31))
    return out


def unit_float(h: np.ndarray) -> np.ndarray:
    """Top 53 bits of a uint64 hash as a float in [0, 1)."""
    out: np.ndarray = (h >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)
    return out


@lru_cache(maxsize=16)
def _rank_bijection(accounts: int, seed: int) -> tuple[int, int]:
    """(multiplier, offset) so that rank r -> ((r-1)*multiplier + offset) % accounts is a
    bijection that scatters hot ranks across the id space (hot accounts are not 0, 1, 2)."""
    mult = 2_654_435_761 % accounts  # Knuth's multiplicative-hash constant
    while math.gcd(mult, accounts) != 1:
        mult += 1
    offset = int(mix64(np.array([seed], dtype=np.uint64))[0] % np.uint64(accounts))
    return mult, offset


def account_for_rank(ranks: np.ndarray, accounts: int, seed: int) -> np.ndarray:
    mult, offset = _rank_bijection(accounts, seed)
    out: np.ndarray = ((ranks.astype(np.int64) - 1) * mult + offset) % accounts
    return out


@lru_cache(maxsize=16)
def _country_cdf(countries: int) -> np.ndarray:
    weights = 1.0 / np.arange(1, countries + 1, dtype=np.float64) ** _COUNTRY_SKEW
    cdf: np.ndarray = np.cumsum(weights) / weights.sum()
    return cdf


def home_country(account_ids: np.ndarray, countries: int) -> np.ndarray:
    """Each account's home country index: a fixed hash of the id, independent of the seed."""
    u = unit_float(mix64(np.asarray(account_ids, dtype=np.uint64) ^ np.uint64(0xC0FFEE)))
    index = np.searchsorted(_country_cdf(countries), u, side="right")
    return np.minimum(index, countries - 1).astype(np.int64)
