"""HTTP wiring of the catalog: PUT /v1/ads, PUT /v1/ads/bids, GET and DELETE /v1/ads/{id} —
admin routes: each needs the admin token (service/admin.py) and ``--no-admin`` removes them all
(service/app.py).

Writes go through the serving state (service/state.py): validated and prepared off the event loop,
committed to the replication log, applied, and only then acknowledged with the catalog version
that includes them (a write that cannot be committed is a 503, never acknowledged).  Errors are
JSON ``{"error": code, "message": ...}`` like the rest of the API: 422 for a bad ad (named), 413
for an oversized body, 404 for an unknown id.
"""

from __future__ import annotations

import asyncio

import msgspec
from fastapi import APIRouter, Request, Response

from service import bounds
from service.admin import check_body_headers, check_token
from service.catalog.store import MAX_ID_CHARS, CatalogError, check_bid
from service.errors import ApiError
from service.replog import LogError

router = APIRouter()
MAX_UPSERT_BYTES = 256 * 1024 * 1024
MAX_UPSERT_ADS = 2_000_000  # ads in one PUT (the prescan refuses more before decoding)
_encoder = msgspec.json.Encoder()

__all__ = ["router"]


def _reply(obj, status: int = 200) -> Response:
    return Response(_encoder.encode(obj), status_code=status, media_type="application/json")


def _error(status: int, code: str, message: str) -> Response:
    return _reply({"error": code, "message": message}, status)


def _state(request: Request):
    svc = getattr(request.app.state, "svc", None)
    return None if svc is None else svc.state


def _guard(request: Request, body: bool = False) -> None:
    """401 without the admin token; 415 for a body that is not plain JSON."""
    svc = getattr(request.app.state, "svc", None)
    if svc is None:  # an app without serving state has no catalog: the routes answer 404
        return
    check_token(request.headers.get("authorization"), svc.settings.admin_token)
    if body:
        check_body_headers(request.headers.get("content-type"), request.headers.get("content-encoding"), True)


def _check_id(ad_id: str) -> None:
    if len(ad_id) > MAX_ID_CHARS:
        raise ApiError(422, "invalid_id", f"ad id of {len(ad_id)} characters, more than the limit of {MAX_ID_CHARS}")


def _not_committed(exc: LogError) -> Response:
    return _error(503, "log_unavailable", f"the write was not committed (not acknowledged): {exc}")


async def _write_body(request: Request, member: str, kind: type, shape: str):
    """(serving state, the decoded body ``{member: kind}``) of a catalog write, or (None, the error
    reply): the token, a JSON content type, the size bound, the prescan (nesting, numbers, ads)."""
    try:
        _guard(request, body=True)
    except ApiError as exc:
        return None, exc.response()
    state = _state(request)
    if state is None:
        return None, _error(404, "no_catalog", "this server has no ad catalog")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_UPSERT_BYTES:
        return None, _error(413, "body_too_large", f"body of {declared} bytes exceeds {MAX_UPSERT_BYTES}")
    try:
        raw = await request.body()
        bounds.prescan(raw, MAX_UPSERT_ADS, member)
        body = msgspec.json.decode(raw)
    except ApiError as exc:
        return None, exc.response()
    except msgspec.DecodeError as exc:
        return None, _error(422, "invalid_json", f"malformed JSON: {exc}")
    if not isinstance(body, dict) or not isinstance(body.get(member), kind) or set(body) != {member}:
        return None, _error(422, "invalid_request", f"body must be {shape}")
    return state, body


@router.put("/v1/ads")
async def upsert_ads(request: Request) -> Response:
    state, body = await _write_body(request, "ads", list, '{"ads": [{"id": ..., "features": {...}}, ...]}')
    if isinstance(body, Response):
        return body
    try:
        snap = await asyncio.to_thread(state.upsert, body["ads"])
    except CatalogError as exc:
        return _error(422, "invalid_ad", str(exc))
    except LogError as exc:
        return _not_committed(exc)
    return _reply({"upserted": len(body["ads"]), "size": snap.catalog.size, "version": snap.catalog.version,
                   "position": snap.position})


@router.put("/v1/ads/bids")
async def set_bids(request: Request) -> Response:
    """``{"bids": {ad id: bid | null}}``: new bids of ads already in the catalog, without touching
    their features (no encoding, no precompute: a copy of the bid arrays).  404 naming the unknown
    ids (nothing written), 422 for a bad bid."""
    state, body = await _write_body(request, "bids", dict, '{"bids": {"<ad id>": <bid or null>, ...}}')
    if isinstance(body, Response):
        return body
    try:
        for i in body["bids"]:
            _check_id(i)
        if len(body["bids"]) > MAX_UPSERT_ADS:
            raise ApiError(422, "too_many_ads", f"bids: {len(body['bids'])} ads exceed {MAX_UPSERT_ADS}")
        bids = {str(i): check_bid(b, "bids", str(i)) for i, b in body["bids"].items()}
        snap, missing = await asyncio.to_thread(state.set_bids, bids)
    except ApiError as exc:
        return exc.response()
    except CatalogError as exc:
        return _error(422, "invalid_bid", str(exc))
    except LogError as exc:
        return _not_committed(exc)
    if missing:
        return _error(404, "unknown_ad", f"not in the catalog (nothing written): {missing[:10]}")
    return _reply({"updated": len(bids), "size": snap.catalog.size, "version": snap.catalog.version,
                   "position": snap.position})


@router.get("/v1/ads/{ad_id}")
async def get_ad(ad_id: str, request: Request) -> Response:
    try:
        _guard(request)
        _check_id(ad_id)
    except ApiError as exc:
        return exc.response()
    state = _state(request)
    view = state.snapshot.catalog if state is not None else None
    g = view.row_of(ad_id) if view is not None else -1
    if view is None or g < 0:
        return _error(404, "unknown_ad", f"ad {ad_id!r} is not in the catalog")
    return _reply({"id": ad_id, "features": msgspec.json.decode(view.features_raw(g)), "bid": view.bid_of(g),
                   "version": view.version})


@router.delete("/v1/ads/{ad_id}")
async def delete_ad(ad_id: str, request: Request) -> Response:
    try:
        _guard(request)
        _check_id(ad_id)
    except ApiError as exc:
        return exc.response()
    state = _state(request)
    try:
        snap = await asyncio.to_thread(state.delete, ad_id) if state is not None else None
    except LogError as exc:
        return _not_committed(exc)
    if snap is None:
        return _error(404, "unknown_ad", f"ad {ad_id!r} is not in the catalog")
    return _reply({"deleted": ad_id, "size": snap.catalog.size, "version": snap.catalog.version,
                   "position": snap.position})
