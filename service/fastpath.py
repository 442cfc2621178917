"""A compiled fast path: raw ``/v1/rank`` body bytes -> feature ids, with no Python object per value.

DESIGN §7 budgets ~1.1 ms for JSON parsing and ~1.5 ms for string -> id lookup; msgspec + the
per-value walk of :class:`service.encode.RequestEncoder` cost more at 1,000 ads.  Here one Numba
pass over the body bytes produces the context slots ``int32[S_C]``, the item slot matrix
``int32[N, S_I]`` and the ads' id byte spans directly: every token of the common request shape
*is* a byte span of the body (an unescaped JSON string's UTF-8 bytes, an integer's digits,
``true``/``false``), so it is hashed in place with adrank's FNV-1a + splitmix
(``adrank.preprocess._hash_joined``) and looked up in the encoder's :class:`BucketIndex`.

Supported subset (anything else returns ``None`` = *fallback*: the generic msgspec + encoder path
handles the request and produces every error message, so correctness never depends on this file):

* top level: an object with keys ``model`` (string | null), ``top_k`` (integer >= 1 | null),
  ``context`` (object), ``ads`` (non-empty array), in any order, each at most once;
* ads: ``{"id", "features": {...}}`` or ``{"id", "values": [...]}`` (id: string or integer);
  id-only (catalog) ads, ``all_ads`` and unknown keys fall back;
* values: strings without escapes (valid UTF-8, no control characters), integers of <= 18 digits
  (not ``-0``), ``true``/``false``, ``null``; lists of those for multi-valued fields.  Floats fall
  back.  Numeric fields take integers (<= 15 digits, exact as float64) and form
  ``adrank.preprocess.numeric_token``'s token: ``x > 2 -> "b<floor(ln(x)^2)>"``, else
  ``"v<x>"``.  The bin is read from a table of integer bin edges computed once with Python's own
  ``math.log`` (bins are monotone in x and never skip for integers, d/dx ln(x)^2 <= 2/e < 1), so it
  matches Python exactly, with no libm difference possible;
* duplicate keys, unknown field names, whitespace other than JSON's four, or malformed JSON anywhere
  fall back.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

import msgspec
import numba
import numpy as np

from adrank.preprocess import MISSING, PAD, _mix64
from service.encode import RequestEncoder, _bucket_lookup

ENABLED = os.environ.get("ADRANK_FASTPATH", "1") != "0"  # routes.py reads it per request
_JSON = msgspec.json.Encoder()
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_NUMERIC_DIGITS = 15
_INT_DIGITS = 18
_CAT, _NUM, _MULTI = 0, 1, 2
_TYPES = {"categorical": _CAT, "numeric": _NUM, "multi": _MULTI}
_KEYS = np.frombuffer(b"modeltop_kcontextadsidfeaturesvalues", dtype=np.uint8)  # code 1..7
_KEY_OFF = np.array([0, 5, 10, 17, 20, 22, 30, 36], dtype=np.int64)
_NULL = np.frombuffer(b"null", dtype=np.uint8)
_TRUE = np.frombuffer(b"true", dtype=np.uint8)
_FALSE = np.frombuffer(b"false", dtype=np.uint8)


def python_bin(x: int) -> int:
    """``numeric_token``'s bin for an integer x > 2, computed exactly as Python does."""
    return int(math.floor(math.log(float(x)) ** 2))


def _bin_edges() -> tuple[np.ndarray, np.ndarray]:
    """(edges, bins): bins[j] is Python's bin of every integer in [edges[j], edges[j+1])."""
    top = 10**_NUMERIC_DIGITS
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


_EDGES: tuple[np.ndarray, np.ndarray] | None = None


@dataclass
class Scan:
    """What the scanner read: model name, top_k, encoded context/items and the ads' id spans."""

    model: str | None
    top_k: int | None
    ctx: np.ndarray  # int32[S_C]
    X: np.ndarray  # int32[N, S_I]
    spans: np.ndarray  # int64[N, 3]: (start, end, 1 if integer id else 0) in the body
    body: bytes

    def ids(self, rows) -> list:
        """The Python ids (str or int) of ads ``rows`` — decoded only for the ads returned."""
        b, sp = self.body, self.spans.tolist()
        return [int(b[sp[r][0]:sp[r][1]]) if sp[r][2] else b[sp[r][0]:sp[r][1]].decode() for r in rows]


class FastPath:
    """The scanner bound to one model's schema and vocabulary (build once per Ranker)."""

    def __init__(self, encoder: RequestEncoder):
        global _EDGES
        if _EDGES is None:
            _EDGES = _bin_edges()
        self.edges, self.bins = _EDGES
        schema, pre = encoder.schema, encoder.pre
        mc, offs, base = schema.m_context, schema.slot_offsets, pre.vocab.id_offsets
        names = [f.name.encode("utf-8", "surrogatepass") for f in schema.fields]
        self.names = np.frombuffer(b"".join(names) or b"\0", dtype=np.uint8)
        self.name_off = np.cumsum([0] + [len(n) for n in names]).astype(np.int64)
        self.ftype = np.array([_TYPES[f.type] for f in schema.fields], dtype=np.int64)
        s_c = offs[mc]
        self.lo = np.array([offs[f] - (0 if f < mc else s_c) for f in range(schema.m)], dtype=np.int64)
        self.width = np.array([f.width for f in schema.fields], dtype=np.int64)
        self.m_context = mc
        self.templates = []
        for lo_f, hi_f in ((0, mc), (mc, schema.m)):
            t = np.full(offs[hi_f] - offs[lo_f], PAD, dtype=np.int32)
            for f in range(lo_f, hi_f):
                t[self.lo[f]] = base[f] + MISSING
            self.templates.append(t)
        ix = encoder.index
        self.index = (ix.keys, ix.key_off, ix.starts, ix.start_off, ix.shift, ix.id_off)

    def scan(self, body: bytes) -> Scan | None:
        """Encode ``body`` if it is in the supported subset, else None (use the generic path)."""
        buf = np.frombuffer(body, dtype=np.uint8)
        status, ctx, X, spans, meta = _scan(buf, self.names, self.name_off, self.ftype, self.lo, self.width,
                                            self.m_context, self.templates[0], self.templates[1],
                                            self.edges, self.bins, *self.index)
        if status != 0:
            return None
        model = None if meta[0] < 0 else body[meta[0]:meta[1]].decode()
        return Scan(model, None if meta[2] < 0 else int(meta[2]), ctx, X, spans, body)

    def warm(self) -> None:
        """Compile (or load from numba's cache) the scanner so that no request does."""
        self.scan(b'{"ads": [{"id": "warm", "values": []}], "context": {}}')


_MODEL_AT = re.compile(rb'\s*:\s*"([^"\\]*)"')


def _guess_model(body: bytes) -> str | None:
    """The name after a ``"model": "..."`` in the body's first 512 bytes (clients write it before the
    ads) — a guess: the scan confirms it, and a wrong guess costs a second scan, never a wrong answer."""
    i = body.find(b'"model"', 0, 512)
    m = _MODEL_AT.match(body, i + 7) if i >= 0 else None
    try:
        return m.group(1).decode() if m else None
    except UnicodeDecodeError:
        return None


def rank_body(registry, body: bytes, max_candidates: int):
    """(ranker, response bytes, candidates) for ``body``: byte for byte what the generic path
    (``Ranker.rank`` on the msgspec-decoded request, then ``schemas.encode_ranking``) answers, or
    None when the generic path must run (unsupported shape, unknown model, too many candidates:
    it produces every error reply)."""
    ranker = _get(registry, _guess_model(body)) or _get(registry, None)
    scan = _scan_for(ranker, body)
    if scan is not None:
        named = _get(registry, scan.model)  # the model the body really names
        if named is not ranker:  # a wrong guess (its schema and vocabulary may differ), or unknown
            ranker, scan = named, _scan_for(named, body)
    if scan is None or len(scan.X) > max_candidates:
        return None
    raw = ranker.scorer.score(scan.ctx, scan.X)
    order = np.argsort(-raw, kind="stable")  # best first, ties in input order (as Ranker.rank)
    if scan.top_k is not None:
        order = order[: scan.top_k]
    return ranker, _response(ranker, scan, order.tolist(), ranker._link(raw[order]).tolist()), len(raw)


def _get(registry, name):
    """``registry.get(name)``, or None (an unknown model is the generic path's 404)."""
    try:
        return registry.get(name)
    except Exception:  # noqa: BLE001
        return None


def _scan_for(ranker, body: bytes) -> Scan | None:
    fp = getattr(ranker, "fastpath", None)  # None for a ranker without one (or no ranker)
    return fp.scan(body) if fp is not None else None


def _response(ranker, scan: Scan, rows: list[int], scores: list[float]) -> bytes:
    """``schemas.encode_ranking``'s bytes, built from the ids' own JSON bytes in the body (an
    unescaped string or an integer is exactly what msgspec writes for it) and msgspec's floats."""
    head = _JSON.encode({"model": ranker.name, "version": ranker.version})[:-1]
    floats = _JSON.encode(scores)[1:-1].split(b",")  # a JSON number never contains a comma
    b, sp = scan.body, scan.spans.tolist()
    ids = [b[sp[r][0] - 1 + sp[r][2] : sp[r][1] + 1 - sp[r][2]] for r in rows]  # strings with quotes
    return b"".join((head, b',"ads":[', b",".join([b'{"id":%s,"score":%s}' % p for p in zip(ids, floats, strict=True)]),
                     b"]}"))


# --- the compiled scanner -----------------------------------------------------------------------
@numba.njit(cache=True, nogil=True)
def _ws(b, i):
    while i < b.shape[0] and (b[i] == 32 or b[i] == 10 or b[i] == 13 or b[i] == 9):
        i += 1
    return i


@numba.njit(cache=True, nogil=True)
def _string_end(b, i):
    """Index of the closing quote of the string whose body starts at ``i``; -1 if it has an escape,
    a control character or invalid UTF-8 (overlong, surrogate, > U+10FFFF), or never ends."""
    n = b.shape[0]
    while i < n:
        c = b[i]
        if c == 34:
            return i
        if c == 92 or c < 32:
            return -1
        if c < 128:
            i += 1
            continue
        if c < 0xC2 or c > 0xF4:
            return -1
        need = 1 if c < 0xE0 else (2 if c < 0xF0 else 3)
        if i + need >= n:
            return -1
        c1 = b[i + 1]
        if (c1 & 0xC0) != 0x80 or (c == 0xE0 and c1 < 0xA0) or (c == 0xED and c1 >= 0xA0) \
                or (c == 0xF0 and c1 < 0x90) or (c == 0xF4 and c1 >= 0x90):
            return -1
        for k in range(2, need + 1):
            if (b[i + k] & 0xC0) != 0x80:
                return -1
        i += need + 1
    return -1


@numba.njit(cache=True, nogil=True)
def _integer(b, i):
    """(end, value) of a JSON integer at ``i`` of <= 18 digits, not ``-0``; end = -1 otherwise
    (a fraction or exponent included: floats are left to the generic path)."""
    n, neg, v = b.shape[0], False, np.int64(0)
    if i < n and b[i] == 45:
        neg, i = True, i + 1
    s = i
    while i < n and 48 <= b[i] <= 57:
        v = v * 10 + np.int64(b[i] - 48) if i - s < _INT_DIGITS else v
        i += 1
    d = i - s
    if d == 0 or d > _INT_DIGITS or (d > 1 and b[s] == 48) or (neg and v == 0):
        return -1, v
    if i < n and (b[i] == 46 or b[i] == 101 or b[i] == 69):
        return -1, v
    return i, -v if neg else v


@numba.njit(cache=True, nogil=True)
def _literal(b, i, word):
    """``b[i:]`` starts with the bytes ``word`` (a module-level uint8 array: a compile-time constant)."""
    if i + word.shape[0] > b.shape[0]:
        return False
    for k in range(word.shape[0]):
        if b[i + k] != word[k]:
            return False
    return True


@numba.njit(cache=True, nogil=True, inline="always")
def _scalar(b, i):
    """One scalar at ``i``: (end, kind, start, stop, value); kind 0 = missing (null or ""),
    1 = string, 2 = integer, 3 = true/false (token = the literal's bytes), -1 = unsupported."""
    if i >= b.shape[0]:
        return -1, -1, 0, 0, np.int64(0)
    c = b[i]
    if c == 34:
        e = _string_end(b, i + 1)
        return (-1, -1, 0, 0, np.int64(0)) if e < 0 else (e + 1, 0 if e == i + 1 else 1, i + 1, e, np.int64(0))
    if c == 45 or 48 <= c <= 57:
        e, v = _integer(b, i)
        return e, (-1 if e < 0 else 2), i, e, v
    if c == 110 and _literal(b, i, _NULL):
        return i + 4, 0, i, i, np.int64(0)
    if c == 116 and _literal(b, i, _TRUE):
        return i + 4, 3, i, i + 4, np.int64(0)
    if c == 102 and _literal(b, i, _FALSE):
        return i + 5, 3, i, i + 5, np.int64(0)
    return -1, -1, 0, 0, np.int64(0)


@numba.njit(cache=True, nogil=True)
def _hash_span(b, s, e):
    h = _FNV_OFFSET
    for i in range(s, e):
        h = (h ^ np.uint64(b[i])) * _FNV_PRIME
    return _mix64(h)


@numba.njit(cache=True, nogil=True)
def _hash_numeric(v, edges, bins):
    """Hash of ``numeric_token(v)`` for an integer v: "b<bin>" if v > 2 else "v<v>"."""
    if v > 2:
        prefix, x = 98, bins[np.searchsorted(edges, v, side="right") - 1]
    else:
        prefix, x = 118, v
    h = (_FNV_OFFSET ^ np.uint64(prefix)) * _FNV_PRIME
    if x < 0:
        h = (h ^ np.uint64(45)) * _FNV_PRIME
        x = -x
    p = np.int64(1)
    while p * 10 <= x:
        p *= 10
    while p > 0:  # decimal digits, most significant first
        h = (h ^ np.uint64(48 + (x // p) % 10)) * _FNV_PRIME
        p //= 10
    return _mix64(h)


@numba.njit(cache=True, nogil=True)
def _same(b, s1, e1, c, s2):
    """``b[s1:e1] == c[s2:s2 + e1 - s1]``."""
    for k in range(e1 - s1):
        if b[s1 + k] != c[s2 + k]:
            return False
    return True


@numba.njit(cache=True, nogil=True)
def _field_of(b, s, e, names, name_off, lo_f, hi_f, guess):
    """The field in [lo_f, hi_f) whose UTF-8 name is b[s:e] (``guess`` tried first), or -1."""
    n_f = hi_f - lo_f
    if n_f <= 0:
        return -1
    g = guess - lo_f if lo_f <= guess < hi_f else 0
    for t in range(n_f):
        f = lo_f + (g + t) % n_f
        if name_off[f + 1] - name_off[f] == e - s and _same(names, name_off[f], name_off[f + 1], b, s):
            return f
    return -1


@numba.njit(cache=True, nogil=True, inline="always")
def _value(b, i, f, ftype, width, dest, edges, bins, tf, th, td, nt, kept):
    """Parse field ``f``'s value at ``i``; its tokens' (field, hash, destination slot) are appended
    at ``nt`` (none = the template's missing id stays).  Returns (end, nt); end = -1: fall back."""
    n = b.shape[0]
    in_list = ftype[f] == _MULTI and i < n and b[i] == 91
    if in_list:
        i = _ws(b, i + 1)
        if i < n and b[i] == 93:
            return i + 1, nt
    count = 0
    while True:
        e, kind, s, z, v = _scalar(b, i)
        if e < 0:
            return -1, nt
        keep = True
        if kind > 0:
            if ftype[f] == _NUM:
                if kind != 2 or abs(v) >= 10**_NUMERIC_DIGITS:
                    return -1, nt
                h = _hash_numeric(v, edges, bins)
            else:  # categorical or multi: keep the first width distinct tokens (order kept)
                keep = count < width[f]
                for k in range(count if keep else 0):
                    if kept[k, 1] - kept[k, 0] == z - s and _same(b, kept[k, 0], kept[k, 1], b, s):
                        keep = False
                        break
                h = _hash_span(b, s, z) if keep else np.uint64(0)
                if keep:
                    kept[count, 0], kept[count, 1] = s, z
            if ftype[f] == _NUM or keep:
                tf[nt], th[nt], td[nt] = f, h, dest + count
                nt += 1
                count += 1
        if not in_list:
            return e, nt
        i = _ws(b, e)
        if i < n and b[i] == 44:
            i = _ws(b, i + 1)
        elif i < n and b[i] == 93:
            return i + 1, nt
        else:
            return -1, nt


@numba.njit(cache=True, nogil=True)
def _object(b, i, r, lo_f, hi_f, dest0, names, name_off, ftype, lo, width, edges, bins, tf, th, td, nt, kept,
            stamp):
    """A ``{field: value, ...}`` object at ``i`` over fields [lo_f, hi_f), row stamp ``r``
    (a field seen twice in one object falls back).  Returns (end, nt); end = -1: fall back."""
    n = b.shape[0]
    if i >= n or b[i] != 123:
        return -1, nt
    i = _ws(b, i + 1)
    if i < n and b[i] == 125:
        return i + 1, nt
    guess = lo_f
    while True:
        if i >= n or b[i] != 34:
            return -1, nt
        e = _string_end(b, i + 1)
        if e < 0:
            return -1, nt
        f = _field_of(b, i + 1, e, names, name_off, lo_f, hi_f, guess)
        if f < 0 or stamp[f] == r:
            return -1, nt
        stamp[f] = r
        guess = f + 1
        i = _ws(b, e + 1)
        if i >= n or b[i] != 58:
            return -1, nt
        i, nt = _value(b, _ws(b, i + 1), f, ftype, width, dest0 + lo[f], edges, bins, tf, th, td, nt, kept)
        if i < 0:
            return -1, nt
        i = _ws(b, i)
        if i < n and b[i] == 44:
            i = _ws(b, i + 1)
        elif i < n and b[i] == 125:
            return i + 1, nt
        else:
            return -1, nt


@numba.njit(cache=True, nogil=True)
def _positional(b, i, lo_f, hi_f, dest0, ftype, lo, width, edges, bins, tf, th, td, nt, kept):
    """A ``[v_1, ..., v_j]`` values array (item-field order, j <= |I|).  Returns (end, nt)."""
    n = b.shape[0]
    if i >= n or b[i] != 91:
        return -1, nt
    i = _ws(b, i + 1)
    if i < n and b[i] == 93:
        return i + 1, nt
    f = lo_f
    while True:
        if f >= hi_f:
            return -1, nt
        i, nt = _value(b, i, f, ftype, width, dest0 + lo[f], edges, bins, tf, th, td, nt, kept)
        if i < 0:
            return -1, nt
        f += 1
        i = _ws(b, i)
        if i < n and b[i] == 44:
            i = _ws(b, i + 1)
        elif i < n and b[i] == 93:
            return i + 1, nt
        else:
            return -1, nt


@numba.njit(cache=True, nogil=True)
def _key(b, i):
    """The key at ``i``: (end after its quote, code), code = 1 + its index in ``_KEYS`` (model,
    top_k, context, ads, id, features, values) or 0 for any other key; (-1, 0) if malformed."""
    if i >= b.shape[0] or b[i] != 34:
        return -1, 0
    e = _string_end(b, i + 1)
    if e < 0:
        return -1, 0
    for c in range(_KEY_OFF.shape[0] - 1):
        a, z = _KEY_OFF[c], _KEY_OFF[c + 1]
        if z - a == e - i - 1 and _same(_KEYS, a, z, b, i + 1):
            return e + 1, c + 1
    return e + 1, 0


@numba.njit(cache=True, nogil=True)
def _colon(b, i):
    i = _ws(b, i)
    return _ws(b, i + 1) if 0 <= i < b.shape[0] and b[i] == 58 else -1


@numba.njit(cache=True, nogil=True)
def _ads(b, i, mc, m, s_c, s_i, names, name_off, ftype, lo, width, edges, bins, tf, th, td, nt, kept, stamp,
         out, item_template, spans):
    """The ``ads`` array at ``i``: each ad's row is the template, then its tokens.  Returns
    (end, nt, n_ads); end = -1: fall back."""
    n, r = b.shape[0], 0
    if i >= n or b[i] != 91:
        return -1, nt, 0
    i = _ws(b, i + 1)
    while True:
        if r >= spans.shape[0] or i >= n or b[i] != 123:
            return -1, nt, r
        dest0 = s_c + r * s_i
        out[dest0 : dest0 + s_i] = item_template
        i = _ws(b, i + 1)
        seen = 0
        while True:
            i, code = _key(b, i)
            if i < 0 or code < 5 or (seen >> code) & 1:
                return -1, nt, r
            seen |= 1 << code
            i = _colon(b, i)
            if i < 0:
                return -1, nt, r
            if code == 5:
                e, kind, s, z, v = _scalar(b, i)
                if e < 0 or not (kind == 2 or (kind <= 1 and b[i] == 34)):
                    return -1, nt, r
                spans[r, 0], spans[r, 1], spans[r, 2] = s, z, 1 if kind == 2 else 0
                i = e
            elif code == 6:
                i, nt = _object(b, i, r, mc, m, dest0, names, name_off, ftype, lo, width,
                                edges, bins, tf, th, td, nt, kept, stamp)
            else:
                i, nt = _positional(b, i, mc, m, dest0, ftype, lo, width, edges, bins, tf, th, td, nt, kept)
            if i < 0:
                return -1, nt, r
            i = _ws(b, i)
            if i < n and b[i] == 44:
                i = _ws(b, i + 1)
            elif i < n and b[i] == 125:
                break
            else:
                return -1, nt, r
        if seen != (1 << 5 | 1 << 6) and seen != (1 << 5 | 1 << 7):  # id-only (catalog) ads fall back
            return -1, nt, r
        r += 1
        i = _ws(b, i + 1)
        if i < n and b[i] == 44:
            i = _ws(b, i + 1)
        elif i < n and b[i] == 93:
            return i + 1, nt, r
        else:
            return -1, nt, r


@numba.njit(cache=True, nogil=True)
def _scan(b, names, name_off, ftype, lo, width, mc, ctx_template, item_template, edges, bins,
          keys, key_off, starts, start_off, shift, id_off):
    """The whole body -> (status, ctx int32[S_C], X int32[N, S_I], id spans, meta); status != 0 =
    fall back.  meta = (model start, model end | -1, top_k | -1)."""
    n, m = b.shape[0], ftype.shape[0]
    s_c, s_i = ctx_template.shape[0], item_template.shape[0]
    cap = n // 16 + 1  # an inline ad takes >= 16 bytes ('{"id":1,"values":[]}')
    out = np.empty(s_c + cap * s_i, np.int32)
    out[:s_c] = ctx_template
    spans = np.empty((cap, 3), np.int64)
    meta = np.full(3, -1, np.int64)
    t_cap = n // 2 + 1  # every token takes >= 1 byte plus a separator
    tf, th, td = np.empty(t_cap, np.int64), np.empty(t_cap, np.uint64), np.empty(t_cap, np.int64)
    kept = np.empty((int(width.max()) if m else 1, 2), np.int64)
    stamp = np.full(m, -2, np.int64)
    nt, n_ads, seen = 0, 0, 0
    i = _ws(b, 0)
    ok = i < n and b[i] == 123
    i = _ws(b, i + 1)
    while ok:
        i, code = _key(b, i)
        if i < 0 or code < 1 or code > 4 or (seen >> code) & 1:
            ok = False
            break
        seen |= 1 << code
        i = _colon(b, i)
        if i < 0:
            ok = False
            break
        if code == 1 or code == 2:
            e, kind, s, z, v = _scalar(b, i)
            null = kind == 0 and b[i] == 110
            good = (kind <= 1 and b[i] == 34) if code == 1 else (kind == 2 and v >= 1)
            if e < 0 or not (null or good):
                ok = False
                break
            if not null and code == 1:
                meta[0], meta[1] = s, z
            elif not null:
                meta[2] = v
            i = e
        elif code == 3:
            i, nt = _object(b, i, -1, 0, mc, 0, names, name_off, ftype, lo, width, edges, bins, tf, th, td, nt,
                            kept, stamp)
        else:
            i, nt, n_ads = _ads(b, i, mc, m, s_c, s_i, names, name_off, ftype, lo, width, edges, bins, tf, th, td,
                                nt, kept, stamp, out, item_template, spans)
        if i < 0:
            ok = False
            break
        i = _ws(b, i)
        if i < n and b[i] == 44:
            i = _ws(b, i + 1)
        elif i < n and b[i] == 125:
            ok = _ws(b, i + 1) == n and (seen >> 4) & 1 == 1 and n_ads > 0
            break
        else:
            ok = False
    ids = np.empty(nt, np.int32)
    if ok and nt:
        _bucket_lookup(tf[:nt], th[:nt], keys, key_off, starts, start_off, shift, id_off, ids)
        for t in range(nt):
            out[td[t]] = ids[t]
    X = out[s_c : s_c + n_ads * s_i].reshape((n_ads, s_i))
    return (0 if ok else 1), out[:s_c], X, spans[:n_ads], meta
