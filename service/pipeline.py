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
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter
from typing import cast

import numpy as np

from service import fastpath, metrics, schemas
from service.catalog.idtable import IdTable
from service.catalog.ranking import Ranked, RankRequestError, by_id, catalog_key, rank_encoded, unknown_ad
from service.errors import ApiError
from service.shadow import agreement
from service.snapshot import ModelVersion, Snapshot

log = logging.getLogger("adrank.pipeline")

NO_ROWS = np.zeros(0, np.int64)


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
    reply: Callable[[Ranked], bytes]  # the response body for a ranking of this request


@dataclass
class Answer:
    model: str
    body: bytes
    mode: str
    n_candidates: int
    seconds: float  # parse + encode + score + sort
    version: str = ""  # the version that scored it
    shadow: Callable[[], None] | None = None  # run after the reply is sent (service/shadow.py)


def answer(snap: Snapshot, body: bytes, max_candidates: int, labels: list | None = None, fast: bool = True
           ) -> Answer:
    """The whole pipeline on one body (raises ApiError / RequestError / UnknownModel / BadRequest);
    ``labels[0]`` learns the model's name as soon as it is known (an error reply is counted under
    it); ``fast`` False leaves every body to the generic parser (``ADRANK_FASTPATH=0``)."""
    t0 = perf_counter()
    req = parse_fast(snap, body, max_candidates) if fast else None
    if req is None:
        req = parse_generic(snap, body, max_candidates, labels)
    if labels is not None:
        labels[0] = req.model.name
    ranked = score(snap, req)
    seconds = perf_counter() - t0
    job = None
    if snap.traffic:
        shadow = snap.shadow_of(req.model)
        if shadow is not None:
            job = functools.partial(shadow_job, snap, body, max_candidates, req.model, shadow, ranked)
    return Answer(req.model.name, req.reply(ranked), ranked.mode, ranked.n_candidates, seconds, req.model.version,
                  job)


def score(snap: Snapshot, req: Encoded) -> Ranked:
    return rank_encoded(snap.catalog, req.model.key, req.ctx, req.X, req.catalog_at, req.hashes, req.id_at,
                        req.all_ads, req.top_k)


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
    if scan is None or len(scan.X) > max_candidates:
        return None
    at = np.flatnonzero(scan.spans[:, 2] == fastpath.BY_ID) if scan.n_by_id else NO_ROWS
    name, version = mv.name, mv.version

    def reply(r: Ranked) -> bytes:
        return fastpath.reply(name, version, scan, r.order, r.scores)

    return Encoded(mv, scan.ctx, scan.X, at, scan.id_hash[at], lambda j: scan.ids([j])[0], False, scan.top_k,
                   reply)


# --- the generic parser --------------------------------------------------------------------------
def parse_generic(snap: Snapshot, body: bytes, max_candidates: int, labels: list | None = None,
                  pin: ModelVersion | None = None) -> Encoded:
    """msgspec + the model's RequestEncoder: any valid body, and the error reply of any other;
    ``pin``: the version to encode it for (a shadow), whatever the body or the split says."""
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
    enc = mv.ranker.encoder
    ctx = enc.encode_context(req.context)
    name, version = mv.name, mv.version
    if req.all_ads:
        def reply_all(r: Ranked) -> bytes:
            ids = snap.catalog.ids_of(r.order.tolist())
            return schemas.encode_ranking(name, version, list(zip(ids, r.scores.tolist(), strict=True)))

        return Encoded(mv, ctx, None, NO_ROWS, np.zeros(0, np.uint64), str, True, req.top_k, reply_all)
    ads = req.ads or []
    at = [i for i, ad in enumerate(ads) if by_id(ad)]
    keys: list[str] = []
    for i in at:
        k = catalog_key(ads[i].get("id"))
        if k is None:
            raise unknown_ad(i, ads[i].get("id"))
        keys.append(k)
    ids, X = enc.encode_ads(cast(list, ads))  # validates every inline ad; the rows of ads by id are unused
    for i, k in zip(at, keys, strict=True):
        ids[i] = k  # replies name a catalog ad by its catalog id

    def reply(r: Ranked) -> bytes:
        return schemas.encode_ranking(name, version, [(ids[i], s) for i, s in
                                                      zip(r.order.tolist(), r.scores.tolist(), strict=True)])

    return Encoded(mv, ctx, X, np.asarray(at, np.int64), IdTable.hash(keys) if keys else np.zeros(0, np.uint64),
                   lambda j: ads[j].get("id"), False, req.top_k, reply)
