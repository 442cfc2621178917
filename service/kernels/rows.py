"""Where a kernel's embedding rows come from: a dense table, or codebooks decoded in the loop.

Every scorer takes an *embedding source* ``src`` and reads the row of feature ``idx`` (of global
field ``f``) only through the functions below, which are specialised at compile time on the type
of ``src`` (numba ``overload``), so the dense path compiles to the code it had before:

* dense:     ``src`` is the float32 table ``emb`` [n, k];  ``fetch`` = ``vload(emb, idx, K)``.
* codebook:  ``src`` is ``CodebookSource.ptrs``, the base addresses of the artifact's codebook
  arrays (docs/artifact-format.md) as plain integers, so the compiled loop does no reference
  counting (a tuple of arrays cost ~40 ns per row in increfs).  The ``CodebookSource`` object
  keeps the arrays alive; the scorer holding ``src`` holds it.  xLightFM (xlightfm.md Sec. 3):
  feature i of a quantized field f is ``q_i = [C_f^1[b_i^1], ..., C_f^D[b_i^D]]``; ``fetch``
  unpacks the D codes ``b_i^d`` (``code_bits[f]`` bits each, adjacent in the field's
  adrank/core/bitpack.py stream, so one cache line holds them) and copies the D codewords of k/D
  floats into the lanes of one ``<K x float>`` register vector.  A field kept dense
  (``code_bits[f] == 0``) reads ``dense_rows[dense_base[f] + i - id_offsets[f]]``.

    fetch(src, f, idx, K, D)       row of idx as F32Vec(K)   (K, D compile-time constants)
    add_row(src, f, idx, V, j)     V[j] += row of idx        (multi-valued field means)
    prefetch_emb(src, idx, l2)     cache hint for the row (dense; l2: into L2 only) / nothing (codebook)
    prefetch_emb_k(src, idx, l2, K)  the same with the row width K a compile-time constant (dense: a shift)
    prefetch_codes(src, X, p, ...) cache hint for row p's packed codes (codebook) / nothing (dense)
    prefetch_feature(src, f, idx, l2)  cache hint for one feature: its row (dense) / its codes (codebook)

The codebooks of the item fields (D K_f k/D floats each) stay in cache where a 1M-row table
cannot; the per-feature memory touched is the packed codes (D b_f bits) + the linear weight.
Indices are not bounds-checked here: ``adrank.core.artifact`` validates every base, width and code.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from service.kernels.codegen import (
    KERNEL,
    prefetch_addr,
    prefetch_row,
    prefetch_row_k,
    prefetch_row_l2,
    prefetch_row_l2_k,
)
from service.kernels.memory import aligned
from service.kernels.vec import F32Vec, vload, vzero

MAX_D = 8  # codebooks per field the register decoder unrolls
# src fields (all int64): addresses of codebooks f32 [W, k/D], code_stream u32, code_word_base
# i64 [m], codebook_base i64 [m, D], code_bits i64 [m], vocab_id_offsets i64 [m+1], dense_rows
# f32 [n_dense, k], dense_base i64 [m]; then k/D and D.
BOOKS, STREAM, WBASE, BBASE, BITS, OFFS, DENSE, DBASE, KD, ND = range(10)


def _literal(x):
    return x.literal_value if isinstance(x, types.IntegerLiteral) else None


def _ptr(builder, addr, ty, index=None):
    p = builder.inttoptr(addr, ty.as_pointer())
    return p if index is None else builder.gep(p, [index])


@intrinsic
def load(typingctx, addr, i, dtype):
    """``((dtype*) addr)[i]`` for dtype a numba type literal (int64, uint32, float32)."""
    ty = getattr(dtype, "dtype", None)
    if not isinstance(addr, types.Integer) or not isinstance(i, types.Integer) or ty not in (
            types.int64, types.uint32, types.float32):
        return None

    def codegen(context, builder, sig, args):
        lty = context.get_data_type(ty)
        idx = context.cast(builder, args[1], sig.args[1], types.intp)
        return builder.load(_ptr(builder, args[0], lty, idx))

    return ty(addr, i, dtype), codegen


@intrinsic
def vload_at(typingctx, addr, row, stride, K):
    """Lanes ``addr[row * stride : row * stride + K]`` (float32) as F32Vec(K)."""
    k = _literal(K)
    if k is None or not all(isinstance(a, types.Integer) for a in (addr, row, stride)):
        return None

    def codegen(context, builder, sig, args):
        f32 = ir.FloatType()
        row_ = context.cast(builder, args[1], sig.args[1], types.intp)
        st = context.cast(builder, args[2], sig.args[2], types.intp)
        ptr = _ptr(builder, args[0], f32, builder.mul(row_, st))
        return builder.load(builder.bitcast(ptr, ir.VectorType(f32, k).as_pointer()), align=4)

    return F32Vec(k)(addr, row, stride, K), codegen


@intrinsic
def vput(typingctx, x, addr, row, d, D):
    """``x`` with lanes ``[d k/D, (d+1) k/D)`` replaced by codeword ``row`` of the float32
    codebooks at ``addr`` (rows of k/D floats); d, D literal, a no-op when d >= D (so unrolled
    decoders type for every D)."""
    dl, Dl = _literal(d), _literal(D)
    if not isinstance(x, F32Vec) or dl is None or Dl is None or not isinstance(row, types.Integer):
        return None
    k = x.k

    def codegen(context, builder, sig, args):
        if dl >= Dl:
            return args[0]
        kd = k // Dl
        f32, i32 = ir.FloatType(), ir.IntType(32)
        r = context.cast(builder, args[2], sig.args[2], types.intp)
        ptr = _ptr(builder, args[1], f32, builder.mul(r, ir.Constant(r.type, kd)))
        sub = builder.load(builder.bitcast(ptr, ir.VectorType(f32, kd).as_pointer()), align=4)
        wide = builder.shuffle_vector(sub, ir.Constant(ir.VectorType(f32, kd), ir.Undefined),
                                      ir.Constant(ir.VectorType(i32, k), [t if t < kd else kd for t in range(k)]))
        mask = [k + t - dl * kd if dl * kd <= t < (dl + 1) * kd else t for t in range(k)]
        return builder.shuffle_vector(args[0], wide, ir.Constant(ir.VectorType(i32, k), mask))

    return x(x, addr, row, d, D), codegen


@njit(**KERNEL, inline="always")
def code(stream, bit, b):
    """The b-bit code at bit ``bit`` of the uint32 stream at address ``stream`` (bitpack layout:
    little-endian within words, spilling into the next word; a padding word follows the last)."""
    w = bit >> np.uint64(5)
    pair = np.uint64(load(stream, w, types.uint32)) | (
        np.uint64(load(stream, w + np.uint64(1), types.uint32)) << np.uint64(32))
    return np.int64((pair >> (bit & np.uint64(31))) & ((np.uint64(1) << np.uint64(b)) - np.uint64(1)))


@njit(**KERNEL, inline="always")
def locate(src, f, idx, D):
    """(b, local, first code bit, codebook_base row offset) of feature idx of field f: code
    (i, d) is number ``i D + d`` of the field's b-bit sub-stream starting at word wb[f]."""
    b = load(src[BITS], f, types.int64)
    local = idx - load(src[OFFS], f, types.int64)
    bit = (np.uint64(load(src[WBASE], f, types.int64)) * np.uint64(32)
           + np.uint64(local) * np.uint64(D) * np.uint64(b))
    return b, local, bit, f * D


def prefetch_codes(src, X, p, single, single_f, g0):  # pragma: no cover
    raise NotImplementedError


@overload(prefetch_codes, inline="always")
def _prefetch_codes(src, X, p, single, single_f, g0):
    if isinstance(src, types.Array):  # dense rows are prefetched by prefetch_emb: no code at all
        return lambda src, X, p, single, single_f, g0: None

    def impl(src, X, p, single, single_f, g0):
        for i in range(single.shape[0]):
            idx = X[p, single[i]]
            if idx >= 0:
                bit = locate(src, single_f[i] + g0, idx, src[ND])[2]
                prefetch_addr(src[STREAM] + np.int64(bit >> np.uint64(5)) * 4)

    return impl


def fetch(src, f, idx, K, D):  # pragma: no cover - replaced by the overload in compiled code
    raise NotImplementedError


def add_row(src, f, idx, V, j):  # pragma: no cover
    raise NotImplementedError


def prefetch_emb(src, idx, l2):  # pragma: no cover
    raise NotImplementedError


def prefetch_feature(src, f, idx, l2):  # pragma: no cover
    raise NotImplementedError


def prefetch_emb_k(src, idx, l2, K):  # pragma: no cover
    raise NotImplementedError


@overload(fetch, prefer_literal=True, inline="always")
def _fetch(src, f, idx, K, D):
    k, dd = _literal(K), _literal(D)
    if k is None or dd is None:
        return None
    if isinstance(src, types.Array):
        return lambda src, f, idx, K, D: vload(src, idx, k)
    if not isinstance(src, types.UniTuple) or not 1 <= dd <= MAX_D:
        return None

    def impl(src, f, idx, K, D):
        b, local, bit, bb = locate(src, f, idx, dd)  # dd literal: the multiplies become shifts
        if b == 0:
            return vload_at(src[DENSE], load(src[DBASE], f, types.int64) + local, k, k)
        ub = np.uint64(b)
        books, stream, base = src[BOOKS], src[STREAM], src[BBASE]
        x = vzero(k)
        if dd * b <= 32:  # one 64-bit window holds all D codes (e.g. D = 4 at <= 8 bits)
            w = bit >> np.uint64(5)
            win = (np.uint64(load(stream, w, types.uint32)) | (
                np.uint64(load(stream, w + np.uint64(1), types.uint32)) << np.uint64(32))) >> (bit & np.uint64(31))
            mask = (np.uint64(1) << ub) - np.uint64(1)
            x = vput(x, books, load(base, bb, types.int64) + np.int64(win & mask), 0, dd)
            if dd > 1:
                x = vput(x, books, load(base, bb + 1, types.int64) + np.int64((win >> ub) & mask), 1, dd)
            if dd > 2:
                x = vput(x, books, load(base, bb + 2, types.int64) + np.int64((win >> (np.uint64(2) * ub)) & mask), 2, dd)
                x = vput(x, books, load(base, bb + 3, types.int64) + np.int64((win >> (np.uint64(3) * ub)) & mask), 3, dd)
            if dd > 4:
                x = vput(x, books, load(base, bb + 4, types.int64) + np.int64((win >> (np.uint64(4) * ub)) & mask), 4, dd)
                x = vput(x, books, load(base, bb + 5, types.int64) + np.int64((win >> (np.uint64(5) * ub)) & mask), 5, dd)
                x = vput(x, books, load(base, bb + 6, types.int64) + np.int64((win >> (np.uint64(6) * ub)) & mask), 6, dd)
                x = vput(x, books, load(base, bb + 7, types.int64) + np.int64((win >> (np.uint64(7) * ub)) & mask), 7, dd)
            return x
        x = vput(x, books, load(base, bb, types.int64) + code(stream, bit, b), 0, dd)
        if dd > 1:
            x = vput(x, books, load(base, bb + 1, types.int64) + code(stream, bit + ub, b), 1, dd)
        if dd > 2:
            x = vput(x, books, load(base, bb + 2, types.int64) + code(stream, bit + np.uint64(2) * ub, b), 2, dd)
            x = vput(x, books, load(base, bb + 3, types.int64) + code(stream, bit + np.uint64(3) * ub, b), 3, dd)
        if dd > 4:
            x = vput(x, books, load(base, bb + 4, types.int64) + code(stream, bit + np.uint64(4) * ub, b), 4, dd)
            x = vput(x, books, load(base, bb + 5, types.int64) + code(stream, bit + np.uint64(5) * ub, b), 5, dd)
            x = vput(x, books, load(base, bb + 6, types.int64) + code(stream, bit + np.uint64(6) * ub, b), 6, dd)
            x = vput(x, books, load(base, bb + 7, types.int64) + code(stream, bit + np.uint64(7) * ub, b), 7, dd)
        return x

    return impl


@overload(add_row, inline="always")
def _add_row(src, f, idx, V, j):
    if isinstance(src, types.Array):
        def dense(src, f, idx, V, j):
            for t in range(V.shape[1]):
                V[j, t] += src[idx, t]
        return dense

    def impl(src, f, idx, V, j):
        b, local, bit, bb = locate(src, f, idx, src[ND])
        if b == 0:
            r = (load(src[DBASE], f, types.int64) + local) * V.shape[1]
            for t in range(V.shape[1]):
                V[j, t] += load(src[DENSE], r + t, types.float32)
            return
        kd = src[KD]
        for d in range(src[ND]):
            c = code(src[STREAM], bit + np.uint64(d) * np.uint64(b), b)
            r = (load(src[BBASE], bb + d, types.int64) + c) * kd
            for t in range(kd):
                V[j, d * kd + t] += load(src[BOOKS], r + t, types.float32)

    return impl


@overload(prefetch_emb, inline="always")
def _prefetch_emb(src, idx, l2):
    if isinstance(src, types.Array):
        def dense(src, idx, l2):
            if l2:
                prefetch_row_l2(src, idx)
            else:
                prefetch_row(src, idx)
        return dense
    return lambda src, idx, l2: None


@overload(prefetch_emb_k, prefer_literal=True, inline="always")
def _prefetch_emb_k(src, idx, l2, K):
    k = K.value if isinstance(K, types.Omitted) else _literal(K)
    if k is None:
        return None
    if k > 0 and isinstance(src, types.Array) and src.ndim == 2 and src.layout == "C":
        def dense(src, idx, l2, K):
            if l2:
                prefetch_row_l2_k(src, idx, k)
            else:
                prefetch_row_k(src, idx, k)
        return dense
    return lambda src, idx, l2, K: prefetch_emb(src, idx, l2)


@overload(prefetch_feature, inline="always")
def _prefetch_feature(src, f, idx, l2):
    if isinstance(src, types.Array):
        return lambda src, f, idx, l2: prefetch_emb(src, idx, l2)

    def impl(src, f, idx, l2):
        if idx >= 0:
            bit = locate(src, f, idx, src[ND])[2]
            prefetch_addr(src[STREAM] + np.int64(bit >> np.uint64(5)) * 4)

    return impl


# --- host side -------------------------------------------------------------------------------
class CodebookSource:
    """The artifact's codebook arrays (kept alive here: ``ptrs`` are their addresses) and the
    ``ptrs`` tuple the kernels take as ``src``."""

    def __init__(self, arrays: dict, k: int):
        books = aligned(np.asarray(arrays["codebooks"]))
        bb = np.ascontiguousarray(arrays["codebook_base"], dtype=np.int64)
        D = bb.shape[1] if bb.ndim == 2 else 0
        if books.ndim != 2 or D < 1 or D * books.shape[1] != k:
            raise ValueError(f"codebook artifact: codebooks {books.shape} x D={D} do not make k={k}")
        if D > MAX_D:
            raise ValueError(f"codebook artifact: D={D} codebooks per field; the kernels decode at most {MAX_D}")
        self.k, self.D = k, D
        self.arrays = (books, np.ascontiguousarray(arrays["code_stream"], dtype=np.uint32),
                       np.ascontiguousarray(arrays["code_word_base"], dtype=np.int64), bb,
                       np.ascontiguousarray(arrays["code_bits"], dtype=np.int64),
                       np.ascontiguousarray(arrays["vocab_id_offsets"], dtype=np.int64),
                       aligned(np.asarray(arrays["dense_rows"]).reshape(-1, k)),
                       np.ascontiguousarray(arrays["dense_base"], dtype=np.int64))
        self.ptrs = tuple(int(a.ctypes.data) for a in self.arrays) + (k // D, D)

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.arrays))


def codebook_source(arrays: dict, k: int) -> CodebookSource:
    return CodebookSource(arrays, k)


def decode_table(source: CodebookSource, ids: np.ndarray) -> np.ndarray:
    """Decoded rows float32 [len(ids), k] of feature ids (for per-ad precompute, tests)."""
    ids = np.asarray(ids, dtype=np.int64)
    out = np.zeros((len(ids), source.k), np.float32)
    _decode_into(source.ptrs, np.searchsorted(source.arrays[OFFS], ids, side="right") - 1, ids, out)
    return out


@njit(**KERNEL)
def _decode_into(src, fields, ids, out):
    for r in range(ids.shape[0]):
        add_row(src, fields[r], ids[r], out, r)
