"""adrank's stable 64-bit string hash: FNV-1a-64 over the UTF-8 bytes, finished with splitmix64.

One definition for every place a raw token or an ad id becomes a number: the vocabulary
(``preprocess.Vocab`` keys), the request encoder, the compiled fast-path scanner and the catalog's
id table.  It is independent of the process and the platform (Python's ``hash`` is salted per
process), so an id hashed offline at export equals the one hashed online.
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np

FNV_OFFSET = np.uint64(0xCBF29CE484222325)
FNV_PRIME = np.uint64(0x100000001B3)


@numba.njit(cache=True, nogil=True)
def mix64(h):
    """splitmix64's finaliser: spreads FNV's weak low bits over the whole word."""
    h ^= h >> np.uint64(30)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    return h


@numba.njit(cache=True, nogil=True)
def hash_joined(buf, n_tokens, out):
    """FNV-1a-64 + splitmix of each NUL-separated token of ``buf`` (uint8) into ``out[:n_tokens]``;
    returns how many tokens ``buf`` holds (more than ``n_tokens`` when a token held a NUL byte)."""
    h = FNV_OFFSET
    j = 0
    for i in range(buf.shape[0]):
        c = buf[i]
        if c == 0:
            if j < n_tokens:
                out[j] = mix64(h)
            j += 1
            h = FNV_OFFSET
        else:
            h = (h ^ np.uint64(c)) * FNV_PRIME
    if j < n_tokens:
        out[j] = mix64(h)
    return j + 1


@numba.njit(cache=True, nogil=True)
def _hash_one(buf, out):
    h = FNV_OFFSET
    for i in range(buf.shape[0]):
        h = (h ^ np.uint64(buf[i])) * FNV_PRIME
    out[0] = mix64(h)


def hash_tokens(tokens: Sequence[str]) -> np.ndarray:
    """Stable 64-bit hashes (uint64) of UTF-8 tokens; independent of process and platform."""
    n = len(tokens)
    out = np.empty(n, dtype=np.uint64)
    if n == 0:
        return out
    buf = np.frombuffer("\x00".join(tokens).encode("utf-8", "surrogatepass"), dtype=np.uint8)
    if hash_joined(buf, n, out) != n:  # a token held a NUL byte: hash one by one
        one = np.empty(1, dtype=np.uint64)
        for i, t in enumerate(tokens):
            _hash_one(np.frombuffer(t.encode("utf-8", "surrogatepass"), dtype=np.uint8), one)
            out[i] = one[0]
    return out
