"""Bit packing of codebook codes (xLightFM, Sec. 3.3.1): ``ceil(log2 K)`` bits per code.

A code of a codebook with K codewords needs ``b = bits_for(K)`` bits (1..16).  ``pack`` lays
n codes into a little-endian bit stream held in ``uint32`` words: code ``i`` occupies stream bits
``[i*b, (i+1)*b)``, i.e. it starts at bit ``(i*b) % 32`` of word ``(i*b) // 32`` and may spill
into the next word.  One zero word of padding follows the last used word, so ``unpack_one`` can
always read two consecutive words without a bounds branch.

Torch-free (numpy + numba): the serving kernels call ``unpack_one`` inside their loops.
"""

from __future__ import annotations

import numba
import numpy as np

MAX_BITS = 16


class BitpackError(ValueError):
    """Codes or a width that cannot be packed: the message names the problem."""


def bits_for(K: int) -> int:
    """b = ceil(log2 K), at least 1: the width of a code into a codebook of K codewords."""
    K = int(K)
    if K < 1:
        raise BitpackError(f"a codebook needs at least 1 codeword, got K={K}")
    return max(1, (K - 1).bit_length())


def packed_words(n: int, b: int) -> int:
    """Number of uint32 words ``pack`` returns for n codes of b bits (incl. the padding word)."""
    return (int(n) * int(b) + 31) // 32 + 1


def _check_width(b) -> int:
    if isinstance(b, bool) or not isinstance(b, int | np.integer):
        raise BitpackError(f"bit width must be an integer, got {b!r}")
    if not 1 <= int(b) <= MAX_BITS:
        raise BitpackError(f"bit width must be in 1..{MAX_BITS}, got {b}")
    return int(b)


@numba.njit(cache=True)
def _pack(codes, b, out):
    for i in range(codes.shape[0]):
        bit = np.uint64(i) * np.uint64(b)
        w = bit >> np.uint64(5)
        s = bit & np.uint64(31)
        v = np.uint64(codes[i]) << s  # s + b <= 47 < 64: no overflow
        out[w] |= np.uint32(v & np.uint64(0xFFFFFFFF))
        out[w + np.uint64(1)] |= np.uint32(v >> np.uint64(32))


@numba.njit(cache=True, inline="always")
def unpack_one(buf, b, index):
    """Code ``index`` of a stream of b-bit codes in ``buf`` (uint32 words) -> int64.

    Branch-free: reads words w and w+1 (the padding word makes w+1 valid at the end).
    """
    bit = np.uint64(index) * np.uint64(b)
    w = bit >> np.uint64(5)
    s = bit & np.uint64(31)
    lo = np.uint64(buf[w]) | (np.uint64(buf[w + np.uint64(1)]) << np.uint64(32))
    return np.int64((lo >> s) & ((np.uint64(1) << np.uint64(b)) - np.uint64(1)))


@numba.njit(cache=True)
def _unpack(buf, b, n, out):
    for i in range(n):
        out[i] = unpack_one(buf, b, i)


def pack(codes, b: int) -> np.ndarray:
    """Pack non-negative integer codes (1-D, each < 2**b) at width b into a uint32 stream."""
    b = _check_width(b)
    codes = np.asarray(codes)
    if codes.ndim != 1:
        raise BitpackError(f"codes must be 1-D, got shape {codes.shape}")
    if codes.size and not np.issubdtype(codes.dtype, np.integer):
        raise BitpackError(f"codes must be integers, got dtype {codes.dtype}")
    if codes.size:
        lo, hi = int(codes.min()), int(codes.max())
        if lo < 0:
            raise BitpackError(f"codes must be non-negative, found {lo}")
        if hi >= 1 << b:
            raise BitpackError(f"code {hi} does not fit in {b} bits (max {(1 << b) - 1})")
    out = np.zeros(packed_words(codes.size, b), dtype=np.uint32)
    _pack(codes.astype(np.int64), b, out)
    return out


def unpack(buf, b: int, n: int) -> np.ndarray:
    """The first n codes of a stream made by ``pack`` -> int64[n]."""
    b = _check_width(b)
    buf = np.asarray(buf)
    if buf.dtype != np.uint32 or buf.ndim != 1:
        raise BitpackError(f"packed stream must be 1-D uint32, got {buf.dtype} {buf.shape}")
    if buf.size < packed_words(n, b):
        raise BitpackError(f"stream of {buf.size} words is too short for {n} codes of {b} bits "
                           f"(needs {packed_words(n, b)})")
    out = np.empty(int(n), dtype=np.int64)
    _unpack(buf, b, int(n), out)
    return out


def pack_fields(codes, id_offsets, bits):
    """Pack an [n, D] code table field by field: field f's d-th codes at width ``bits[f]``.

    Returns (``stream`` uint32, ``word_base`` int64 [m, D]): the codes of field f, codebook d
    form the sub-stream starting at word ``word_base[f, d]`` (-1 where ``bits[f] == 0``, a field
    kept dense).  Feature i of field f: ``code_of(stream, word_base, bits, id_offsets, f, d, i)``.
    """
    codes = np.asarray(codes)
    off = np.asarray(id_offsets, dtype=np.int64)
    bits = np.asarray(bits, dtype=np.int64)
    if codes.ndim != 2 or codes.shape[0] != off[-1] or bits.shape != (off.size - 1,):
        raise BitpackError(f"need codes [n, D] with n = id_offsets[-1] = {off[-1]} and one width per "
                           f"field; got codes {codes.shape}, {bits.size} widths for {off.size - 1} fields")
    D = codes.shape[1]
    word_base = np.full((off.size - 1, D), -1, dtype=np.int64)
    parts, n_words = [], 0
    for f in range(off.size - 1):
        if bits[f] == 0:
            continue
        for d in range(D):
            word_base[f, d] = n_words
            parts.append(pack(codes[off[f]:off[f + 1], d], int(bits[f])))
            n_words += parts[-1].size
    stream = np.concatenate(parts) if parts else np.zeros(1, np.uint32)
    return stream, word_base


@numba.njit(cache=True, inline="always")
def code_of(stream, word_base, bits, id_offsets, f, d, i):
    """Code of global feature id i (of field f) in codebook d, from ``pack_fields`` output."""
    return unpack_one(stream[word_base[f, d]:], bits[f], i - id_offsets[f])
