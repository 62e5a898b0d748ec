"""A partition's open windows in RAM as sorted numpy columns: the in-memory store's whole
state, and the LevelDB store's read cache (so a checkpoint looks its windows up with one
`searchsorted` instead of one LevelDB read per window).

Rows are kept sorted by the 64-bit key hash of deltas.py; each row also holds its key, so a
lookup verifies what it found: a hash shared by two keys raises HashCollision and the owner
re-hashes everything with a new, random seed (`reseed`). 47 bytes per window.
"""

from __future__ import annotations

import numpy as np

from app.processor.deltas import HashCollision, Keys, Values, new_seed

# The first seed is fixed, so a store emits its rows in the same order for the same input
# (reproducible payloads); after a collision the seed is random.
FIRST_SEED = 0x5EED_0F_0DE_11_0A7


class OpenWindows:
    def __init__(self) -> None:
        self.seed = FIRST_SEED
        self._clear()

    def _clear(self) -> None:
        self.hashes = np.zeros(0, np.uint64)
        self.keys = Keys.empty()
        self.values = Values.zeros(0)

    def __len__(self) -> int:
        return int(self.hashes.size)

    def clear(self) -> None:
        self._clear()

    def reseed(self) -> None:
        """Another hash seed: after a collision (two keys, one hash)."""
        self.seed = new_seed()
        h = self.keys.hash(self.seed)
        order = np.argsort(h)
        self.hashes, self.keys, self.values = h[order], self.keys.take(order), self.values.take(order)
        if np.any(self.hashes[1:] == self.hashes[:-1]):
            self.reseed()  # astronomically unlikely twice in a row

    def find(self, keys: Keys, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position, found) of each key: found rows are at `position`; a missing key's
        position is where it would be inserted. Raises HashCollision."""
        pos = np.searchsorted(self.hashes, hashes)
        n = self.hashes.size
        if n == 0:
            return pos, np.zeros(hashes.size, dtype=bool)
        at = np.minimum(pos, n - 1)
        found = self.hashes[at] == hashes
        if found.any():
            idx = np.flatnonzero(found)
            if not self.keys.take(at[idx]).same_as(keys.take(idx)).all():
                raise HashCollision("a window key shares its hash with another open window")
        return pos, found

    def get(self, pos: np.ndarray) -> Values:
        return self.values.take(pos)

    def put(self, keys: Keys, hashes: np.ndarray, values: Values, pos: np.ndarray, found: np.ndarray) -> None:
        """Store `values` for `keys` (sorted by hash, unique), as located by `find`."""
        if found.any():
            at = pos[found]
            self.values.count[at] = values.count[found]
            self.values.lo[at] = values.lo[found]
            self.values.hi[at] = values.hi[found]
        if found.all():
            return
        new = np.flatnonzero(~found)
        where = pos[new]
        self.hashes = np.insert(self.hashes, where, hashes[new])
        k = keys.take(new)
        self.keys = Keys(np.insert(self.keys.kind, where, k.kind), np.insert(self.keys.start_s, where, k.start_s),
                         np.insert(self.keys.account, where, k.account),
                         np.insert(self.keys.country, where, k.country))
        v = values.take(new)
        self.values = Values(np.insert(self.values.count, where, v.count), np.insert(self.values.lo, where, v.lo),
                             np.insert(self.values.hi, where, v.hi))

    def assign(self, keys: Keys, values: Values) -> None:
        """Set these windows' values (restore: later rows overwrite earlier ones)."""
        while True:
            try:
                h = keys.hash(self.seed)
                order = np.argsort(h, kind="stable")
                hs = h[order]
                last = np.flatnonzero(np.append(hs[1:] != hs[:-1], True))  # the last row of each key
                sel = order[last]
                k, v = keys.take(sel), values.take(sel)
                dup = np.flatnonzero(hs[1:] == hs[:-1])
                if dup.size and not keys.take(order[dup]).same_as(keys.take(order[dup + 1])).all():
                    raise HashCollision("two restored window keys share a hash")
                pos, found = self.find(k, hs[last])
                self.put(k, hs[last], v, pos, found)
                return
            except HashCollision:
                self.reseed()

    def drop(self, final: np.ndarray) -> None:
        keep = ~final
        self.hashes, self.keys, self.values = self.hashes[keep], self.keys.take(keep), self.values.take(keep)

    def final_mask(self, stop_s: list[int], guarded: set[tuple[int, int]]) -> np.ndarray:
        """Rows whose window start is below their kind's `stop_s`, except guarded (kind, start)."""
        kinds, starts = self.keys.kind, self.keys.start_s.astype(np.int64)
        final = np.zeros(kinds.size, dtype=bool)
        for kind, stop in enumerate(stop_s):
            final |= (kinds == kind) & (starts < stop)
        for kind, start in guarded:
            final &= ~((kinds == kind) & (starts == start))
        return final

    def counts(self, kinds: int) -> list[int]:
        return np.bincount(self.keys.kind, minlength=kinds).tolist()[:kinds]

    def sorted_rows(self) -> tuple[Keys, Values]:
        """Every window in LevelDB key order (kind, start, account, country)."""
        k = self.keys
        order = np.lexsort((k.country, k.account, k.start_s, k.kind))
        return k.take(order), self.values.take(order)
