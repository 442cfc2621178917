"""The `Scorer` interface shared by every model family.

A scorer is built once from an artifact's manifest + arrays and then answers

* ``score(ctx int32[S_C], items int32[N, S_I]) -> float64[N]``: raw scores of N candidates for
  one context, the context part computed once (Algorithm 1, step 1) and the item fields of
  every candidate streamed by a compiled kernel (steps 2-3) — no Python per candidate;
* ``score_rows(X int32[B, S]) -> float64[B]``: full rows (evaluation).  This reuses the same
  compiled kernels with a *plan* in which no field is context and every field is an item.

Subclasses provide ``_setup`` (read their arrays, pick compiled kernels for this k),
``_plan(ctx_fields, item_fields, item_offs) -> (ctx_params, item_params)`` (per-field
coefficients split by role, item slots split by :func:`fields.split_fields`),
``_context(ctx, offs, *ctx_params) -> state`` and ``_items(state, X, *item_params, out, start, stop)``
(candidates ``start:stop``).

Large auctions (``N >= parallel_min``) are split into ``threads`` contiguous slices scored
concurrently on the service's one kernel pool (pool.py).  The options that tune a scorer
(prefetch schedule, huge pages, threads) are given to it explicitly; for a served model they
come from the serving settings (service/settings.py), passed down by ``Ranker.load``.
"""

from __future__ import annotations

import numpy as np

from adrank.core.preprocess import PAD
from adrank.core.schema import Schema
from service.kernels import memory, pool, schedule
from service.kernels.fields import id_bound
from service.kernels.rows import codebook_source


class Scorer:
    kind = ""

    def __init__(self, manifest: dict, arrays: dict, *, prefetch: bool | int = True,
                 prefetch_mode: int | None = None, prefetch_linear: bool = True,
                 parallel_min: int | None = None, threads: int | None = None, huge_pages: bool = False):
        """``prefetch``/``prefetch_mode``: the schedule (schedule.py; defaults: the measured one,
        ``prefetch_linear=False`` drops the linear weights from it); ``parallel_min``/``threads``:
        auctions of at least that many candidates are split into that many slices (pool.py
        defaults); ``huge_pages``: the random-access tables go to private huge pages (memory.py)."""
        self.schema = Schema.from_dict(manifest["schema"])
        self.m = self.schema.m
        # the tables gathered at random: private huge-page copies (for arrays mapped from a file,
        # Ranker.load), or the arrays given, 64-byte aligned
        self.huge_pages = bool(huge_pages)
        self._table = memory.resident if self.huge_pages else memory.aligned
        self._set_source(manifest, arrays)
        self.linear = self._table(np.asarray(arrays["linear"]).reshape(-1))
        if self.linear.shape != (self.n_features,):
            raise ValueError(f"{self.kind} artifact: 'linear' must have {self.n_features} entries")
        self.bias = float(np.asarray(arrays["bias"]).reshape(-1)[0])
        self.prefetch = schedule.prefetch_distance(prefetch)  # candidates ahead, 0 = off
        self.prefetch_mode = schedule.prefetch_mode(prefetch_mode, prefetch_linear)  # schedule.PF_* bits
        self.parallel_min = pool.PARALLEL_MIN_CANDIDATES if parallel_min is None else parallel_min
        self.threads = pool.default_threads() if threads is None else threads
        self._setup(arrays)

        offs = np.asarray(self.schema.slot_offsets, dtype=np.int64)
        m_c = self.schema.m_context
        self.n_context_slots = int(offs[m_c])
        self.n_item_slots = int(offs[-1] - offs[m_c])
        none, ctx_f, item_f, all_f = (np.arange(a, b) for a, b in ((0, 0), (0, m_c), (m_c, self.m), (0, self.m)))
        self._ctx_offs = offs[: m_c + 1].copy()
        self._item_offs = offs[m_c:] - offs[m_c]
        self._ctx_params, self._item_params = self._plan(ctx_f, item_f, self._item_offs)
        self._rows_offs = offs
        self._rows_ctx_params, self._rows_params = self._plan(none, all_f, offs)
        self._no_ctx = np.zeros(0, dtype=np.int32)
        self._no_offs = np.zeros(1, dtype=np.int64)

    # --- public --------------------------------------------------------------------------
    def score(self, ctx, items) -> np.ndarray:
        """Raw scores float64[N] of ``items`` int32[N, S_I] under context ``ctx`` int32[S_C]."""
        return self.score_valid(self._ids(ctx, (self.n_context_slots,), "context"),
                                self._ids(items, (-1, self.n_item_slots), "items"))

    def score_valid(self, ctx, items) -> np.ndarray:
        """:meth:`score` without re-checking the ids: for callers whose ids come from this model's
        own vocabulary (service/fastpath's scanner), C-contiguous int32 ``ctx`` [S_C] and ``items``
        [N, S_I].  Two native calls fewer per request (each costs 20-30 us when the request finds
        numba's dispatcher out of cache)."""
        state = self._context(ctx, self._ctx_offs, *self._ctx_params)
        out = np.empty(items.shape[0], dtype=np.float64)
        self._run(state, items, self._item_params, out)
        return out

    def score_rows(self, X) -> np.ndarray:
        """Raw scores float64[B] of full encoded rows ``X`` int32[B, S]."""
        X = self._ids(X, (-1, self._rows_offs[-1]), "rows")
        state = self._context(self._no_ctx, self._no_offs, *self._rows_ctx_params)
        out = np.empty(X.shape[0], dtype=np.float64)
        self._run(state, X, self._rows_params, out)
        return out

    def warm(self) -> None:
        """Compile (or load from the numba cache) every kernel used at serving time."""
        ctx = np.zeros(self.n_context_slots, dtype=np.int32)
        X = np.zeros((3, self.n_item_slots), dtype=np.int32)
        state = self._context(ctx, self._ctx_offs, *self._ctx_params)
        self._items(state, X, *self._item_params, np.empty(3), 0, 3)
        self.score_rows(np.zeros((1, int(self._rows_offs[-1])), dtype=np.int32))

    @property
    def nbytes(self) -> int:
        emb = self._source.nbytes if isinstance(self.src, tuple) else self.src.nbytes
        return int(emb + self.linear.nbytes)

    def _set_source(self, manifest, arrays) -> None:
        """``self.src`` (the kernels' embedding source, rows.py), ``self.D`` (codebooks per
        field; 1 for a dense table), ``n_features``, ``k``, ``embedding``."""
        emb = manifest.get("embedding") or {"type": "dense"}
        self.embedding = emb.get("type", "dense") if isinstance(emb, dict) else str(emb)
        if self.embedding == "codebook":
            for name in ("codebooks", "code_stream", "code_word_base", "codebook_base", "code_bits",
                         "dense_rows", "dense_base", "vocab_id_offsets"):
                if name not in arrays:
                    raise ValueError(f"{self.kind} artifact: embedding type 'codebook' needs array {name!r}")
            self.k = int(manifest["embed_dim"])
            self.n_features = int(np.asarray(arrays["vocab_id_offsets"])[-1])
            self._source = codebook_source(arrays, self.k)  # holds the arrays src points into
            self.src: np.ndarray | tuple[int, ...] = self._source.ptrs  # what the kernels read rows from
            self.D = self._source.D
        elif self.embedding == "dense":
            emb = np.asarray(arrays["emb"])
            if emb.ndim != 2:
                raise ValueError(f"{self.kind} artifact: 'emb' must be 2-D [n, k], got shape {emb.shape}")
            self.n_features, self.k = emb.shape
            self.src, self.D = self._table(emb), 1
        else:
            raise ValueError(f"{self.kind} artifact: embedding type {self.embedding!r} has no kernels "
                             "(known: dense, codebook)")
        if "n_features" in manifest and int(manifest["n_features"]) != self.n_features:
            raise ValueError(f"{self.kind} artifact: the embedding has {self.n_features} rows, manifest says "
                             f"n_features={manifest['n_features']}")

    @property
    def emb(self):
        """The dense table (dense artifacts only; codebook scorers have ``src`` instead)."""
        if isinstance(self.src, tuple):
            raise AttributeError("a codebook scorer has no dense 'emb' table (see .src)")
        return self.src

    # --- helpers -------------------------------------------------------------------------
    def _run(self, state, X, params, out) -> None:
        pool.run(lambda lo, hi: self._items(state, X, *params, out, lo, hi),
                 pool.split(X.shape[0], self.threads, self.parallel_min))

    def _ids(self, a, shape, what) -> np.ndarray:
        a = np.ascontiguousarray(a, dtype=np.int32)
        if a.ndim != len(shape) or any(s >= 0 and s != t for s, t in zip(shape, a.shape, strict=True)):
            want = "x".join("N" if s < 0 else str(s) for s in shape)
            raise ValueError(f"{what}: expected an int32 array of shape [{want}], got {list(a.shape)}")
        if id_bound(a) > self.n_features:
            bad = a[(a < PAD) | (a >= self.n_features)]
            raise ValueError(f"{what}: feature ids must lie in [-1, {self.n_features}), got {bad[:5].tolist()}")
        return a

    def _setup(self, arrays):  # pragma: no cover - abstract
        raise NotImplementedError

    def _plan(self, ctx_fields, item_fields, item_offs):  # pragma: no cover - abstract
        raise NotImplementedError

    def _context(self, ctx, offs, *params):  # pragma: no cover - abstract
        raise NotImplementedError

    def _items(self, state, X, *rest):  # pragma: no cover - abstract
        raise NotImplementedError
