"""Score one encoded request against a catalog view: ads by id, inline ads, both, or every ad.

This is the one ranking implementation behind ``POST /v1/rank`` (service/pipeline.py calls
:func:`rank_encoded` whichever parser read the body): inline ads are scored by the model's own
Scorer (or, for a catalog model without one, its per-ad reduction computed on the fly), ads given
by id alone by the catalog kernel on their precomputed parts, and a mixed request is both, written
into one array of raw scores before the single ordering step (``service.link.order_scores``).
Everything comes from one view and the one model version ``key`` its parts were computed for.

:func:`rank` is the same for raw dicts (tests and tools): the model's encoder, then ``rank_encoded``.
Errors are :class:`RankRequestError`, a ``RequestError`` (HTTP 422 naming the field).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from service.catalog import kernels
from service.catalog.idtable import IdTable
from service.catalog.precompute import context_part
from service.catalog.segments import View
from service.encode import RequestError
from service.link import probability, rank_scores

DEFAULT_TOP_K = 100
NO_ROWS = np.zeros(0, np.int64)


class RankRequestError(RequestError):
    """A /v1/rank request the catalog cannot answer (HTTP 422); names the field."""

    def __init__(self, field: str, message: str, code: str = "invalid_request"):
        super().__init__(field, message, code=code)


def unknown_ad(position: int, ad_id) -> RankRequestError:
    return RankRequestError("id", f"ads[{position}]: id {ad_id!r} is not in the catalog and has no features",
                            code="unknown_ad")


@dataclass
class Ranked:
    order: np.ndarray  # int64: positions in the request's ads, or global catalog rows (mode "all")
    scores: np.ndarray  # float64, best first (probabilities for click models)
    mode: str  # "inline", "catalog" (ads by id), "mixed" (both) or "all" (whole catalog)
    n_candidates: int
    seconds: float  # scoring time (context part, kernels, sort)


def by_id(ad) -> bool:
    """An ad given by id alone (neither "features" nor positional "values")."""
    return isinstance(ad, dict) and "features" not in ad and "values" not in ad


def rank_encoded(view: View, key: str, ctx: np.ndarray, X: np.ndarray | None = None,
                 catalog_at: np.ndarray | None = None, hashes: np.ndarray | None = None, id_at=None,
                 all_ads: bool = False, top_k: int | None = None) -> Ranked:
    """Rank encoded ads: ``X`` int32[N, S_I] the item rows of every ad (rows of ads by id are
    ignored), ``catalog_at`` the positions of the ads given by id alone and ``hashes`` their ids'
    hashes (``id_at(j)`` names ad j in an error); or, with ``all_ads``, the whole catalog's best
    ``top_k`` (default 100)."""
    t0 = time.perf_counter()
    model = view.models[key]
    binary = model.target == "binary"
    if all_ads:
        z, const = context_part(model.plan, ctx, model.arrays["emb"], model.arrays["linear"])
        b, d = view.base.parts[key], view.delta.parts[key]
        rows, raw = kernels.top_k(z, const, b.W, b.c, DEFAULT_TOP_K if top_k is None else top_k, dead=view.dead,
                                  delta=(d.W, d.c))
        return Ranked(rows, probability(raw, binary, model.calibration), "all", view.size, time.perf_counter() - t0)
    if X is None:
        raise ValueError("rank_encoded: X (the ads' item rows) is needed unless all_ads")
    catalog_at = NO_ROWS if catalog_at is None else catalog_at
    n, n_ids = len(X), len(catalog_at)
    raw = np.empty(n)
    if n_ids:
        assert hashes is not None and id_at is not None  # given with catalog_at
        rows, missing = view.rows(hashes)
        if missing:
            j = int(np.flatnonzero(rows < 0)[0])
            raise unknown_ad(int(catalog_at[j]), id_at(int(catalog_at[j])))
        z, const = context_part(model.plan, ctx, model.arrays["emb"], model.arrays["linear"])
        b, d = view.base.parts[key], view.delta.parts[key]
        scored = kernels.score_ids(z, const, b.W, b.c, rows, delta=(d.W, d.c))
        if n_ids == n:
            raw = scored
        else:
            raw[catalog_at] = scored
    if n_ids < n:
        inline = slice(None) if not n_ids else np.setdiff1d(np.arange(n), catalog_at)
        raw[inline] = _score_inline(model, ctx, X[inline])
    order, scores = rank_scores(raw, -1 if top_k is None else top_k, binary, model.calibration)
    mode = "catalog" if n_ids == n else "inline" if not n_ids else "mixed"
    return Ranked(order, scores, mode, n, time.perf_counter() - t0)


def _score_inline(model, ctx: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Raw scores of inline ads: the service Scorer when the model came from a Ranker, else the
    catalog reduction computed on the fly (same model, same numbers up to float32 rounding)."""
    if model.scorer is not None:
        return model.scorer.score_valid(ctx, np.ascontiguousarray(X, np.int32))
    z, const = context_part(model.plan, ctx, model.arrays["emb"], model.arrays["linear"])
    W, c = model.parts(X)
    return kernels.score_all(z, const, W, c)


def rank(view: View, key: str, context, ads=None, all_ads: bool = False, top_k=None) -> tuple[list, Ranked]:
    """(reply ids, Ranked) for raw request values: ``ads`` by id, inline or mixed, or ``all_ads``."""
    model = view.models.get(key)
    if model is None:
        raise RankRequestError("model", f"model {key!r} has no catalog", code="no_catalog")
    if not isinstance(all_ads, bool):
        raise RankRequestError("all_ads", "expected true or false")
    if all_ads == (ads is not None):
        raise RankRequestError("ads", "give exactly one of 'ads' (a list) and 'all_ads': true")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise RankRequestError("top_k", f"expected a positive integer, got {top_k!r}")
    ctx = model.encoder.encode_context(context)
    if all_ads:
        r = rank_encoded(view, key, ctx, all_ads=True, top_k=top_k)
        return view.ids_of(r.order.tolist()), r
    if not isinstance(ads, list):
        raise RankRequestError("ads", f"expected a list of ads, got {type(ads).__name__}", code="invalid_ad")
    at = [i for i, ad in enumerate(ads) if by_id(ad)]
    keys: list[str] = []
    for i in at:
        k = catalog_key(ads[i].get("id"))
        if k is None:
            raise unknown_ad(i, ads[i].get("id"))
        keys.append(k)
    ids, X = model.encoder.encode_ads(ads)  # validates every inline ad; rows of ads by id are unused
    for i, k in zip(at, keys, strict=True):
        ids[i] = k
    r = rank_encoded(view, key, ctx, X, np.asarray(at, np.int64), IdTable.hash(keys), lambda i: ads[i].get("id"),
                     top_k=top_k)
    return [ids[i] for i in r.order.tolist()], r


def catalog_key(ad_id) -> str | None:
    """The catalog id of an ad given by id alone: strings as they are, integers as decimal text."""
    if isinstance(ad_id, int) and not isinstance(ad_id, bool):
        return str(ad_id)
    return ad_id if isinstance(ad_id, str) else None
