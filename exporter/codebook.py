"""Codebook (LightFM / xLightFM) embeddings -> the artifact's ``codebook`` embedding arrays.

xLightFM paper Sec. 3: feature i of a quantized field f is served as the concatenation
``q_i = [C_f^1[b_i^1], ..., C_f^D[b_i^D]]`` of D codewords of k/D floats.  The artifact keeps
the codebooks (float32) and the codes bit-packed at ``ceil(log2 K_f)`` bits
(``adrank.core.bitpack.pack_fields``), never the decoded [n, k] table.  Folding the FM/DPLR diagonal
into ``linear`` needs ``||q_i||^2`` per feature: computed here in float64 and chunked, as
``sum_d ||C_f^d[b_i^d]||^2`` (the squared norm of a concatenation is the sum of its parts'), so
1M+ features never materialise a dense table.  The input names are those of
``CodebookEmbedding.export_arrays()`` (docs/internals.md "Codebook embeddings").
"""

from __future__ import annotations

import numpy as np

from adrank.core.bitpack import BitpackError, bits_for, pack
from exporter.fold import ExportError

INPUTS = ("codebooks", "codes", "codebook_base", "codebook_sizes", "dense_rows", "dense_base")
CHUNK = 1 << 18  # features per step of the norm computation


def _check(p: dict, off: np.ndarray, k: int) -> tuple[int, int]:
    for name in INPUTS:
        if name not in p:
            raise ExportError(f"codebook model exported no array {name!r} (or pass --dense-embeddings "
                              "to export its decoded table)")
    books, codes = p["codebooks"], p["codes"]
    m, n = off.size - 1, int(off[-1])
    if codes.ndim != 2 or codes.shape[0] != n:
        raise ExportError(f"codes has shape {codes.shape}, expected ({n}, D)")
    D = codes.shape[1]
    if D < 1 or k % D or books.ndim != 2 or books.shape[1] != k // D:
        raise ExportError(f"codebooks has shape {books.shape}: expected (W, k/D) with k={k}, D={D}")
    if p["codebook_base"].shape != (m, D) or p["codebook_sizes"].shape != (m,) or p["dense_base"].shape != (m,):
        raise ExportError(f"codebook_base/codebook_sizes/dense_base must be [m, D]/[m]/[m] with m={m}, D={D}")
    if p["dense_rows"].ndim != 2 or (len(p["dense_rows"]) and p["dense_rows"].shape[1] != k):
        raise ExportError(f"dense_rows has shape {p['dense_rows'].shape}, expected (n_dense, {k})")
    for name in ("codebooks", "dense_rows"):
        if not np.all(np.isfinite(p[name])):
            raise ExportError(f"array {name!r} holds NaN or infinite values")
    return D, k // D


def pack_interleaved(codes: np.ndarray, off: np.ndarray, bits: np.ndarray):
    """(stream uint32, word_base int64 [m]): field f's codes, feature-major (the D codes of a
    feature adjacent: code (i, d) is number ``(i - off[f]) D + d``), packed at ``bits[f]`` by
    ``adrank.core.bitpack.pack`` from word ``word_base[f]`` (-1 for a dense-kept field).  One feature's
    D codes share one cache line, so decoding a row costs one gather, like a dense row."""
    parts, word_base, n_words = [], np.full(off.size - 1, -1, np.int64), 0
    for f in range(off.size - 1):
        if bits[f]:
            try:
                parts.append(pack(codes[off[f]:off[f + 1]].reshape(-1), int(bits[f])))
            except BitpackError as exc:
                raise ExportError(f"codes of field {f} cannot be packed: {exc}") from None
            word_base[f] = n_words
            n_words += parts[-1].size
    return (np.concatenate(parts) if parts else np.zeros(1, np.uint32)), word_base


def codebook_arrays(params: dict, id_offsets, k: int) -> tuple[dict, dict, np.ndarray]:
    """(artifact arrays, manifest ``embedding`` members, ||q_i||^2 float64 [n]) of a codebook model."""
    off = np.asarray(id_offsets, dtype=np.int64)
    p = {name: np.asarray(params[name]) for name in INPUTS if name in params}
    D, kd = _check(p, off, k)
    sizes = p["codebook_sizes"].astype(np.int64)
    bits = np.array([bits_for(K) if K else 0 for K in sizes], dtype=np.int64)
    stream, word_base = pack_interleaved(p["codes"], off, bits)
    books = np.ascontiguousarray(p["codebooks"], dtype=np.float32)
    dense = np.ascontiguousarray(p["dense_rows"], dtype=np.float32).reshape(-1, k)
    word_norm = np.einsum("wj,wj->w", books.astype(np.float64), books.astype(np.float64))
    sq = np.zeros(int(off[-1]), dtype=np.float64)
    for f in range(off.size - 1):
        lo, hi = int(off[f]), int(off[f + 1])
        for a in range(lo, hi, CHUNK):
            b = min(hi, a + CHUNK)
            if sizes[f]:
                rows = p["codebook_base"][f][None, :] + p["codes"][a:b].astype(np.int64)
                sq[a:b] = word_norm[rows].sum(axis=1)
            else:
                r = dense[p["dense_base"][f] + a - lo : p["dense_base"][f] + b - lo].astype(np.float64)
                sq[a:b] = np.einsum("jk,jk->j", r, r)
    arrays = {"codebooks": books, "code_stream": stream, "code_word_base": word_base,
              "codebook_base": p["codebook_base"].astype(np.int64), "codebook_sizes": sizes,
              "code_bits": bits, "dense_rows": dense, "dense_base": p["dense_base"].astype(np.int64)}
    section = {"D": int(D), "sub_dim": int(kd), "n_codewords": len(books), "n_words": len(stream),
               "n_dense": len(dense), "K": sizes.tolist(), "bits": bits.tolist()}
    return arrays, section, sq
