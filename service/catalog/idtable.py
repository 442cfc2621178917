"""Ad id -> catalog row without touching a Python object per candidate.

A Python dict over a million ids costs ~3 cache misses per lookup (hash slot, entry, key string)
— about 0.5-1 us, i.e. most of a 1,000-id request.  Here ids are hashed with adrank's stable
64-bit string hash (``hash_tokens``: FNV-1a + splitmix64, compiled) and looked up in an
open-addressing table (linear probing, load <= 1/2): one miss per id, independent across ids.

Two different ids with the same 64-bit hash are detected when the table is built (and refused
by the store); an id absent from the catalog could only be mistaken for one present with
probability ~ N / 2^64 per lookup.
"""

from __future__ import annotations

import numba
import numpy as np

from adrank.core.hashing import hash_tokens
from service.kernels.codegen import PLAIN

EMPTY = np.uint64(0)


@numba.njit(**PLAIN)
def _insert(hashes, first_row, keys, rows):
    """Insert hashes[i] -> first_row + i; returns the first i whose hash is already there, or -1."""
    mask = keys.shape[0] - 1
    for i in range(hashes.shape[0]):
        h = hashes[i] if hashes[i] != EMPTY else np.uint64(1)
        p = h & mask
        while keys[p] != EMPTY:
            if keys[p] == h:
                return i
            p = (p + 1) & mask
        keys[p] = h
        rows[p] = first_row + i
    return -1


@numba.njit(**PLAIN)
def lookup(keys, rows, q, out):
    """out[n] = row of hash q[n], or -1; returns how many were missing."""
    mask = keys.shape[0] - 1
    missing = 0
    for n in range(q.shape[0]):
        h = q[n] if q[n] != EMPTY else np.uint64(1)
        p = h & mask
        r = -1
        while keys[p] != EMPTY:
            if keys[p] == h:
                r = rows[p]
                break
            p = (p + 1) & mask
        out[n] = r
        missing += r < 0
    return missing


class IdCollision(ValueError):
    """Two ids share a 64-bit hash (never expected; named so the store can refuse the write)."""

    def __init__(self, row: int):
        super().__init__(f"row {row}: its id's 64-bit hash equals another id's")
        self.row = row


def warm() -> None:
    """Compile (or load from the cache) the table's kernels."""
    IdTable(IdTable.hash(["a"])).rows(["a", "b"])


class IdTable:
    """Immutable id-hash table of one snapshot: ``rows(ids) -> int64[len(ids)]`` (-1 = absent)."""

    def __init__(self, hashes: np.ndarray):
        n = len(hashes)
        cap = 1 << max(4, int(2 * n - 1).bit_length())
        self.keys = np.zeros(cap, np.uint64)
        self.rows_ = np.empty(cap, np.int64)
        bad = _insert(hashes, 0, self.keys, self.rows_)
        if bad >= 0:
            raise IdCollision(int(bad))

    def with_rows(self, hashes: np.ndarray, first_row: int) -> IdTable | None:
        """A copy with ``hashes[i] -> first_row + i`` added (ids new to this table); the copy is a
        memcpy + len(hashes) inserts, unless the load factor would pass 1/2 (then a rebuild)."""
        if 2 * (first_row + len(hashes)) > len(self.keys):
            return None
        out = object.__new__(IdTable)
        out.keys, out.rows_ = self.keys.copy(), self.rows_.copy()
        bad = _insert(hashes, first_row, out.keys, out.rows_)
        if bad >= 0:
            raise IdCollision(first_row + int(bad))
        return out

    @staticmethod
    def hash(ids: list[str]) -> np.ndarray:
        return hash_tokens(ids)

    def rows(self, ids: list[str]) -> tuple[np.ndarray, int]:
        """(rows int64, number missing) of string ids."""
        out = np.empty(len(ids), np.int64)
        missing = lookup(self.keys, self.rows_, hash_tokens(ids), out) if ids else 0
        return out, int(missing)
