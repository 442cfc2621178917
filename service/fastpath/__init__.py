"""The compiled parser of ``/v1/rank``: raw body bytes -> feature ids (and, for the reply, the ads'
id bytes), with no Python object per value or per ad.  It only parses: what it reads becomes the
same encoded request the generic msgspec path produces (service/pipeline.py), scored by the same
code.

DESIGN §7 budgets ~1.1 ms for JSON parsing and ~1.5 ms for string -> id lookup at 1,000 ads;
msgspec + the per-value walk of :class:`service.encode.RequestEncoder` cost more.  Here one Numba
pass over the body (scanner.py, lexer.py) produces the context slots ``int32[S_C]``, the item slot
matrix ``int32[N, S_I]`` and the ads' id byte spans: every token of the common request shape *is*
a byte span of the body (an unescaped JSON string's UTF-8 bytes, an integer's digits,
``true``/``false``), hashed in place with adrank's FNV-1a + splitmix
(``adrank.core.hashing.hash_joined``) and looked up in the encoder's :class:`BucketIndex`.  The
response can be assembled from the ids' own bytes (response.py).  Ads given by id alone (catalog
ads, service/catalog) are recorded with their id's hash, for the catalog's id table.

Supported subset (anything else returns ``None`` = *fallback*: the generic msgspec + encoder path
handles the request and produces every error message, so correctness never depends on this
package):

* top level: an object with keys ``model`` (string | null), ``top_k`` (integer >= 1 | null),
  ``context`` (object), ``ads`` (non-empty array), ``rank_by`` (``"ctr"`` | ``"ecpm"``),
  ``explain`` (boolean), in any order, each at most once (``reserve``, ``boost`` and other keys
  fall back);
* ads: inline, ``{"id", "features": {...}}`` or ``{"id", "values": [...]}`` (id: string or
  integer), or by id alone ``{"id": "<non-empty string>"}``, in any mix (integer catalog ids,
  ``all_ads`` and unknown keys fall back), each optionally with ``"bid"``: a non-negative decimal
  of at most 15 digits without exponent (``lexer.decimal``: exactly Python's float), else fall back;
* values: strings without escapes (valid UTF-8, no control characters), integers of <= 18 digits
  (not ``-0``), ``true``/``false``, ``null``; lists of those for multi-valued fields.  Floats fall
  back.  Numeric fields take integers (<= 15 digits, exact as float64) and form
  ``adrank.core.preprocess.numeric_token``'s token: ``x > 2 -> "b<floor(ln(x)^2)>"``, else
  ``"v<x>"``.  The bin is read from a table of integer bin edges computed once with Python's own
  ``math.log`` (bins are monotone in x and never skip for integers, d/dx ln(x)^2 <= 2/e < 1), so it
  matches Python exactly, with no libm difference possible;
* duplicate keys, unknown field names, whitespace other than JSON's four, or malformed JSON anywhere
  fall back.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

import numpy as np

from adrank.core.preprocess import MISSING, PAD
from service.encode import RequestEncoder
from service.fastpath import response as _response
from service.fastpath.lexer import bin_edges, python_bin
from service.fastpath.scanner import TYPES, capacities, scan

BY_ID = 2  # spans[r, 2] of an ad given by id alone
__all__ = ["FastPath", "Scan", "guess_model", "python_bin"]

_EDGES: tuple[np.ndarray, np.ndarray] | None = None
WORKSPACE_MAX_BYTES = 1 << 20  # bodies up to this size reuse a per-thread workspace; larger ones allocate


class _Workspace:
    """The scanner's output and scratch buffers for bodies of up to ``n`` bytes (scanner.scan)."""

    def __init__(self, n: int, s_c: int, s_i: int, m: int, max_width: int):
        cap, t_cap = capacities(n)
        self.n = n
        self.out = np.empty(s_c + cap * s_i, np.int32)
        self.spans = np.empty((cap, 3), np.int64)
        self.id_hash = np.empty(cap, np.uint64)
        self.bids = np.empty(cap)
        self.tokens = (np.empty(t_cap, np.int64), np.empty(t_cap, np.uint64), np.empty(t_cap, np.int64),
                       np.empty(t_cap, np.int32), np.empty(t_cap, np.int64), np.empty(t_cap, np.int64))
        # (field, hash, slot, id, bucket lo, bucket hi) per token
        self.scratch = (np.empty((max_width, 2), np.int64), np.empty(m, np.int64), np.empty(6, np.int64))


@dataclass
class Scan:
    """What the scanner read: model name, top_k, encoded context/items and the ads' id spans."""

    model: str | None
    top_k: int | None
    ctx: np.ndarray  # int32[S_C]
    X: np.ndarray  # int32[N, S_I] (the template row for an ad by id)
    spans: np.ndarray  # int64[N, 3]: (start, end, 0 string id | 1 integer id | 2 by id alone) in the body
    id_hash: np.ndarray  # uint64[N]: hash of a string id (adrank.core.hashing.hash_tokens)
    n_by_id: int  # ads given by id alone
    body: bytes
    bids: np.ndarray | None = None  # float64[N]: each ad's "bid" (NaN: none); None when no ad has one
    by_value: bool = False  # "rank_by": "ecpm"
    explain: bool = False  # "explain": true

    def ids(self, rows) -> list:
        """The Python ids (str or int) of ads ``rows`` — decoded only for the ads returned."""
        b, sp = self.body, self.spans.tolist()
        return [int(b[sp[r][0]:sp[r][1]]) if sp[r][2] == 1 else b[sp[r][0]:sp[r][1]].decode() for r in rows]


class FastPath:
    """The scanner bound to one model's schema and vocabulary (build once per Ranker)."""

    def __init__(self, encoder: RequestEncoder):
        global _EDGES
        if _EDGES is None:
            _EDGES = bin_edges()
        self.edges, self.bins = _EDGES
        schema, pre = encoder.schema, encoder.pre
        mc, offs, base = schema.m_context, schema.slot_offsets, pre.vocab.id_offsets
        names = [f.name.encode("utf-8", "surrogatepass") for f in schema.fields]
        self.names = np.frombuffer(b"".join(names) or b"\0", dtype=np.uint8)
        self.name_off = np.cumsum([0] + [len(n) for n in names]).astype(np.int64)
        self.ftype = np.array([TYPES[f.type] for f in schema.fields], dtype=np.int64)
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
        self._local = threading.local()  # each thread its own workspace
        self._shape = (len(self.templates[0]), len(self.templates[1]), schema.m, int(self.width.max(initial=1)))

    def _workspace(self, n: int) -> _Workspace:
        shape = self._shape
        if n > WORKSPACE_MAX_BYTES:
            return _Workspace(n, *shape)
        ws = getattr(self._local, "ws", None)
        if ws is None or ws.n < n:
            ws = self._local.ws = _Workspace(min(WORKSPACE_MAX_BYTES, max(n, 2 * ws.n if ws else 1 << 16)), *shape)
        return ws

    def scan(self, body: bytes) -> Scan | None:
        """Encode ``body`` if it is in the supported subset, else None (use the generic path)."""
        sc = self.scan_views(body)
        if sc is None:
            return None
        return Scan(sc.model, sc.top_k, sc.ctx.copy(), sc.X.copy(), sc.spans.copy(), sc.id_hash.copy(), sc.n_by_id,
                    body, None if sc.bids is None else sc.bids.copy(), sc.by_value, sc.explain)

    def scan_views(self, body: bytes) -> Scan | None:
        """:meth:`scan` whose arrays are views into this thread's workspace: valid until the
        thread's next scan (the pipeline uses them at once; five copies fewer per request)."""
        buf = np.frombuffer(body, dtype=np.uint8)
        w = self._workspace(len(body))
        status, n_ads, n_by_id = scan(
            buf, self.names, self.name_off, self.ftype, self.lo, self.width, self.m_context, self.templates[0],
            self.templates[1], self.edges, self.bins, *self.index, w.out, w.spans, w.id_hash, w.bids, *w.tokens,
            *w.scratch)
        meta = w.scratch[2]
        if status != 0:
            return None
        s_c, s_i = len(self.templates[0]), len(self.templates[1])
        model = None if meta[0] < 0 else body[meta[0]:meta[1]].decode()
        return Scan(model, None if meta[2] < 0 else int(meta[2]), w.out[:s_c],
                    w.out[s_c : s_c + n_ads * s_i].reshape(n_ads, s_i), w.spans[:n_ads], w.id_hash[:n_ads],
                    int(n_by_id), body, w.bids[:n_ads] if meta[4] else None, bool(meta[3] == 1), bool(meta[5] == 1))

    def warm(self) -> None:
        """Compile (or load from numba's cache) the scanner and the response writer."""
        self.scan(b'{"ads": [{"id": "warm", "values": []}], "context": {}}')
        _response.warm()


_MODEL_AT = re.compile(rb'\s*:\s*"([^"\\]*)"')


def guess_model(body: bytes) -> str | None:
    """The name after a ``"model": "..."`` in the body's first 512 bytes (clients write it before the
    ads) — a guess: the scan confirms it, and a wrong guess costs a second scan, never a wrong answer."""
    i = body.find(b'"model"', 0, 512)
    m = _MODEL_AT.match(body, i + 7) if i >= 0 else None
    try:
        return m.group(1).decode() if m else None
    except UnicodeDecodeError:
        return None


def reply(model: str, version: str, scan: Scan, order: np.ndarray, scores: np.ndarray, binary: bool = False,
          ecpm: np.ndarray | None = None) -> bytes:
    """Byte for byte ``schemas.encode_ranking(model, version, [(id of ad r, score) ...], binary, ecpm)``
    for the scanned ads ``order`` (best first) with ``scores``: the ids are copied from the body."""
    return _response.response(model, version, scan.body, scan.spans, order, scores, binary, ecpm)
