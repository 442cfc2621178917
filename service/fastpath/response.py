"""The ``/v1/rank`` response body, assembled in one compiled pass.

``schemas.encode_ranking`` (msgspec) writes ``{"model":..,"version":..,"ads":[{"id":..,"score":..},..]}``.
Here the same bytes are copied together: each id is its own JSON text from the request body (an
unescaped string, quotes included, or an integer's digits: exactly what msgspec writes for that
id) and each score is msgspec's own text for that float (the shortest round-trip repr), taken
from one ``msgspec`` encoding of the score list.
"""

from __future__ import annotations

import functools

import msgspec
import numba
import numpy as np

from service.kernels.codegen import PLAIN

_JSON = msgspec.json.Encoder()
_ADS = np.frombuffer(b',"ads":[', dtype=np.uint8)
_ID = np.frombuffer(b'{"id":', dtype=np.uint8)
_SCORE = np.frombuffer(b',"score":', dtype=np.uint8)
_CTR = np.frombuffer(b',"ctr":', dtype=np.uint8)
_ECPM = np.frombuffer(b',"ecpm":', dtype=np.uint8)
_NONE = np.frombuffer(b"[]", dtype=np.uint8)


@numba.njit(**PLAIN, inline="always")
def _put(out, p, src, s, e):
    for k in range(s, e):
        out[p] = src[k]
        p += 1
    return p


@numba.njit(**PLAIN)
def _assemble(head, body, spans, rows, floats, ctr, ecpm):
    """head (``{"model":..,"version":..`` without the closing brace) + the ads array: ad j is
    ``{"id":<body span of rows[j]>,"score":<j-th number of floats>}`` (``ctr``: followed by
    ``,"ctr":<the same number>``; ``ecpm`` not ``[]``: then ``,"ecpm":<its j-th number>``); floats
    and ecpm are JSON arrays ``[a,b,...]``."""
    with_ecpm = ecpm.shape[0] > 2
    size = head.shape[0] + _ADS.shape[0] + 2 + floats.shape[0] * (2 if ctr else 1) + ecpm.shape[0]
    for j in range(rows.shape[0]):
        r = rows[j]
        quoted = 0 if spans[r, 2] == 1 else 1
        size += _ID.shape[0] + _SCORE.shape[0] + 2 + spans[r, 1] - spans[r, 0] + 2 * quoted
        if ctr:
            size += _CTR.shape[0]
        if with_ecpm:
            size += _ECPM.shape[0]
    out = np.empty(size, np.uint8)
    p = _put(out, 0, head, 0, head.shape[0])
    p = _put(out, p, _ADS, 0, _ADS.shape[0])
    f = 1  # after floats' "["
    g = 1  # after ecpm's "["
    for j in range(rows.shape[0]):
        r = rows[j]
        quoted = 0 if spans[r, 2] == 1 else 1
        if j:
            out[p] = 44
            p += 1
        p = _put(out, p, _ID, 0, _ID.shape[0])
        p = _put(out, p, body, spans[r, 0] - quoted, spans[r, 1] + quoted)
        p = _put(out, p, _SCORE, 0, _SCORE.shape[0])
        e = f
        while floats[e] != 44 and floats[e] != 93:  # a JSON number never holds "," or "]"
            e += 1
        p = _put(out, p, floats, f, e)
        if ctr:
            p = _put(out, p, _CTR, 0, _CTR.shape[0])
            p = _put(out, p, floats, f, e)
        f = e + 1
        if with_ecpm:
            e2 = g
            while ecpm[e2] != 44 and ecpm[e2] != 93:
                e2 += 1
            p = _put(out, p, _ECPM, 0, _ECPM.shape[0])
            p = _put(out, p, ecpm, g, e2)
            g = e2 + 1
        out[p] = 125
        p += 1
    out[p] = 93
    out[p + 1] = 125
    return out[: p + 2]


@functools.lru_cache(maxsize=64)
def _head(model: str, version: str) -> np.ndarray:
    """``{"model":..,"version":..`` (no closing brace) as msgspec writes it, once per served model."""
    return np.frombuffer(_JSON.encode({"model": model, "version": version})[:-1], dtype=np.uint8)


def response(model: str, version: str, body: bytes, spans: np.ndarray, rows: np.ndarray, scores: np.ndarray,
             binary: bool = False, ecpm: np.ndarray | None = None) -> bytes:
    """Byte for byte ``schemas.encode_ranking(model, version, [(id of row r, score) ...], binary,
    ecpm)`` for the ads ``rows`` (best first) with ``scores`` (float64, same order) and eCPMs;
    spans as the scanner's."""
    head = _head(model, version)
    floats = np.frombuffer(_JSON.encode(scores.tolist()), dtype=np.uint8)
    extra = _NONE if ecpm is None else np.frombuffer(_JSON.encode(ecpm.tolist()), dtype=np.uint8)
    return _assemble(head, np.frombuffer(body, dtype=np.uint8), spans, rows, floats, binary, extra).tobytes()


def warm() -> None:
    """Compile (or load from numba's cache) the assembler."""
    for binary in (False, True):
        for ecpm in (None, np.zeros(1)):
            response("m", "v", b'"a"', np.array([[1, 2, 0]], np.int64), np.zeros(1, np.int64), np.zeros(1), binary,
                     ecpm)
