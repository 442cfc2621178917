"""Bit packing of codebook codes (xLightFM, Sec. 3.3.1): ``ceil(log2 K)`` bits per code.

A code of a codebook with K codewords needs ``b = bits_for(K)`` bits (1..16).  ``pack`` lays
n codes into a little-endian bit stream held in ``uint32`` words: code ``i`` occupies stream bits
``[i*b, (i+1)*b)``, i.e. it starts at bit ``(i*b) % 32`` of word ``(i*b) // 32`` and may spill
into the next word.  One zero word of padding follows the last used word, so a reader can
always read two consecutive words without a bounds branch.

The exporter packs a codebook artifact's codes with :func:`pack` (exporter/codebook.py); the
serving kernels read them in their loops with their own decoder (``code`` in
service/kernels/rows.py), specialised at compile time.
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
