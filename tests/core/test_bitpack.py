"""adrank/core/bitpack.py: b-bit code streams round-trip at every width and match a bit-string reference."""

import math

import numba
import numpy as np
import pytest

from adrank.core.bitpack import (
    BitpackError,
    bits_for,
    code_of,
    pack,
    pack_fields,
    packed_words,
    unpack,
    unpack_one,
)


def _reference_pack(codes, b):
    """Independent reference: a Python bit string, code i at stream bits [i*b, (i+1)*b), LSB first."""
    bits = "".join(format(int(c), f"0{b}b")[::-1] for c in codes)  # LSB-first per code
    bits += "0" * (-len(bits) % 32 + 32)  # round up to whole words + one padding word
    return np.array([int(bits[i:i + 32][::-1], 2) for i in range(0, len(bits), 32)], dtype=np.uint32)


@numba.njit(cache=True)
def _sum_via_kernel(buf, b, n):
    """unpack_one used the way a serving kernel uses it: inside a jitted loop."""
    s = 0
    for i in range(n):
        s += unpack_one(buf, b, i)
    return s


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
    np.testing.assert_array_equal(unpack(buf, b, n), codes)
    assert [unpack_one(buf, b, i) for i in range(n)] == codes.tolist()
    assert _sum_via_kernel(buf, b, n) == int(codes.sum())


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


def test_unpack_checks_stream():
    buf = pack(np.arange(10), 4)
    with pytest.raises(BitpackError, match="too short"):
        unpack(buf[:1], 4, 10)
    with pytest.raises(BitpackError, match="uint32"):
        unpack(buf.astype(np.int64), 4, 10)
    with pytest.raises(BitpackError, match="at least 1 codeword"):
        bits_for(0)


@numba.njit(cache=True)
def _all_codes(stream, word_base, bits, off, D):
    out = np.zeros((off[-1], D), np.int64)
    for f in range(off.size - 1):
        if bits[f] > 0:
            for i in range(off[f], off[f + 1]):
                for d in range(D):
                    out[i, d] = code_of(stream, word_base, bits, off, f, d, i)
    return out


def test_pack_fields_round_trips_per_field_widths():
    rng = np.random.default_rng(5)
    off = np.array([0, 7, 300, 340, 1340])
    sizes = [0, 1000, 2, 2048]  # field 0 kept dense
    bits = np.array([bits_for(K) if K else 0 for K in sizes])
    codes = np.zeros((1340, 3), np.int64)
    for f, K in enumerate(sizes):
        if K:
            codes[off[f]:off[f + 1]] = rng.integers(0, K, (off[f + 1] - off[f], 3))
    stream, word_base = pack_fields(codes, off, bits)
    assert (word_base[0] == -1).all() and (word_base[1:] >= 0).all()
    got = _all_codes(stream, word_base, bits, off, 3)
    np.testing.assert_array_equal(got[7:], codes[7:])
    assert stream.nbytes == sum(packed_words(off[f + 1] - off[f], bits[f]) * 4 * 3 for f in (1, 2, 3))
    with pytest.raises(BitpackError, match="one width per field"):
        pack_fields(codes, off, bits[:2])
