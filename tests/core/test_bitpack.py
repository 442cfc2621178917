"""adrank/core/bitpack.py: b-bit code streams match a bit-string reference at every width and
round-trip through a reference reader (the serving kernels' own reader is tested against the
decoded tables in tests/service/test_codebook_serving.py)."""

import math

import numpy as np
import pytest

from adrank.core.bitpack import BitpackError, bits_for, pack, packed_words


def _reference_pack(codes, b):
    """Independent reference: a Python bit string, code i at stream bits [i*b, (i+1)*b), LSB first."""
    bits = "".join(format(int(c), f"0{b}b")[::-1] for c in codes)  # LSB-first per code
    bits += "0" * (-len(bits) % 32 + 32)  # round up to whole words + one padding word
    return np.array([int(bits[i:i + 32][::-1], 2) for i in range(0, len(bits), 32)], dtype=np.uint32)


def _reference_unpack(buf, b, n):
    """Independent reader: code i = bits [i*b, (i+1)*b) of the little-endian word stream."""
    stream = int.from_bytes(np.asarray(buf, dtype="<u4").tobytes(), "little")
    return [(stream >> (i * b)) & ((1 << b) - 1) for i in range(n)]


@pytest.mark.parametrize("K", [1, 2, 3, 4, 5, 64, 100, 128, 255, 256, 257, 1000, 1024, 2048, 4097, 65536])
def test_bits_for_is_ceil_log2(K):
    assert bits_for(K) == max(1, math.ceil(math.log2(K)))


@pytest.mark.parametrize("b", range(1, 17))
@pytest.mark.parametrize("n", [0, 1, 31, 32, 33, 257])
def test_round_trip_every_width(b, n):
    rng = np.random.default_rng(1000 * b + n)
    codes = rng.integers(0, 1 << b, size=n)
    if n:
        codes[0] = (1 << b) - 1  # all-ones code at the start of the stream
        codes[-1] = (1 << b) - 1  # ... and at its end, next to the padding word
    buf = pack(codes, b)
    assert buf.dtype == np.uint32 and buf.size == packed_words(n, b)
    np.testing.assert_array_equal(buf, _reference_pack(codes, b))
    assert _reference_unpack(buf, b, n) == codes.tolist()


def test_packing_saves_memory():
    codes = np.arange(1024) % 1024
    assert pack(codes, bits_for(1024)).nbytes == (1024 * 10 // 32 + 1) * 4  # 10 bits/code, not 16 or 64


@pytest.mark.parametrize("codes,b,match", [
    ([0, 4], 2, "does not fit in 2 bits"),
    ([-1, 0], 3, "non-negative"),
    ([[1, 2]], 3, "1-D"),
    ([0.5], 3, "integers"),
    ([1], 0, "1..16"),
    ([1], 17, "1..16"),
    ([1], 2.0, "integer"),
])
def test_bad_input_is_named(codes, b, match):
    with pytest.raises(BitpackError, match=match):
        pack(np.asarray(codes), b)


def test_codebook_needs_a_codeword():
    with pytest.raises(BitpackError, match="at least 1 codeword"):
        bits_for(0)
