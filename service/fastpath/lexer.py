"""Byte-level JSON primitives for the fast path's scanner (compiled, no Python object per token).

Every function takes the body as ``uint8[n]`` and an index, and returns the index after what it
read (-1 = not in the supported subset: the caller falls back to the generic path).  Strings are
JSON strings *without escapes*: their bytes in the body are exactly their UTF-8 encoding, so a
string token is hashed in place with adrank's FNV-1a + splitmix (``adrank.core.preprocess``), in the
same loop that validates it.  Compiled without the Numba runtime (``codegen.NO_RUNTIME``, see scanner.py):
no function here may allocate.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from adrank.core.hashing import mix64
from service.kernels.codegen import NO_RUNTIME

FNV_OFFSET = np.uint64(0xCBF29CE484222325)
FNV_PRIME = np.uint64(0x100000001B3)
NUMERIC_DIGITS = 15  # numeric fields take integers exact as float64
INT_DIGITS = 18
KEYS = np.frombuffer(b"modeltop_kcontextadsidfeaturesvaluesbidrank_byexplain", dtype=np.uint8)  # code 1..10
KEY_OFF = np.array([0, 5, 10, 17, 20, 22, 30, 36, 39, 46, 53], dtype=np.int64)
K_MODEL, K_TOP_K, K_CONTEXT, K_ADS, K_ID, K_FEATURES, K_VALUES, K_BID, K_RANK_BY, K_EXPLAIN = range(1, 11)
DECIMAL_DIGITS = 15  # a bid of <= 15 significant digits is exact as mantissa / 10^fraction (see ``decimal``)
POW10 = np.array([10.0**j for j in range(DECIMAL_DIGITS + 1)])
_NULL = np.frombuffer(b"null", dtype=np.uint8)
_TRUE = np.frombuffer(b"true", dtype=np.uint8)
_FALSE = np.frombuffer(b"false", dtype=np.uint8)
# _scalar's kinds
MISSING_VALUE, STRING, INTEGER, BOOLEAN, BAD = 0, 1, 2, 3, -1


def python_bin(x: int) -> int:
    """``numeric_token``'s bin for an integer x > 2, computed exactly as Python does."""
    return int(math.floor(math.log(float(x)) ** 2))


def bin_edges() -> tuple[np.ndarray, np.ndarray]:
    """(edges, bins): bins[j] is Python's bin of every integer in [edges[j], edges[j+1])."""
    top = 10**NUMERIC_DIGITS
    edges, bins, x = [3], [python_bin(3)], 3
    while True:
        b = bins[-1] + 1
        if python_bin(top) < b:
            break
        lo, hi = x, top  # smallest integer with bin >= b (python_bin is monotone in x)
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (mid + 1, hi) if python_bin(mid) < b else (lo, mid)
        edges.append(lo)
        bins.append(python_bin(lo))
        x = lo
    return np.array(edges, dtype=np.int64), np.array(bins, dtype=np.int64)


@numba.njit(**NO_RUNTIME)
def ws(b, i):
    """The index of the first non-whitespace byte at or after ``i`` (JSON's four)."""
    while i < b.shape[0] and (b[i] == 32 or b[i] == 10 or b[i] == 13 or b[i] == 9):
        i += 1
    return i


@numba.njit(**NO_RUNTIME, inline="always")
def _utf8_end(b, i):
    """End of the multi-byte UTF-8 sequence starting at ``i`` (lead byte >= 0x80), or -1 when it
    is invalid (overlong, surrogate, > U+10FFFF, truncated)."""
    c = b[i]
    if c < 0xC2 or c > 0xF4:
        return -1
    need = 1 if c < 0xE0 else (2 if c < 0xF0 else 3)
    if i + need >= b.shape[0]:
        return -1
    c1 = b[i + 1]
    if (c1 & 0xC0) != 0x80 or (c == 0xE0 and c1 < 0xA0) or (c == 0xED and c1 >= 0xA0) \
            or (c == 0xF0 and c1 < 0x90) or (c == 0xF4 and c1 >= 0x90):
        return -1
    for k in range(2, need + 1):
        if (b[i + k] & 0xC0) != 0x80:
            return -1
    return i + need + 1


@numba.njit(**NO_RUNTIME)
def string_end(b, i):
    """Index of the closing quote of the string whose body starts at ``i``; -1 if it has an escape,
    a control character or invalid UTF-8, or never ends."""
    n = b.shape[0]
    while i < n:
        c = b[i]
        if c == 34:
            return i
        if c == 92 or c < 32:
            return -1
        if c < 128:
            i += 1
        else:
            i = _utf8_end(b, i)
            if i < 0:
                return -1
    return -1


@numba.njit(**NO_RUNTIME)
def string_hash(b, i):
    """(closing quote index, token hash) of the string whose body starts at ``i``: ``string_end``
    and ``hash_span`` in one pass (the hash's multiply chain hides the checks)."""
    n, h = b.shape[0], FNV_OFFSET
    while i < n:
        c = b[i]
        if c == 34:
            return i, mix64(h)
        if c == 92 or c < 32:
            return -1, h
        if c < 128:
            h = (h ^ np.uint64(c)) * FNV_PRIME
            i += 1
        else:
            e = _utf8_end(b, i)
            if e < 0:
                return -1, h
            while i < e:
                h = (h ^ np.uint64(b[i])) * FNV_PRIME
                i += 1
    return -1, h


@numba.njit(**NO_RUNTIME)
def hash_span(b, s, e):
    """adrank's token hash of the bytes ``b[s:e]``."""
    h = FNV_OFFSET
    for i in range(s, e):
        h = (h ^ np.uint64(b[i])) * FNV_PRIME
    return mix64(h)


@numba.njit(**NO_RUNTIME)
def integer(b, i):
    """(end, value) of a JSON integer at ``i`` of <= 18 digits, not ``-0``; end = -1 otherwise
    (a fraction or exponent included: floats are left to the generic path)."""
    n, neg, v = b.shape[0], False, np.int64(0)
    if i < n and b[i] == 45:
        neg, i = True, i + 1
    s = i
    while i < n and 48 <= b[i] <= 57:
        v = v * 10 + np.int64(b[i] - 48) if i - s < INT_DIGITS else v
        i += 1
    d = i - s
    if d == 0 or d > INT_DIGITS or (d > 1 and b[s] == 48) or (neg and v == 0):
        return -1, v
    if i < n and (b[i] == 46 or b[i] == 101 or b[i] == 69):
        return -1, v
    return i, -v if neg else v


@numba.njit(**NO_RUNTIME)
def decimal(b, i):
    """(end, value) of a non-negative JSON number without exponent of <= 15 digits in all, e.g. a
    bid ``2.5``; end = -1 otherwise.  Both the digits as an integer (< 10^15 < 2^53) and 10^fraction
    (<= 10^15) are exact in float64, so their IEEE quotient is the correctly rounded value of the
    decimal: exactly Python's ``float(text)`` (Clinger's fast path)."""
    n, v, s = b.shape[0], np.int64(0), i
    while i < n and 48 <= b[i] <= 57:
        v = v * 10 + np.int64(b[i] - 48) if i - s < DECIMAL_DIGITS else v
        i += 1
    d = i - s
    if d == 0 or (d > 1 and b[s] == 48):
        return -1, 0.0
    frac = 0
    if i < n and b[i] == 46:
        i += 1
        f0 = i
        while i < n and 48 <= b[i] <= 57:
            v = v * 10 + np.int64(b[i] - 48) if d + i - f0 < DECIMAL_DIGITS else v
            i += 1
        frac = i - f0
        if frac == 0:
            return -1, 0.0
    if d + frac > DECIMAL_DIGITS or (i < n and (b[i] == 101 or b[i] == 69)):
        return -1, 0.0
    return i, np.float64(v) / POW10[frac]


@numba.njit(**NO_RUNTIME)
def literal(b, i, word):
    """``b[i:]`` starts with the bytes ``word`` (a module-level uint8 array: a compile-time constant)."""
    if i + word.shape[0] > b.shape[0]:
        return False
    for k in range(word.shape[0]):
        if b[i + k] != word[k]:
            return False
    return True


@numba.njit(**NO_RUNTIME, inline="always")
def scalar(b, i):
    """One scalar at ``i``: (end, kind, start, stop, value, hash).  Kinds: MISSING_VALUE (null or
    ""), STRING (hash = its token hash), INTEGER (value), BOOLEAN (the literal's bytes are the
    token), BAD (-1: unsupported)."""
    zero, h0 = np.int64(0), np.uint64(0)
    if i >= b.shape[0]:
        return -1, BAD, 0, 0, zero, h0
    c = b[i]
    if c == 34:
        e, h = string_hash(b, i + 1)
        if e < 0:
            return -1, BAD, 0, 0, zero, h0
        return e + 1, (MISSING_VALUE if e == i + 1 else STRING), i + 1, e, zero, h
    if c == 45 or 48 <= c <= 57:
        e, v = integer(b, i)
        return e, (BAD if e < 0 else INTEGER), i, e, v, h0
    if c == 110 and literal(b, i, _NULL):
        return i + 4, MISSING_VALUE, i, i, zero, h0
    if c == 116 and literal(b, i, _TRUE):
        return i + 4, BOOLEAN, i, i + 4, zero, h0
    if c == 102 and literal(b, i, _FALSE):
        return i + 5, BOOLEAN, i, i + 5, zero, h0
    return -1, BAD, 0, 0, zero, h0


@numba.njit(**NO_RUNTIME)
def hash_numeric(v, edges, bins):
    """Hash of ``numeric_token(v)`` for an integer v: "b<bin>" if v > 2 else "v<v>"."""
    if v > 2:
        prefix, x = 98, bins[np.searchsorted(edges, v, side="right") - 1]
    else:
        prefix, x = 118, v
    h = (FNV_OFFSET ^ np.uint64(prefix)) * FNV_PRIME
    if x < 0:
        h = (h ^ np.uint64(45)) * FNV_PRIME
        x = -x
    p = np.int64(1)
    while p * 10 <= x:
        p *= 10
    while p > 0:  # decimal digits, most significant first
        h = (h ^ np.uint64(48 + (x // p) % 10)) * FNV_PRIME
        p //= 10
    return mix64(h)


@numba.njit(**NO_RUNTIME)
def same(b, s1, e1, c, s2):
    """``b[s1:e1] == c[s2:s2 + e1 - s1]``."""
    for k in range(e1 - s1):
        if b[s1 + k] != c[s2 + k]:
            return False
    return True


@numba.njit(**NO_RUNTIME)
def key(b, i):
    """The key at ``i``: (end after its quote, code), code = 1 + its index in ``KEYS`` (model,
    top_k, context, ads, id, features, values, bid, rank_by, explain) or 0 for any other key; (-1, 0) if
    malformed."""
    if i >= b.shape[0] or b[i] != 34:
        return -1, 0
    e = string_end(b, i + 1)
    if e < 0:
        return -1, 0
    for c in range(KEY_OFF.shape[0] - 1):
        a, z = KEY_OFF[c], KEY_OFF[c + 1]
        if z - a == e - i - 1 and same(KEYS, a, z, b, i + 1):
            return e + 1, c + 1
    return e + 1, 0


@numba.njit(**NO_RUNTIME)
def colon(b, i):
    """The index after ``: `` at ``i`` (whitespace allowed around it), or -1."""
    i = ws(b, i)
    return ws(b, i + 1) if 0 <= i < b.shape[0] and b[i] == 58 else -1


@numba.njit(**NO_RUNTIME)
def separator(b, i, close):
    """After a value: (index of the next item, False) past a ``,``; (index after ``close``, True)
    at the closing bracket; (-1, True) for anything else."""
    i = ws(b, i)
    if i < b.shape[0] and b[i] == 44:
        return ws(b, i + 1), False
    if i < b.shape[0] and b[i] == close:
        return i + 1, True
    return -1, True
