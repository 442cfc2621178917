"""HTTP wiring of the catalog: PUT /v1/ads, GET and DELETE /v1/ads/{id}, and the /v1/rank resolver.

The app keeps one :class:`~service.catalog.store.Catalog` in ``app.state.catalog``.  Writes run
off the event loop (a copy-on-write snapshot of a large catalog takes milliseconds); errors are
JSON ``{"error": code, "message": ...}`` like the rest of the API: 422 for a bad ad (named),
413 for an oversized body, 404 for an unknown id.
"""

from __future__ import annotations

import asyncio

import msgspec
from fastapi import APIRouter, Request, Response

from service.catalog import metrics
from service.catalog.ranking import RankRequestError, rank, uses_catalog
from service.catalog.store import Catalog, CatalogError

router = APIRouter()
MAX_UPSERT_BYTES = 256 * 1024 * 1024
_encoder = msgspec.json.Encoder()

__all__ = ["router", "resolve", "uses_catalog", "RankRequestError"]


def _reply(obj, status: int = 200) -> Response:
    return Response(_encoder.encode(obj), status_code=status, media_type="application/json")


def _error(status: int, code: str, message: str) -> Response:
    return _reply({"error": code, "message": message}, status)


def _catalog(request: Request) -> Catalog | None:
    return getattr(request.app.state, "catalog", None)


def resolve(catalog: Catalog, model: str, context, ads, all_ads: bool, top_k) -> list[tuple[str, float]]:
    """For the /v1/rank handler: rank ids / inline ads / ``all_ads`` from one catalog snapshot.

    Returns ``[(id, score), ...]`` best first; raises RankRequestError / RequestError (both
    ``EncodeError``: 422 naming the field).  The snapshot is read once: one consistent catalog.
    """
    if catalog.journal is not None:
        catalog.journal.maybe_sync()  # writes acknowledged by sibling workers (journal.py)
    ranked = rank(catalog.snapshot, model, context, ads, all_ads, top_k)
    metrics.scored(model, ranked)
    return list(zip(ranked.ids, ranked.scores.tolist(), strict=True))


@router.put("/v1/ads")
async def upsert_ads(request: Request) -> Response:
    catalog = _catalog(request)
    if catalog is None:
        return _error(404, "no_catalog", "this server has no ad catalog")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_UPSERT_BYTES:
        return _error(413, "body_too_large", f"body of {declared} bytes exceeds {MAX_UPSERT_BYTES}")
    try:
        body = msgspec.json.decode(await request.body())
    except msgspec.DecodeError as exc:
        return _error(422, "invalid_json", f"malformed JSON: {exc}")
    if not isinstance(body, dict) or not isinstance(body.get("ads"), list) or set(body) != {"ads"}:
        return _error(422, "invalid_request", 'body must be {"ads": [{"id": ..., "features": {...}}, ...]}')
    journal = getattr(request.app.state, "catalog_journal", None)
    try:
        if journal is not None:  # several workers: validate, journal, apply (journal.py)
            snap = await asyncio.to_thread(journal.write, "upsert", body["ads"])
        else:
            snap = await asyncio.to_thread(catalog.upsert, body["ads"], lambda i: f"ads[{i}]")
    except CatalogError as exc:
        return _error(422, "invalid_ad", str(exc))
    if journal is None:  # the journal records its own writes
        metrics.published(snap, "upsert", len(body["ads"]))
    return _reply({"upserted": len(body["ads"]), "size": len(snap), "version": snap.version})


@router.get("/v1/ads/{ad_id}")
async def get_ad(ad_id: str, request: Request) -> Response:
    catalog = _catalog(request)
    if catalog is not None and catalog.journal is not None:
        await asyncio.to_thread(catalog.journal.maybe_sync)
    snap = catalog.snapshot if catalog is not None else None
    feats = snap.get(ad_id) if snap is not None else None
    if feats is None or snap is None:
        return _error(404, "unknown_ad", f"ad {ad_id!r} is not in the catalog")
    return _reply({"id": ad_id, "features": feats, "version": snap.version})


@router.delete("/v1/ads/{ad_id}")
async def delete_ad(ad_id: str, request: Request) -> Response:
    catalog = _catalog(request)
    if catalog is None:
        return _error(404, "unknown_ad", f"ad {ad_id!r} is not in the catalog")
    journal = getattr(request.app.state, "catalog_journal", None)
    if journal is not None:
        await asyncio.to_thread(journal.maybe_sync)
        if ad_id not in catalog.snapshot.index:
            return _error(404, "unknown_ad", f"ad {ad_id!r} is not in the catalog")
        snap = await asyncio.to_thread(journal.write, "delete", [ad_id])
    else:
        snap, removed = await asyncio.to_thread(catalog.delete, [ad_id])
        if not removed:
            return _error(404, "unknown_ad", f"ad {ad_id!r} is not in the catalog")
        metrics.published(snap, "delete", 1)
    return _reply({"deleted": ad_id, "size": len(snap), "version": snap.version})
