"""Limits enforced on the raw body before it is decoded: nesting depth, number length and the
number of ads, found by one compiled pass over the bytes that stops at the first limit crossed.

msgspec decodes a whole body before its types can refuse it: a 12 MB body of 1.5 M ads would be
decoded in full (hundreds of ms on the event loop) before the candidate cap said no, a value
nested 1,000 levels deep ends in a RecursionError, a 400-digit number in an OverflowError further
on.  :func:`prescan` reads only the JSON structure (strings skipped, escapes honoured) and counts
the objects one level below the top-level object's arrays (a request's ads, a catalog upsert's
ads), so each of these is refused, named, in time proportional to the bytes up to the limit.
"""

from __future__ import annotations

import numba
import numpy as np

from service.errors import ApiError

MAX_DEPTH = 8  # the deepest valid body is 5: {ads: [{features: {f: [v]}}]}
MAX_NUMBER_CHARS = 40  # a number token longer than this is refused (no field needs more)
OK, TOO_DEEP, TOO_MANY, NUMBER_TOO_LONG = 0, 1, 2, 3


@numba.njit(cache=True, nogil=True)
def _prescan(b, max_depth, max_items, max_number):  # pragma: no cover - compiled
    depth = 0
    items = 0
    run = 0
    i = 0
    n = b.shape[0]
    while i < n:
        c = b[i]
        if c == 34:  # '"': skip the string, honouring backslash escapes
            i += 1
            while i < n:
                d = b[i]
                if d == 92:
                    i += 2
                    continue
                if d == 34:
                    break
                i += 1
            run = 0
        elif c == 123 or c == 91:  # '{' '['
            if c == 123 and depth == 2:
                items += 1
                if items > max_items:
                    return TOO_MANY, i
            depth += 1
            if depth > max_depth:
                return TOO_DEEP, i
            run = 0
        elif c == 125 or c == 93:  # '}' ']'
            depth -= 1
            run = 0
        elif (48 <= c <= 57) or c == 45 or c == 43 or c == 46 or c == 101 or c == 69:  # number characters
            run += 1
            if run > max_number:
                return NUMBER_TOO_LONG, i
        else:
            run = 0
        i += 1
    return OK, n


@numba.njit(cache=True, nogil=True)
def ids_suspect(spans, id_hash, b, max_len):  # pragma: no cover - compiled
    """True if an ad id of the fast parser's scan is longer than ``max_len`` bytes or two ids may be
    equal: string ids compared by their hash, integer ids by a hash of their digits.  A True sends
    the body to the generic parser, which decides exactly and names the problem."""
    n = spans.shape[0]
    keys = np.empty(n, np.uint64)
    for r in range(n):
        s, e = spans[r, 0], spans[r, 1]
        if e - s > max_len:
            return True
        if spans[r, 2] == 1:
            h = np.uint64(14695981039346656037)
            for i in range(s, e):
                h = (h ^ np.uint64(b[i])) * np.uint64(1099511628211)
            keys[r] = h ^ np.uint64(0x9E3779B97F4A7C15)
        else:
            keys[r] = id_hash[r]
    keys.sort()
    for r in range(1, n):
        if keys[r] == keys[r - 1]:
            return True
    return False


def prescan(body: bytes, max_items: int, what: str = "ads", code: str = "too_many_candidates",
            noun: str = "candidates") -> None:
    """Raise a 422 ApiError naming the first limit ``body`` crosses (more items than ``max_items``:
    ``code``, e.g. ``too_many_candidates`` for a request's ads); malformed JSON is left to the decoder."""
    found, at = _prescan(np.frombuffer(body, np.uint8), MAX_DEPTH, max_items, MAX_NUMBER_CHARS)
    if found == OK:
        return
    if found == TOO_MANY:
        raise ApiError(422, code, f"{what}: more than the limit of {max_items} {noun}")
    if found == TOO_DEEP:
        raise ApiError(422, "too_deep", f"JSON nested deeper than {MAX_DEPTH} levels (at byte {at})")
    raise ApiError(422, "number_too_long", f"a number longer than {MAX_NUMBER_CHARS} characters (at byte {at})")


def warm() -> None:
    prescan(b'{"ads": [{"id": 1}]}', 10)
    ids_suspect(np.zeros((2, 3), np.int64), np.arange(2, dtype=np.uint64), np.zeros(1, np.uint8), 1)
