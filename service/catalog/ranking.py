"""Rank against the catalog: ads by id, inline ads, both mixed, or the whole catalog (no HTTP).

Everything in one request is scored with the model *the snapshot's parts were computed for*
(``part.model``), so a hot reload in progress never mixes two models in one answer.  Values are
encoded by the model's :class:`service.encode.RequestEncoder` (the inline path's encoder, same
errors); inline ads are scored by the service's Scorer when the model came from a Ranker, else
by the catalog reduction computed on the fly.  Catalog ads only cost the dot product.
Errors are :class:`RankRequestError`, a ``RequestError`` (so an ``EncodeError``: HTTP 422 naming
the field) like every other bad request.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from service.catalog import kernels
from service.catalog.precompute import context_part
from service.catalog.store import Part, Snapshot
from service.encode import RequestError
from service.link import order_scores, sigmoid

DEFAULT_TOP_K = 100


class RankRequestError(RequestError):
    """A /v1/rank request the catalog cannot answer (HTTP 422); names the field."""

    def __init__(self, field: str, message: str, code: str = "invalid_request"):
        super().__init__(field, message, code=code)


@dataclass
class Ranked:
    ids: list
    scores: np.ndarray  # float64, best first (probabilities for click models)
    mode: str  # "all" (whole catalog), "catalog" (ads by id) or "mixed" (ids + inline ads)
    n_candidates: int
    seconds: float  # scoring time (encoding the context, kernels, sort)


def by_id(ad) -> bool:
    """An ad given by id alone (neither "features" nor positional "values")."""
    return isinstance(ad, dict) and "features" not in ad and "values" not in ad


def uses_catalog(all_ads, ads) -> bool:
    """True when a /v1/rank request needs the catalog: ``all_ads`` or an ad given by id alone.

    Cheap on the inline path: only ads with exactly one key are looked at closely."""
    if all_ads:
        return True
    if not isinstance(ads, list):
        return False
    try:
        if 1 not in map(len, ads):  # an id-only ad has one key; C-speed scan of the lengths
            return False
    except TypeError:  # not all sized: look at each
        pass
    return any(by_id(a) for a in ads)


def _rows_by_id(snap: Snapshot, ads: list) -> tuple[list, np.ndarray] | None:
    """(ids, rows) when every ad is exactly {"id": <known string id>}, else None (general path).

    The rows come from the snapshot's compiled id table (idtable.py), not the Python dict."""
    try:
        ids = [a["id"] for a in ads if len(a) == 1]
        if len(ids) != len(ads):
            return None
        rows, missing = snap.table.rows(ids)
    except (KeyError, TypeError, AttributeError):  # not dicts, no id, non-string ids
        return None
    return None if missing else (ids, rows)


def _lookup(index: dict, ads: list) -> tuple[list[int], list[int]]:
    """(positions, rows) of the id-only ads; an unknown id is a 422 naming it."""
    pos, rows = [], []
    for i, ad in enumerate(ads):
        if by_id(ad):
            ad_id = ad.get("id")
            key = str(ad_id) if isinstance(ad_id, int) and not isinstance(ad_id, bool) else ad_id
            a = index.get(key) if isinstance(key, str) else None
            if a is None:
                raise RankRequestError("id", f"ads[{i}]: id {ad_id!r} is not in the catalog and has no "
                                       "features", code="unknown_ad")
            pos.append(i)
            rows.append(a)
    return pos, rows


def _finish(ids: list, raw: np.ndarray, top_k, target: str) -> tuple[list, np.ndarray]:
    order, s = order_scores(raw, -1 if top_k is None else top_k, target == "binary")
    return [ids[i] for i in order.tolist()], s


def rank(snap: Snapshot, model: str, context, ads=None, all_ads: bool = False, top_k=None) -> Ranked:
    """Rank ``ads`` (by id, inline or mixed) or, with ``all_ads``, the whole catalog (best
    ``top_k``, default 100) for ``context``, from one snapshot."""
    t0 = time.perf_counter()
    part: Part | None = snap.parts.get(model)
    if part is None:
        raise RankRequestError("model", f"model {model!r} has no catalog", code="no_catalog")
    if not isinstance(all_ads, bool):
        raise RankRequestError("all_ads", "expected true or false")
    if all_ads == (ads is not None):
        raise RankRequestError("ads", "give exactly one of 'ads' (a list) and 'all_ads': true")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise RankRequestError("top_k", f"expected a positive integer, got {top_k!r}")
    m = part.model
    cx = m.encoder.encode_context(context)
    z, const = context_part(m.plan, cx, m.arrays["emb"], m.arrays["linear"])
    if all_ads:
        rows, raw = kernels.top_k(z, const, part.W, part.c, DEFAULT_TOP_K if top_k is None else top_k)
        s = sigmoid(raw) if m.target == "binary" else raw
        return Ranked([snap.ids[a] for a in rows.tolist()], s, "all", len(snap), time.perf_counter() - t0)
    if not isinstance(ads, list):
        raise RankRequestError("ads", f"expected a list of ads, got {type(ads).__name__}", code="invalid_ad")
    found = _rows_by_id(snap, ads)
    if found is not None:  # the common case, every ad by id alone: no Python object per ad
        ids, rows = found
        raw = kernels.score_ids(z, const, part.W, part.c, rows)
        order, s = order_scores(raw, -1 if top_k is None else top_k, m.target == "binary")
        return Ranked([ids[i] for i in order.tolist()], s, "catalog", len(ads), time.perf_counter() - t0)
    pos, by_id = _lookup(snap.index, ads)
    ids, X = m.encoder.encode_ads(ads)  # validates every inline ad; id-only rows are discarded
    raw = np.empty(len(ads))
    raw[pos] = kernels.score_ids(z, const, part.W, part.c, np.asarray(by_id, np.int64))
    for i, a in zip(pos, by_id, strict=True):
        ids[i] = snap.ids[a]
    inline = np.setdiff1d(np.arange(len(ads)), pos)
    if len(inline):
        raw[inline] = _score_inline(m, cx, z, const, X[inline])
    out_ids, s = _finish(ids, raw, top_k, m.target)
    return Ranked(out_ids, s, "mixed" if len(inline) else "catalog", len(ads), time.perf_counter() - t0)


def _score_inline(m, cx: np.ndarray, z, const: float, X: np.ndarray) -> np.ndarray:
    """Raw scores of inline ads' encoded item rows: the service Scorer when the model came from
    a Ranker, else the catalog reduction computed on the fly (same model, same numbers)."""
    if m.scorer is not None:
        return m.scorer.score(cx, X)
    W, c = m.parts(X)
    return kernels.score_all(z, const, W, c)
