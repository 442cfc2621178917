"""``POST /v1/rank`` as one pipeline: parse -> one encoded request -> score against the snapshot -> reply.

1. **Parse** the body into an :class:`Encoded` request with one of two parsers: the compiled
   scanner of the model the body names (service/fastpath: the common shapes, no Python object per
   value), or msgspec + the model's ``RequestEncoder`` (everything else, and every error message).
2. **Score** it against the snapshot taken for this request: one implementation for every mode
   (``service.catalog.ranking.rank_encoded``: inline ads by the model's Scorer, ads given by id
   alone by the catalog kernel on the per-ad parts of exactly this model version, mixed requests
   both, ``all_ads`` the whole-catalog top-k).
3. **Reply**: the fast parser writes the bytes from the ids' own text in the body, the generic one
   with msgspec — the same bytes (tests/service/test_fastpath.py, test_catalog_api.py).

Everything comes from the one snapshot passed in: the version label and the scores of a reply
always belong to the same model version.  Which version of the named model answers is chosen
before parsing (the version's encoder and scanner read the body): a ``"version"`` pin, else the
name's traffic split (``Snapshot.route``, service/traffic.py).  A sampled request is handed back
with a *shadow* job (service/shadow.py) that the caller runs after the reply is sent.

Value ranking, reserve, boosts and explanations (issue 18) ride on the same encoded request
(:class:`~service.catalog.ranking.Value`, ``explain``).  The scanner reads the common shapes
(``"rank_by"``, ``"explain"`` and per-ad ``"bid"``: inline ads with bids, catalog ids with stored
bids) and leaves ``reserve`` and ``boost`` to the generic parser; the reply's ``ctr`` and ``ecpm``
columns are written by both (the same bytes).  The CTR of every reply comes from ``service.link``
(the model version's calibration, :func:`service.link.calibration_of`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter
from typing import cast

import numpy as np

from service import bounds, fastpath, metrics, schemas
from service import explain as explaining
from service.catalog.idtable import IdTable
from service.catalog.ranking import (
    PLAIN,
    Ranked,
    RankRequestError,
    Value,
    by_id_positions,
    rank_encoded,
)
from service.errors import ApiError
from service.link import calibration_of
from service.shadow import agreement
from service.snapshot import ModelVersion, Snapshot

log = logging.getLogger("adrank.pipeline")

NO_ROWS = np.zeros(0, np.int64)
MAX_EXPLAIN = 10  # ads explained per request unless the server sets another cap (ADRANK_MAX_EXPLAIN)


@dataclass
class Encoded:
    """One /v1/rank request as the scorer takes it, whichever parser read it."""

    model: ModelVersion
    ctx: np.ndarray  # int32[S_C]
    X: np.ndarray | None  # int32[N, S_I]: every ad's item slots (rows of ads by id are unused)
    catalog_at: np.ndarray  # int64: positions of the ads given by id alone
    hashes: np.ndarray  # uint64: their catalog ids' hashes
    id_at: Callable[[int], object]  # ad j's id as the request gave it (error messages)
    all_ads: bool
    top_k: int | None
    reply: Callable[..., bytes]  # reply(ranked, explanations | None): the response body
    value: Value = PLAIN
    explain: bool = False


@dataclass
class Answer:
    model: str
    body: bytes
    mode: str
    n_candidates: int
    seconds: float  # parse + encode + score + sort
    version: str = ""  # the version that scored it
    n_returned: int = 0  # ads in the reply
    shadow: Callable[[], None] | None = None  # run after the reply is sent (service/shadow.py)


def answer(snap: Snapshot, body: bytes, max_candidates: int, labels: list | None = None, fast: bool = True,
           max_top_k: int = schemas.MAX_TOP_K, max_explain: int = MAX_EXPLAIN) -> Answer:
    """The whole pipeline on one body (raises ApiError / RequestError / UnknownModel / BadRequest);
    ``labels[0]`` learns the model's name as soon as it is known (an error reply is counted under
    it); ``fast`` False leaves every body to the generic parser (``ADRANK_FASTPATH=0``);
    ``max_top_k`` bounds an ``all_ads`` request; ``max_explain`` caps the ads explained (the
    first ones of the reply)."""
    t0 = perf_counter()
    if len(body) > fastpath.WORKSPACE_MAX_BYTES:  # a large body is checked before either parser spends on it
        bounds.prescan(body, max_candidates)
    req = parse_fast(snap, body, max_candidates) if fast else None
    if req is None:
        req = parse_generic(snap, body, max_candidates, labels, max_top_k)
    if labels is not None:
        labels[0] = req.model.name
    ranked = score(snap, req)
    explained = explanations(snap, req, ranked, max_explain) if req.explain else None
    seconds = perf_counter() - t0
    job = None
    if snap.traffic:
        shadow = snap.shadow_of(req.model)
        if shadow is not None:
            job = functools.partial(shadow_job, snap, body, max_candidates, req.model, shadow, ranked)
    return Answer(req.model.name, req.reply(ranked, explained), ranked.mode, ranked.n_candidates, seconds,
                  req.model.version, len(ranked.order), job)


def score(snap: Snapshot, req: Encoded) -> Ranked:
    return rank_encoded(snap.catalog, req.model.key, req.ctx, req.X, req.catalog_at, req.hashes, req.id_at,
                        req.all_ads, req.top_k, req.value, calibration_of(req.model))


def explanations(snap: Snapshot, req: Encoded, r: Ranked, cap: int) -> list[dict]:
    """The explanations of the first ``cap`` ads of ranking ``r``: from the request's own item rows
    (inline ads), or from the stored features of catalog ads, re-encoded (a few ads: cheap)."""
    view, model = snap.catalog, snap.catalog.models[req.model.key]
    picked = r.order[: max(cap, 0)].tolist()
    if not picked:
        return []
    if req.all_ads:
        stored: dict[int, int] = {j: int(g) for j, g in enumerate(picked)}
    else:
        by_pos = dict(zip(req.catalog_at.tolist(), (r.catalog_rows if r.catalog_rows is not None else NO_ROWS).tolist(),
                          strict=True))
        stored = {j: by_pos[p] for j, p in enumerate(picked) if p in by_pos}
    items = np.empty((len(picked), model.plan.item.offsets[-1]), np.int32)
    if stored:
        dec = schemas.msgspec.json.Decoder()
        items[list(stored)] = model.encode_items([dec.decode(view.features_raw(g)) for g in stored.values()])
    inline = [j for j in range(len(picked)) if j not in stored]
    if inline:
        assert req.X is not None
        items[inline] = req.X[[picked[j] for j in inline]]
    return explaining.explain(model, req.ctx, items)


def shadow_job(snap: Snapshot, body: bytes, max_candidates: int, served: ModelVersion, shadow: ModelVersion,
               ranked: Ranked) -> None:
    """Score ``body`` on ``shadow`` (off the reply's path: service/shadow.py runs this after the
    reply is sent) and record how it agrees with ``ranked``, what ``served`` answered."""
    labels = (served.name, served.version, shadow.version)
    t0 = perf_counter()
    try:
        req = parse_fast(snap, body, max_candidates, pin=shadow) or parse_generic(snap, body, max_candidates,
                                                                                  pin=shadow)
        other = score(snap, req)
    except Exception as exc:  # noqa: BLE001 - a shadow's failure is counted, never raised
        metrics.SHADOW_REQUESTS.labels(*labels, "failed").inc()
        log.warning("shadow %s of %s failed: %s", shadow.version, served.name, exc)
        return
    metrics.SHADOW_DURATION.labels(served.name, shadow.version).observe(perf_counter() - t0)
    diff, overlap = agreement(ranked.order, ranked.scores, other.order, other.scores)
    if diff is not None:
        metrics.SHADOW_SCORE_DIFF.labels(*labels).observe(diff)
    if overlap is not None:
        metrics.SHADOW_TOPK_OVERLAP.labels(*labels).observe(overlap)
    metrics.SHADOW_REQUESTS.labels(*labels, "scored").inc()


# --- the compiled parser -------------------------------------------------------------------------
def parse_fast(snap: Snapshot, body: bytes, max_candidates: int, pin: ModelVersion | None = None
               ) -> Encoded | None:
    """The body scanned by the scanner of the model it names (guessed from its first bytes and
    confirmed by the scan), or None: the generic parser takes it (unsupported shapes, unknown
    model, too many candidates: it produces every error reply).  ``pin``: scan it for that
    version (a shadow), None unless the body names that version's model."""
    if pin is not None:
        scan = pin.ranker.fastpath.scan_views(body)
        named = snap.get(scan.model) if scan is not None else None
        if scan is None or named is None or named.name != pin.name:
            return None
        mv = pin
    else:
        guessed = snap.get(fastpath.guess_model(body)) or snap.get(None)
        if guessed is None:
            return None
        mv = guessed
        if snap.traffic:  # the body has no "version" nor "routing_key" (the scanner falls back on them)
            mv = snap.route(mv.name)
        scan = mv.ranker.fastpath.scan_views(body)
    if scan is not None and pin is None:
        named = snap.get(scan.model)  # the model the body really names
        if named is None:
            return None
        if named.name != mv.name:  # a wrong guess (its schema and vocabulary may differ)
            mv = snap.route(named.name) if snap.traffic else named
            scan = mv.ranker.fastpath.scan_views(body)
    if scan is None or len(scan.X) > max_candidates or (scan.top_k or 0) > schemas.MAX_TOP_K:
        return None
    if len(scan.X) > 1 or (len(scan.X) and scan.spans[0, 1] - scan.spans[0, 0] > schemas.MAX_ID_CHARS):
        if bounds.ids_suspect(scan.spans, scan.id_hash, np.frombuffer(body, np.uint8), schemas.MAX_ID_CHARS):
            return None  # a duplicate or over-long id: the generic parser names it
    at = np.flatnonzero(scan.spans[:, 2] == fastpath.BY_ID) if scan.n_by_id else NO_ROWS
    name, version = mv.name, mv.version

    binary = mv.catalog_model.target == "binary"

    def reply(r: Ranked, explained=None) -> bytes:
        if scan.explain:  # a few dozen ads at most: msgspec writes them (the same bytes as the generic path)
            return schemas.encode_ranking(name, version, list(zip(scan.ids(r.order.tolist()), r.scores.tolist(),
                                                                   strict=True)), binary,
                                          r.ecpm.tolist() if r.ecpm is not None else None,
                                          r.raw.tolist() if r.raw is not None else None, explained)
        return fastpath.reply(name, version, scan, r.order, r.scores, binary, r.ecpm)

    value = Value("ecpm", None, scan.bids) if scan.by_value else PLAIN
    return Encoded(mv, scan.ctx, scan.X, at, scan.id_hash[at], lambda j: scan.ids([j])[0], False, scan.top_k,
                   reply, value, scan.explain)


# --- the generic parser --------------------------------------------------------------------------
def parse_generic(snap: Snapshot, body: bytes, max_candidates: int, labels: list | None = None,
                  max_top_k: int = schemas.MAX_TOP_K, pin: ModelVersion | None = None) -> Encoded:
    """msgspec + the model's RequestEncoder: any valid body, and the error reply of any other;
    ``pin``: the version to encode it for (a shadow), whatever the body or the split says."""
    bounds.prescan(body, max_candidates)
    req = schemas.decode_rank(body)
    if labels is not None:
        labels[0] = snap.model(req.model).name
    mv = pin if pin is not None else snap.route(req.model, req.version, req.routing_key)
    if labels is not None:
        labels[0] = mv.name
    if req.ads is None and not req.all_ads:
        raise ApiError(422, "invalid_request", "Object missing required field `ads` (or give \"all_ads\": true)")
    n_ads = len(req.ads) if req.ads is not None else 0
    if n_ads > max_candidates:
        raise ApiError(422, "too_many_candidates", f"ads: {n_ads} candidates exceed the limit of {max_candidates}")
    if req.all_ads and req.ads is not None:
        raise RankRequestError("ads", "give exactly one of 'ads' (a list) and 'all_ads': true")
    if req.all_ads and (req.top_k is None or req.top_k > max_top_k):
        raise ApiError(422, "top_k_too_large", f"all_ads: give a top_k of at most {max_top_k} "
                       "(the catalog is ranked, never listed whole)")
    if req.reserve is not None and req.rank_by != "ecpm":
        raise RankRequestError("reserve", 'a reserve is an eCPM: give "rank_by": "ecpm" with it')
    enc = mv.ranker.encoder
    ctx = enc.encode_context(req.context)
    name, version = mv.name, mv.version
    binary = mv.catalog_model.target == "binary"

    def body_of(ids: list, r: Ranked, explained) -> bytes:
        return schemas.encode_ranking(
            name, version, list(zip(ids, r.scores.tolist(), strict=True)), binary,
            r.ecpm.tolist() if r.ecpm is not None else None,
            r.raw.tolist() if req.explain and r.raw is not None else None, explained)

    if req.all_ads:
        def reply_all(r: Ranked, explained=None) -> bytes:
            return body_of(snap.catalog.ids_of(r.order.tolist()), r, explained)

        value = Value(req.rank_by, req.reserve, boost_ids=req.boost) if (req.rank_by != "ctr" or req.boost) else PLAIN
        return Encoded(mv, ctx, None, NO_ROWS, np.zeros(0, np.uint64), str, True, req.top_k, reply_all, value,
                       req.explain)
    ads = req.ads or []
    _no_duplicates(ads)
    at, keys = by_id_positions(ads)
    ids, X = enc.encode_ads(cast(list, ads))  # validates every inline ad; the rows of ads by id are unused
    for i in at:
        ids[i] = ads[i]["id"]  # replies name a catalog ad by its id as the request gave it

    def reply(r: Ranked, explained=None) -> bytes:
        return body_of([ids[i] for i in r.order.tolist()], r, explained)

    value = PLAIN
    if req.rank_by != "ctr" or req.boost:
        bids = np.array([ad.get("bid", np.nan) for ad in ads], np.float64) if any("bid" in ad for ad in ads) else None
        boost = np.array([req.boost.get(str(i), 1.0) for i in ids], np.float64) if req.boost else None
        value = Value(req.rank_by, req.reserve, bids, boost)
    return Encoded(mv, ctx, X, np.asarray(at, np.int64), IdTable.hash(keys) if keys else np.zeros(0, np.uint64),
                   lambda j: ads[j].get("id"), False, req.top_k, reply, value, req.explain)


def _no_duplicates(ads: list) -> None:
    seen: set = set()
    for i, ad in enumerate(ads):
        ad_id = ad["id"]
        if ad_id in seen:
            raise ApiError(422, "duplicate_ad_id", f"ads[{i}]: id {ad_id!r} is given twice (each candidate once)")
        seen.add(ad_id)
