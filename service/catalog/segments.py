"""Immutable catalog views: a large *base* segment plus a small *delta* segment.

A view is what one request reads: ``base`` (every ad as of the last merge), ``dead`` (sorted base
rows deleted or overridden since), and ``delta`` (the ads written since the merge, each once, in
write order).  An ad's *global row* is its base row, or ``len(base) + `` its delta row; replies
break score ties by global row.  Writes never touch a published view: they build the next one
from the old delta (bounded by the merge threshold) and the ads they change, so a write costs what
it changes, not the catalog's size; a background merge folds the delta into a new base
(service/catalog/store.py).

Ids and raw features live in :class:`Strings` arenas (one byte buffer + offsets), not in Python
lists: a million ids are two arrays for the garbage collector instead of a million objects.  A
merge moves hundreds of MB (every live row's parts, ids and features): it does so in compiled
loops that release the GIL (``take_concat``), because NumPy's own ``concatenate`` and fancy
indexing hold it for the whole copy — tens of ms at this size, during which no request of the
process can run.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import msgspec
import numba
import numpy as np

from service.catalog.idtable import IdTable, lookup_view
from service.kernels.codegen import PLAIN


@numba.njit(**PLAIN)
def _take_concat_1d(a, rows, b, out):
    n = rows.shape[0]
    for i in range(n):
        out[i] = a[rows[i]]
    for i in range(b.shape[0]):
        out[n + i] = b[i]


@numba.njit(**PLAIN)
def _take_concat_2d(a, rows, b, out):
    n = rows.shape[0]
    for i in range(n):
        out[i, :] = a[rows[i], :]
    for i in range(b.shape[0]):
        out[n + i, :] = b[i, :]


@numba.njit(**PLAIN)
def _strings_offsets(a_off, rows, b_off, out_off):
    n = rows.shape[0]
    out_off[0] = 0
    for i in range(n):
        out_off[i + 1] = out_off[i] + a_off[rows[i] + 1] - a_off[rows[i]]
    for i in range(b_off.shape[0] - 1):
        out_off[n + i + 1] = out_off[n + i] + b_off[i + 1] - b_off[i]


@numba.njit(**PLAIN)
def _strings_copy(a, a_off, rows, b, out_off, out):
    n = rows.shape[0]
    for i in range(n):
        lo, o = a_off[rows[i]], out_off[i]
        out[o : o + a_off[rows[i] + 1] - lo] = a[lo : a_off[rows[i] + 1]]
    o = out_off[n]
    out[o : o + b.shape[0]] = b


def take_concat(a: np.ndarray, rows: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``concatenate([a[rows], b])`` (1-D, or 2-D by rows) into ``out`` (allocated when None), GIL-free."""
    rows = np.ascontiguousarray(rows, np.int64)
    if out is None:
        out = np.empty((len(rows) + len(b),) + a.shape[1:], a.dtype)
    (_take_concat_2d if a.ndim == 2 else _take_concat_1d)(a, rows, b, out)
    return out


def warm() -> None:
    """Compile (or load from the cache) the merge's copy loops for the types a catalog uses."""
    rows = np.zeros(1, np.int64)
    for dt in (np.uint64, np.int64, np.float64):
        take_concat(np.zeros(1, dt), rows, np.zeros(1, dt))
    take_concat(np.zeros((1, 1), np.float32), rows, np.zeros((1, 1), np.float32))
    s = Strings.of([b"a"])
    s.take_concat(rows, s)


def _runs(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) positions in ``rows`` of its runs of consecutive values."""
    cut = np.flatnonzero(np.diff(rows) != 1) + 1
    return np.concatenate([[0], cut]), np.concatenate([cut, [len(rows)]])


class Strings:
    """An immutable list of byte strings: ``data`` uint8 and ``off`` int64[n + 1]."""

    __slots__ = ("data", "off")

    def __init__(self, data: np.ndarray, off: np.ndarray):
        self.data, self.off = data, off

    @classmethod
    def of(cls, items: list[bytes]) -> Strings:
        off = np.zeros(len(items) + 1, np.int64)
        np.cumsum([len(b) for b in items], out=off[1:])
        return cls(np.frombuffer(b"".join(items), np.uint8) if items else np.zeros(0, np.uint8), off)

    def __len__(self) -> int:
        return len(self.off) - 1

    def raw(self, i: int) -> bytes:
        return self.data[self.off[i] : self.off[i + 1]].tobytes()

    def str(self, i: int) -> str:
        return self.raw(i).decode()

    def take(self, rows: np.ndarray) -> Strings:
        """The strings at ``rows`` (int64), in that order: each run of consecutive rows is one
        block copy (a merge keeps nearly every row of the base, in order)."""
        rows = np.ascontiguousarray(rows, np.int64)
        if len(rows) == 0:
            return Strings.of([])
        lens = self.off[rows + 1] - self.off[rows]
        off = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(lens, out=off[1:])
        data = np.empty(int(off[-1]), np.uint8)
        for j, k in zip(*(x.tolist() for x in _runs(rows)), strict=True):
            lo, hi = self.off[rows[j]], self.off[rows[k - 1] + 1]
            data[off[j] : off[j] + hi - lo] = self.data[lo:hi]
        return Strings(data, off)

    def take_concat(self, rows: np.ndarray, other: Strings) -> Strings:
        """``self.take(rows) + other`` in compiled loops that release the GIL (a merge's copy)."""
        rows = np.ascontiguousarray(rows, np.int64)
        off = np.empty(len(rows) + len(other) + 1, np.int64)
        _strings_offsets(self.off, rows, other.off, off)
        data = np.empty(int(off[-1]), np.uint8)
        _strings_copy(self.data, self.off, rows, other.data, off, data)
        return Strings(data, off)

    def __add__(self, other: Strings) -> Strings:
        return Strings(np.concatenate([self.data, other.data]),
                       np.concatenate([self.off, other.off[1:] + self.off[-1]]))


@dataclass(frozen=True)
class Part:
    """One model version's per-ad parts of a segment: row a scores ``const + c[a] + <z, W[a]>``."""

    W: np.ndarray  # float32[N, D], 64-byte aligned rows
    c: np.ndarray  # float64[N]


@dataclass(frozen=True)
class Segment:
    """Rows of ads: ids, raw features (JSON), id hashes + table, write stamps, parts per model key.

    A delta segment's arrays are the first ``len`` rows of its :class:`Buffers`, shared with the
    views that extend it: a write appends in place, after every row an older view can see."""

    ids: Strings
    features: Strings
    hashes: np.ndarray  # uint64[N]
    table: IdTable
    born: np.ndarray  # int64[N]: the view version that wrote the row
    bids: np.ndarray  # float64[N]: the ad's stored bid, NaN for none (store.set_bids changes them alone)
    parts: dict  # model key -> Part
    buffers: Buffers | None = None  # a delta's room to grow; None: copy to change

    def __len__(self) -> int:
        return len(self.hashes)

    @classmethod
    def empty(cls, parts: dict) -> Segment:
        return cls(Strings.of([]), Strings.of([]), np.zeros(0, np.uint64), IdTable(np.zeros(0, np.uint64)),
                   np.zeros(0, np.int64), np.zeros(0), parts)

    def with_parts(self, parts: dict) -> Segment:
        return Segment(self.ids, self.features, self.hashes, self.table, self.born, self.bids, parts)

    @functools.cached_property
    def max_bid(self) -> float:
        """The largest stored bid (0 when none): bounds every ad's eCPM in the top-k by value."""
        return float(np.nanmax(self.bids)) if len(self.bids) and not np.all(np.isnan(self.bids)) else 0.0

    def with_bids(self, bids: np.ndarray) -> Segment:
        """The same rows with other bids (a copy: views never change; a delta keeps no buffers,
        so its next write copies it)."""
        return Segment(self.ids, self.features, self.hashes, self.table, self.born, bids, self.parts)


class Buffers:
    """Capacity arrays behind a delta segment.  Only the view holding all ``length`` rows may add
    rows (``append``); the rows below ``length`` never change, so every older view stays valid."""

    def __init__(self, rows: int, id_bytes: int, feature_bytes: int, dims: dict):
        from service.kernels.memory import aligned_empty

        self.ids, self.ids_off = np.empty(id_bytes, np.uint8), np.zeros(rows + 1, np.int64)
        self.features, self.features_off = np.empty(feature_bytes, np.uint8), np.zeros(rows + 1, np.int64)
        self.hashes, self.born = np.empty(rows, np.uint64), np.empty(rows, np.int64)
        self.bids = np.empty(rows)
        self.W = {k: aligned_empty((rows, D)) for k, D in dims.items()}
        self.c = {k: np.empty(rows) for k in dims}
        self.table = IdTable(np.zeros(0, np.uint64), capacity=rows)
        self.length = 0

    def fits(self, n: int, id_bytes: int, feature_bytes: int, keys) -> bool:
        return (self.length + n <= len(self.hashes) and self.ids_off[self.length] + id_bytes <= len(self.ids)
                and self.features_off[self.length] + feature_bytes <= len(self.features) and set(keys) == set(self.W))

    def append(self, ids: Strings, features: Strings, hashes: np.ndarray, born: np.ndarray, bids: np.ndarray,
               parts: dict) -> Segment:
        """Write rows after ``length`` (``fits`` checked; the ids are new to the table) and return
        the segment of every row so far."""
        n0, n = self.length, len(hashes)
        for data, off, src in ((self.ids, self.ids_off, ids), (self.features, self.features_off, features)):
            b0 = off[n0]
            data[b0 : b0 + len(src.data)] = src.data
            off[n0 + 1 : n0 + n + 1] = src.off[1:] + b0
        self.hashes[n0 : n0 + n], self.born[n0 : n0 + n], self.bids[n0 : n0 + n] = hashes, born, bids
        for k, p in parts.items():
            self.W[k][n0 : n0 + n], self.c[k][n0 : n0 + n] = p.W, p.c
        self.table.insert(hashes, n0)  # last: readers of older views ignore these rows
        self.length = n0 + n
        return self.segment()

    def segment(self) -> Segment:
        n = self.length
        return Segment(Strings(self.ids[: self.ids_off[n]], self.ids_off[: n + 1]),
                       Strings(self.features[: self.features_off[n]], self.features_off[: n + 1]),
                       self.hashes[:n], self.table, self.born[:n], self.bids[:n],
                       {k: Part(self.W[k][:n], self.c[k][:n]) for k in self.W}, self)


def delta(ids: Strings, features: Strings, hashes: np.ndarray, born: np.ndarray, bids: np.ndarray, parts: dict,
          room: int = 0) -> Segment:
    """A delta segment of these rows, in new buffers with room for about as many again plus ``room``."""
    n = len(hashes)
    rows = max(2 * n + room, 1024)
    per_row_ids = len(ids.data) / max(n, 1) if n else 16
    per_row_features = len(features.data) / max(n, 1) if n else 256
    buf = Buffers(rows, int(rows * per_row_ids * 1.5) + 4096, int(rows * per_row_features * 1.5) + 65536,
                  {k: p.W.shape[1] for k, p in parts.items()})
    return buf.append(ids, features, hashes, born, bids, parts)


@dataclass(frozen=True)
class View:
    """One immutable state of the catalog (see the module docstring)."""

    version: int
    base: Segment
    dead: np.ndarray  # int64, sorted: base rows no longer live
    delta: Segment
    models: dict  # model key -> store.Model the parts were computed for

    @property
    def size(self) -> int:
        return len(self.base) - len(self.dead) + len(self.delta)

    def __len__(self) -> int:
        return self.size

    def rows(self, hashes: np.ndarray) -> tuple[np.ndarray, int]:
        """(global rows int64, number missing) of ids given by their 64-bit hashes (-1 = absent)."""
        out = np.empty(len(hashes), np.int64)
        missing = lookup_view(self.delta.table.keys, self.delta.table.rows_, len(self.delta), self.base.table.keys,
                              self.base.table.rows_, self.dead, len(self.base), hashes, out) if len(hashes) else 0
        return out, int(missing)

    def row_of(self, ad_id: str) -> int:
        """The global row of ``ad_id``, or -1 (hash found but another id: a collision, refused at write)."""
        g = int(self.rows(IdTable.hash([ad_id]))[0][0])
        return g if g >= 0 and self.id_of(g) == ad_id else -1

    def id_of(self, g: int) -> str:
        nb = len(self.base)
        return self.base.ids.str(g) if g < nb else self.delta.ids.str(g - nb)

    def ids_of(self, rows) -> list[str]:
        return [self.id_of(g) for g in rows]

    def bid_of(self, g: int) -> float | None:
        nb = len(self.base)
        b = float(self.base.bids[g] if g < nb else self.delta.bids[g - nb])
        return None if b != b else b

    def bids_at(self, rows: np.ndarray) -> np.ndarray:
        """The stored bids (NaN: none) of global ``rows``."""
        rows = np.asarray(rows, np.int64)
        nb = len(self.base)
        return np.where(rows < nb, self.base.bids[np.minimum(rows, max(nb - 1, 0))] if nb else np.nan,
                        self.delta.bids[np.clip(rows - nb, 0, max(len(self.delta) - 1, 0))] if len(self.delta) else np.nan)

    def features_raw(self, g: int) -> bytes:
        nb = len(self.base)
        return self.base.features.raw(g) if g < nb else self.delta.features.raw(g - nb)

    def get(self, ad_id: str) -> dict | None:
        g = self.row_of(ad_id)
        return None if g < 0 else msgspec.json.decode(self.features_raw(g))

    def live_base_rows(self) -> np.ndarray:
        keep = np.ones(len(self.base), bool)
        keep[self.dead] = False
        return np.flatnonzero(keep)

    def all_ids(self) -> list[str]:
        """Every live id, in global row order (tests, small catalogs)."""
        return self.ids_of(self.live_base_rows().tolist()) + [self.delta.ids.str(r) for r in range(len(self.delta))]
