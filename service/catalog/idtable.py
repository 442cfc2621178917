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
def _fill(a, v):
    for i in range(a.shape[0]):
        a[i] = v


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


@numba.njit(inline="always", **PLAIN)
def first_at_least(sorted_rows, lo):
    """The index of the first of ``sorted_rows`` that is >= ``lo`` (binary search; inlined: the
    caller's compile options apply)."""
    p, q = 0, sorted_rows.shape[0]
    while p < q:
        mid = (p + q) >> 1
        if sorted_rows[mid] < lo:
            p = mid + 1
        else:
            q = mid
    return p


@numba.njit(inline="always", **PLAIN)
def _probe(keys, rows, h):
    mask = keys.shape[0] - 1
    p = h & mask
    while keys[p] != EMPTY:
        if keys[p] == h:
            return rows[p]
        p = (p + 1) & mask
    return -1


@numba.njit(**PLAIN)
def lookup_view(dkeys, drows, n_delta, bkeys, brows, dead, n_base, q, out):
    """out[n] = the global row of hash q[n] in a catalog view (segments.py), or -1; returns how many
    were missing.  The delta segment's table first (its rows below ``n_delta`` count, from
    ``n_base`` on; later rows belong to later views), then the base table, whose row counts only if
    it is not in ``dead`` (sorted: a binary search)."""
    missing = 0
    for n in range(q.shape[0]):
        h = q[n] if q[n] != EMPTY else np.uint64(1)
        r = _probe(dkeys, drows, h)
        if 0 <= r < n_delta:
            out[n] = n_base + r
            continue
        b = _probe(bkeys, brows, h)
        if b >= 0 and dead.shape[0]:
            lo = first_at_least(dead, b)
            if lo < dead.shape[0] and dead[lo] == b:
                b = -1
        out[n] = b
        missing += b < 0
    return missing


class IdCollision(ValueError):
    """Two ids share a 64-bit hash (never expected; named so the store can refuse the write)."""

    def __init__(self, row: int):
        super().__init__(f"row {row}: its id's 64-bit hash equals another id's")
        self.row = row


def warm() -> None:
    """Compile (or load from the cache) the table's kernels."""
    t = IdTable(IdTable.hash(["a"]))
    t.rows(["a", "b"])
    lookup_view(t.keys, t.rows_, 1, t.keys, t.rows_, np.zeros(1, np.int64), 1, IdTable.hash(["a"]), np.empty(1, np.int64))


class IdTable:
    """Id-hash table: ``rows(ids) -> int64[len(ids)]`` (-1 = absent).  A base segment's never
    changes; a delta segment's grows in place (``insert``), see segments.py."""

    def __init__(self, hashes: np.ndarray, capacity: int = 0):
        """A table of ``hashes[i] -> i`` with room for ``capacity`` ids (at least len(hashes)) at a
        load factor of at most 1/2."""
        n = max(len(hashes), capacity)
        cap = 1 << max(4, int(2 * n - 1).bit_length())
        self.keys = np.zeros(cap, np.uint64)
        self.rows_ = np.empty(cap, np.int64)
        _fill(self.rows_, -1)  # -1 until written (see insert()); compiled: np.full holds the GIL
        bad = _insert(hashes, 0, self.keys, self.rows_)
        if bad >= 0:
            raise IdCollision(int(bad))

    def room(self, n: int) -> bool:
        """``n`` ids in all fit at a load factor of at most 1/2."""
        return 2 * n <= len(self.keys)

    def insert(self, hashes: np.ndarray, first_row: int) -> None:
        """Add ``hashes[i] -> first_row + i`` in place (ids new to the table; ``room`` checked).

        Readers may probe meanwhile: a slot only ever goes from empty to (key, row), its row reads
        -1 until written, and every reader ignores rows it does not know of (a catalog view knows
        its own length), so a reader sees the table as it was or with ids it ignores."""
        bad = _insert(hashes, first_row, self.keys, self.rows_)
        if bad >= 0:
            raise IdCollision(first_row + int(bad))

    @staticmethod
    def hash(ids: list[str]) -> np.ndarray:
        return hash_tokens(ids)

    def rows(self, ids: list[str]) -> tuple[np.ndarray, int]:
        """(rows int64, number missing) of string ids."""
        out = np.empty(len(ids), np.int64)
        missing = lookup(self.keys, self.rows_, hash_tokens(ids), out) if ids else 0
        return out, int(missing)

    def rows_of_hashes(self, hashes: np.ndarray) -> np.ndarray:
        """Rows int64 (-1 = absent) of ids given by their hashes (rows of every id in the table:
        callers that share a growing table filter by their own length)."""
        out = np.empty(len(hashes), np.int64)
        if len(hashes):
            lookup(self.keys, self.rows_, np.ascontiguousarray(hashes, np.uint64), out)
        return out
