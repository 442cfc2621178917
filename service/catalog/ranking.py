"""Rank against the catalog: ads by id, inline ads, both mixed, or the whole catalog (no HTTP).

Everything in one request is scored with the model *the snapshot's parts were computed for*
(``part.model``), so a hot reload in progress never mixes two models in one answer.  Inline ads
go through the same per-ad reduction on the fly; catalog ads only cost the dot product.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from adrank.preprocess import EncodeError
from service.catalog import kernels
from service.catalog.precompute import context_part
from service.catalog.store import AdEncodeError, CatalogError, Part, Snapshot, validate_ad

DEFAULT_TOP_K = 100


class RankRequestError(ValueError):
    """A request the catalog cannot answer (HTTP 422); the message names the field."""


@dataclass
class Ranked:
    ids: list[str]
    scores: np.ndarray  # float64, best first (probabilities for click models)
    mode: str  # "all" (whole catalog), "catalog" (ads by id) or "mixed" (ids + inline ads)
    n_candidates: int
    seconds: float  # scoring time (context part + kernels + sort)


def uses_catalog(body: dict) -> bool:
    """True when a /v1/rank body needs the catalog: ``all_ads`` or an ad given by id alone."""
    if body.get("all_ads"):
        return True
    ads = body.get("ads")
    return isinstance(ads, list) and any(_by_id(a) for a in ads)


def _by_id(ad) -> bool:
    """An ad given by id alone (no "features" and no positional "values")."""
    return isinstance(ad, dict) and "features" not in ad and "values" not in ad


def _features(part: Part, ad: dict, i: int) -> dict:
    """The features of an inline ad; the positional form ("values" in item-field order) too."""
    if "values" not in ad:
        return ad.get("features")
    names = [f.name for f in part.model.preprocessor.schema.item_fields]
    vals = ad["values"]
    if not isinstance(vals, list) or len(vals) != len(names) or "features" in ad:
        raise RankRequestError(f"ads[{i}]: 'values' must be a list of {len(names)} item values "
                               "(in item-field order) and not be given with 'features'")
    return dict(zip(names, vals, strict=True))


def _top_k(body: dict, default: int | None) -> int | None:
    k = body.get("top_k", default)
    if k is None:
        return None
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise RankRequestError(f"top_k must be a positive integer, got {k!r}")
    return k


def _context(part: Part, ctx) -> tuple[np.ndarray, float]:
    if not isinstance(ctx, dict):
        raise RankRequestError("context must be an object {field: value}")
    model = part.model
    schema = model.preprocessor.schema
    names = [f.name for f in schema.context_fields]
    extra = set(ctx) - set(names)
    if extra:
        raise RankRequestError(f"context: {sorted(extra)} are not context fields of model {model.name!r}")
    try:
        x = model.preprocessor.encode_columns({n: [ctx.get(n)] for n in names}, 1, fields=range(len(names)))
    except EncodeError as exc:
        raise RankRequestError(f"context: {exc}") from None
    return context_part(model.plan, x[0], model.arrays["emb"], model.arrays["linear"])


def _sigmoid(s: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-s))


def _finish(ids, scores, k, target) -> tuple[list[str], np.ndarray]:
    order = np.argsort(-scores, kind="stable")
    if k is not None:
        order = order[:k]
    s = scores[order]
    if target == "binary":
        s = _sigmoid(s)
    return [ids[i] for i in order], s


def _score_inline(part: Part, z, const: float, feats: list[dict], where: list[int]) -> np.ndarray:
    """Scores of ads given with their features, by the same reduction as catalog ads."""
    names = {f.name for f in part.model.preprocessor.schema.item_fields}
    for f, i in zip(feats, where, strict=True):
        if not names.issuperset(f):
            raise RankRequestError(f"ads[{i}]: {sorted(set(f) - names)} are not item fields of "
                                   f"model {part.model.name!r}")
    try:
        x = part.model.encode_items(feats)
    except AdEncodeError as exc:
        raise RankRequestError(f"ads[{where[exc.row]}]: {exc.reason}") from None
    W, c = part.model.parts(x)
    return kernels.score_all(z, const, W, c)


def rank(snap: Snapshot, model: str, body: dict) -> Ranked:
    """Answer a /v1/rank body {"context", "ads" | "all_ads", "top_k"?} from one snapshot."""
    t0 = time.perf_counter()
    part = snap.parts.get(model)
    if part is None:
        raise RankRequestError(f"model {model!r} has no catalog")
    ads, all_ads = body.get("ads"), body.get("all_ads", False)
    if not isinstance(all_ads, bool):
        raise RankRequestError("all_ads must be true or false")
    if all_ads == (ads is not None):
        raise RankRequestError("give exactly one of 'ads' (a list) and 'all_ads': true")
    z, const = _context(part, body.get("context"))
    if all_ads:
        rows, s = kernels.top_k(z, const, part.W, part.c, _top_k(body, DEFAULT_TOP_K))
        s = _sigmoid(s) if part.model.target == "binary" else s
        return Ranked([snap.ids[a] for a in rows], s, "all", len(snap), time.perf_counter() - t0)
    if not isinstance(ads, list):
        raise RankRequestError("ads must be a list of {\"id\"} or {\"id\", \"features\"} objects")
    k = _top_k(body, None)
    ids, rows, pos, inline, inline_pos = [], [], [], [], []
    for i, ad in enumerate(ads):
        if _by_id(ad):
            ad_id = ad.get("id")
            ad_id = str(ad_id) if isinstance(ad_id, int) and not isinstance(ad_id, bool) else ad_id
            a = snap.index.get(ad_id) if isinstance(ad_id, str) else None
            if a is None:
                raise RankRequestError(f"ads[{i}]: id {ad_id!r} is not in the catalog and has no features")
            rows.append(a)
            pos.append(i)
            ids.append(ad["id"])
        else:
            try:
                ad_id, feats = validate_ad({"id": ad.get("id"), "features": _features(part, ad, i)}, f"ads[{i}]")
            except CatalogError as exc:
                raise RankRequestError(str(exc)) from None
            ids.append(ad_id)
            inline.append(feats)
            inline_pos.append(i)
    scores = np.empty(len(ads))
    scores[pos] = kernels.score_ids(z, const, part.W, part.c, np.asarray(rows, np.int64))
    if inline:
        scores[inline_pos] = _score_inline(part, z, const, inline, inline_pos)
    out_ids, out_s = _finish(ids, scores, k, part.model.target)
    mode = "mixed" if inline else "catalog"
    return Ranked(out_ids, out_s, mode, len(ads), time.perf_counter() - t0)
