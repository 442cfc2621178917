"""Where a kernel's embedding rows come from: a dense table, or codebooks decoded in the loop.

Every scorer takes an *embedding source* ``src`` and reads the row of feature ``idx`` (of global
field ``f``) only through the three functions below, which are specialised at compile time on the
type of ``src`` (numba ``overload``), so the dense path compiles to exactly the code it had before:

* dense:     ``src`` is the float32 table ``emb`` [n, k];  ``fetch`` = ``vload(emb, idx, K)``.
* codebook:  ``src`` is the tuple :func:`codebook_source` builds from the artifact's codebook
  arrays (docs/artifact-format.md).  xLightFM (xlightfm.md Sec. 3, Eq. 3): feature i of a
  quantized field f is ``q_i = [C_f^1[b_i^1], ..., C_f^D[b_i^D]]``; ``fetch`` unpacks the D codes
  ``b_i^d`` (``code_bits[f]`` bits each, the adrank/bitpack.py stream layout) and copies the D
  codewords of k/D floats into the lanes of one ``<K x float>`` register vector.  A field kept
  dense (``code_bits[f] == 0``) reads ``dense_rows[dense_base[f] + i - id_offsets[f]]``.

    fetch(src, f, idx, K, D)       row of idx as F32Vec(K)   (K, D compile-time constants)
    add_row(src, f, idx, V, j)     V[j] += row of idx        (multi-valued field means)
    prefetch_emb(src, idx)         cache hint for the row (dense) / nothing (codebooks: small)

The codebooks of the item fields (D K_f k/D floats each) stay in cache where a 1M-row table
cannot; the per-feature memory touched is the packed codes (D b_f bits) + the linear weight.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from service.kernels.config import NJIT, aligned, prefetch_row
from service.kernels.vec import F32Vec, _row_ptr, vload, vzero

MAX_D = 8  # codebooks per field the register decoder unrolls


def _literal(x):
    return x.literal_value if isinstance(x, types.IntegerLiteral) else None


@intrinsic
def vput(typingctx, x, books, row, d, D):
    """``x`` with lanes ``[d k/D, (d+1) k/D)`` replaced by ``books[row, 0:k/D]`` (d, D literal;
    a no-op when d >= D, so unrolled decoders type for every D)."""
    dl, Dl = _literal(d), _literal(D)
    if not isinstance(x, F32Vec) or dl is None or Dl is None or not isinstance(row, types.Integer):
        return None
    k = x.k

    def codegen(context, builder, sig, args):
        if dl >= Dl:
            return args[0]
        kd = k // Dl
        r = context.cast(builder, args[2], sig.args[2], types.intp)
        ptr = _row_ptr(context, builder, sig.args[1], args[1], r)
        f32 = ir.FloatType()
        sub = builder.load(builder.bitcast(ptr, ir.VectorType(f32, kd).as_pointer()), align=4)
        i32 = ir.IntType(32)
        wide = builder.shuffle_vector(sub, ir.Constant(ir.VectorType(f32, kd), ir.Undefined),
                                      ir.Constant(ir.VectorType(i32, k), [t if t < kd else kd for t in range(k)]))
        mask = [k + t - dl * kd if dl * kd <= t < (dl + 1) * kd else t for t in range(k)]
        return builder.shuffle_vector(args[0], wide, ir.Constant(ir.VectorType(i32, k), mask))

    return x(x, books, row, d, D), codegen


@njit(**NJIT, inline="always")
def code(stream, word, b, local):
    """Code ``local`` of the b-bit sub-stream starting at uint32 word ``word`` (bitpack layout:
    code i at stream bits [i b, (i+1) b) of the sub-stream; one padding word after the last)."""
    bit = np.uint64(word) * np.uint64(32) + np.uint64(local) * np.uint64(b)
    w = bit >> np.uint64(5)
    pair = np.uint64(stream[w]) | (np.uint64(stream[w + np.uint64(1)]) << np.uint64(32))
    return np.int64((pair >> (bit & np.uint64(31))) & ((np.uint64(1) << np.uint64(b)) - np.uint64(1)))


def fetch(src, f, idx, K, D):  # pragma: no cover - replaced by the overload in compiled code
    raise NotImplementedError


def add_row(src, f, idx, V, j):  # pragma: no cover
    raise NotImplementedError


def prefetch_emb(src, idx):  # pragma: no cover
    raise NotImplementedError


@overload(fetch, prefer_literal=True, inline="always")
def _fetch(src, f, idx, K, D):
    k, dd = _literal(K), _literal(D)
    if k is None or dd is None:
        return None
    if isinstance(src, types.Array):
        return lambda src, f, idx, K, D: vload(src, idx, k)
    if not isinstance(src, types.BaseTuple) or not 1 <= dd <= MAX_D:
        return None

    def impl(src, f, idx, K, D):
        books, stream, wb, bb, bits, off, dense, db = src
        b = bits[f]
        local = idx - off[f]
        if b == 0:
            return vload(dense, db[f] + local, k)
        x = vzero(k)
        x = vput(x, books, bb[f, 0] + code(stream, wb[f, 0], b, local), 0, dd)
        if dd > 1:
            x = vput(x, books, bb[f, 1] + code(stream, wb[f, 1], b, local), 1, dd)
        if dd > 2:
            x = vput(x, books, bb[f, 2] + code(stream, wb[f, 2], b, local), 2, dd)
            x = vput(x, books, bb[f, 3] + code(stream, wb[f, 3], b, local), 3, dd)
        if dd > 4:
            x = vput(x, books, bb[f, 4] + code(stream, wb[f, 4], b, local), 4, dd)
            x = vput(x, books, bb[f, 5] + code(stream, wb[f, 5], b, local), 5, dd)
            x = vput(x, books, bb[f, 6] + code(stream, wb[f, 6], b, local), 6, dd)
            x = vput(x, books, bb[f, 7] + code(stream, wb[f, 7], b, local), 7, dd)
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
        books, stream, wb, bb, bits, off, dense_rows, db = src
        b = bits[f]
        local = idx - off[f]
        if b == 0:
            r = db[f] + local
            for t in range(V.shape[1]):
                V[j, t] += dense_rows[r, t]
            return
        kd = books.shape[1]
        for d in range(wb.shape[1]):
            r = bb[f, d] + code(stream, wb[f, d], b, local)
            for t in range(kd):
                V[j, d * kd + t] += books[r, t]

    return impl


@overload(prefetch_emb, inline="always")
def _prefetch_emb(src, idx):
    if isinstance(src, types.Array):
        return lambda src, idx: prefetch_row(src, idx)
    return lambda src, idx: None


# --- host side -------------------------------------------------------------------------------
CODEBOOK_ARRAYS = ("codebooks", "code_stream", "code_word_base", "codebook_base", "code_bits",
                   "vocab_id_offsets", "dense_rows", "dense_base")


def codebook_source(arrays: dict, k: int) -> tuple:
    """The codebook ``src`` tuple (field order of :data:`CODEBOOK_ARRAYS`), arrays kept as the
    artifact's (mmapped, 64-byte aligned) views where their dtype already fits."""
    books = aligned(np.asarray(arrays["codebooks"]))
    D = np.asarray(arrays["code_word_base"]).shape[1]
    if books.ndim != 2 or D < 1 or D * books.shape[1] != k:
        raise ValueError(f"codebook artifact: codebooks {books.shape} x D={D} do not make k={k}")
    if D > MAX_D:
        raise ValueError(f"codebook artifact: D={D} codebooks per field; the kernels decode at most {MAX_D}")
    ints = [np.ascontiguousarray(arrays[n], dtype=np.int64) for n in
            ("code_word_base", "codebook_base", "code_bits", "vocab_id_offsets")]
    stream = np.ascontiguousarray(arrays["code_stream"], dtype=np.uint32)
    dense = aligned(np.asarray(arrays["dense_rows"]).reshape(-1, k))
    return (books, stream, *ints, dense, np.ascontiguousarray(arrays["dense_base"], dtype=np.int64))


def decode_table(src: tuple, ids: np.ndarray) -> np.ndarray:
    """Decoded rows float32 [len(ids), k] of feature ids (for per-ad precompute, tests)."""
    ids = np.asarray(ids, dtype=np.int64)
    k = src[6].shape[1]
    out = np.zeros((len(ids), k), np.float32)
    _decode_into(src, np.searchsorted(src[5], ids, side="right") - 1, ids, out)
    return out


@njit(**NJIT)
def _decode_into(src, fields, ids, out):
    for r in range(ids.shape[0]):
        add_row(src, fields[r], ids[r], out, r)
