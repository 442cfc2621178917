"""Score one encoded request against a catalog view: ads by id, inline ads, both, or every ad.

This is the one ranking implementation behind ``POST /v1/rank`` (service/pipeline.py calls
:func:`rank_encoded` whichever parser read the body): inline ads are scored by the model's own
Scorer (or, for a catalog model without one, its per-ad reduction computed on the fly), ads given
by id alone by the catalog kernel on their precomputed parts, and a mixed request is both, written
into one array of raw scores before the single ordering step (``service.link``: by raw score, or
by value with ``order_values``; a whole catalog by value: ``kernels.top_k_value``).
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
from service.link import IDENTITY, Calibration, order, order_values, reply_scores

DEFAULT_TOP_K = 100
SELECTION_MARGIN = 8  # extra candidates the whole-catalog top-k by value takes before the exact re-valuation
NO_ROWS = np.zeros(0, np.int64)


class RankRequestError(RequestError):
    """A /v1/rank request the catalog cannot answer (HTTP 422); names the field."""

    def __init__(self, field: str, message: str, code: str = "invalid_request"):
        super().__init__(field, message, code=code)


def by_id_positions(ads: list) -> tuple[list[int], list[str]]:
    """The positions of the ads given by id alone and their catalog keys (RankRequestError naming
    the first id that cannot be one)."""
    at = [i for i, ad in enumerate(ads) if by_id(ad)]
    keys: list[str] = []
    for i in at:
        k = catalog_key(ads[i].get("id"))
        if k is None:
            raise unknown_ad(i, ads[i].get("id"))
        keys.append(k)
    return at, keys


def unknown_ad(position: int, ad_id) -> RankRequestError:
    return RankRequestError("id", f"ads[{position}]: id {ad_id!r} is not in the catalog and has no features",
                            code="unknown_ad")


@dataclass(frozen=True)
class Value:
    """How a request orders its ads (service/link.py: ``order_values``).  ``bids`` float64[N]: the
    request's own bid per ad (NaN: not given: an ad by id then has its stored bid, an inline ad
    none, worth 0); ``boost`` float64[N] multipliers (None: all 1); ``boost_ids`` the id -> factor
    map of an ``all_ads`` request."""

    rank_by: str = "ctr"  # "ctr" or "ecpm"
    reserve: float | None = None
    bids: np.ndarray | None = None
    boost: np.ndarray | None = None
    boost_ids: dict | None = None

    @property
    def by_value(self) -> bool:
        return self.rank_by == "ecpm"

    @property
    def plain(self) -> bool:
        """Today's order (raw score) and reply: no eCPM, no reserve, no boost."""
        return not self.by_value and self.reserve is None and self.boost is None and not self.boost_ids


PLAIN = Value()


@dataclass
class Ranked:
    order: np.ndarray  # int64: positions in the request's ads, or global catalog rows (mode "all")
    scores: np.ndarray  # float64, best first (probabilities for click models)
    mode: str  # "inline", "catalog" (ads by id), "mixed" (both) or "all" (whole catalog)
    n_candidates: int
    seconds: float  # scoring time (context part, kernels, sort)
    raw: np.ndarray | None = None  # the returned ads' raw scores (logits), best first
    ecpm: np.ndarray | None = None  # with rank_by "ecpm": bid x ctr x 1000 of the returned ads
    catalog_rows: np.ndarray | None = None  # the global rows of the ads given by id (aligned with catalog_at)


def by_id(ad) -> bool:
    """An ad given by id alone (neither "features" nor positional "values")."""
    return isinstance(ad, dict) and "features" not in ad and "values" not in ad


def rank_encoded(view: View, key: str, ctx: np.ndarray, X: np.ndarray | None = None,
                 catalog_at: np.ndarray | None = None, hashes: np.ndarray | None = None, id_at=None,
                 all_ads: bool = False, top_k: int | None = None, value: Value = PLAIN,
                 cal: Calibration = IDENTITY) -> Ranked:
    """Rank encoded ads: ``X`` int32[N, S_I] the item rows of every ad (rows of ads by id are
    ignored), ``catalog_at`` the positions of the ads given by id alone and ``hashes`` their ids'
    hashes (``id_at(j)`` names ad j in an error); or, with ``all_ads``, the whole catalog's best
    ``top_k`` (default 100).  ``value`` orders by eCPM / applies the reserve and boosts; ``cal``
    maps raw scores to CTRs (service/link.py)."""
    t0 = time.perf_counter()
    model = view.models[key]
    binary = model.target == "binary"
    if not value.plain and not binary:
        raise RankRequestError("rank_by", "eCPM, reserve and boost need a click model (target binary): "
                               f"model {key!r} predicts a rating", code="not_a_click_model")
    if all_ads:
        z, const = context_part(model.plan, ctx, model.arrays["emb"], model.arrays["linear"])
        b, d = view.base.parts[key], view.delta.parts[key]
        k = DEFAULT_TOP_K if top_k is None else top_k
        if value.plain:
            rows, raw = kernels.top_k(z, const, b.W, b.c, k, dead=view.dead, delta=(d.W, d.c))
            return Ranked(rows, reply_scores(raw, binary, cal), "all", view.size, time.perf_counter() - t0, raw)
        return _all_by_value(view, key, z, const, k, value, cal, t0)
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
    mode = "catalog" if n_ids == n else "inline" if not n_ids else "mixed"
    k = -1 if top_k is None else top_k
    if value.plain:
        rows_, scores = order(raw, k, binary, cal)
        return Ranked(rows_, scores, mode, n, time.perf_counter() - t0, raw[rows_], None, rows if n_ids else None)
    bids = np.full(n, np.nan) if value.bids is None else np.array(value.bids, np.float64)
    if n_ids:
        stored = view.bids_at(rows)
        given = bids[catalog_at]
        bids[catalog_at] = np.where(given == given, given, stored)  # the request's own bid wins
    bids = np.nan_to_num(bids, nan=0.0)
    boost = np.ones(n) if value.boost is None else np.asarray(value.boost, np.float64)
    rows_, c, e = order_values(raw, bids, boost, value.by_value, value.reserve is not None,
                               0.0 if value.reserve is None else float(value.reserve), k, *cal.params())
    return Ranked(rows_, c, mode, n, time.perf_counter() - t0, raw[rows_], e if value.by_value else None,
                  rows if n_ids else None)


def _all_by_value(view: View, key: str, z, const: float, k: int, value: Value, cal: Calibration, t0: float
                  ) -> Ranked:
    """The whole catalog's best ``k`` by value (kernels.top_k_value); boosted ads (by id) are left
    out of the scan and valued here with their multipliers, then both lists are merged."""
    b, d = view.base.parts[key], view.delta.parts[key]
    boosted, factors = NO_ROWS, np.zeros(0)
    if value.boost_ids:
        keys = list(value.boost_ids)
        g, _ = view.rows(IdTable.hash(keys))
        ok = [j for j in range(len(keys)) if g[j] >= 0 and view.id_of(int(g[j])) == keys[j]]
        boosted, factors = g[ok], np.array([value.boost_ids[keys[j]] for j in ok], np.float64)
        srt = np.argsort(boosted)
        boosted, factors = boosted[srt], factors[srt]
    # The kernel selects by its own (reassociated, approximate-exp) values: ask it for a few more
    # than k, value them exactly here, and ask again for more if the exact reserve left too few.
    want = k + SELECTION_MARGIN
    while True:
        rows, _ = kernels.top_k_value(z, const, b.W, b.c, view.base.bids, want, dead=view.dead,
                                      delta=(d.W, d.c, view.delta.bids), by_value=value.by_value,
                                      reserve=value.reserve, cal=cal.params(), skip=boosted,
                                      max_bids=(view.base.max_bid, view.delta.max_bid))
        found = len(rows)
        rows = np.concatenate([rows, boosted])
        raw = kernels.score_ids(z, const, b.W, b.c, rows, delta=(d.W, d.c))
        boost = np.concatenate([np.ones(len(rows) - len(boosted)), factors])
        bids = np.nan_to_num(view.bids_at(rows), nan=0.0)
        pos, c, e = order_values(raw, bids, boost, value.by_value, value.reserve is not None,
                                 0.0 if value.reserve is None else float(value.reserve), -1, *cal.params())
        if len(pos) >= k or found < want:
            break
        want *= 2
    # ties by global row, as the kernel breaks them: order_values keeps input order, so sort the input by row first
    if len(pos) > 1:
        key_ = -(e if value.by_value else c) * boost[pos]
        pos2 = np.lexsort((rows[pos], key_))
        pos, c, e = pos[pos2], c[pos2], e[pos2]
    pos, c, e = pos[:k], c[:k], e[:k]
    return Ranked(rows[pos], c, "all", view.size, time.perf_counter() - t0, raw[pos],
                  e if value.by_value else None)


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
    at, keys = by_id_positions(ads)
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
