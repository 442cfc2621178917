"""``POST /v1/rank:batch``: several auctions in one request, for offline replay and multi-slot pages.

The body is ``{"auctions": [<a /v1/rank request>, ...]}``; the reply ``{"results": [<its /v1/rank
reply>, ...]}`` in the same order.  Each auction is its own request with its own context (scored
with the context part once, as /v1/rank does): its raw bytes go through the same pipeline,
the compiled scanner included (``msgspec.Raw`` keeps each auction's bytes without decoding them
twice), so an auction's result is byte for byte its /v1/rank reply.  Every auction is scored
against the one snapshot taken for the batch: one consistent set of model versions and catalog.

Limits: at most ``ADRANK_MAX_AUCTIONS`` auctions, and at most ``ADRANK_MAX_CANDIDATES`` ads in all
(an ``all_ads`` auction counts the ads it returns); the body is bounded like /v1/rank's.  A bad auction
fails the batch with the /v1/rank error of that auction, its position named in the message.
"""

from __future__ import annotations

import logging

import msgspec
from fastapi import APIRouter, Request, Response

from service import bounds, pipeline, schemas
from service.admin import check_body_headers
from service.errors import JSON, ApiError
from service.routes import api_error, observe_rank, read_body

BATCH = "/v1/rank:batch"
log = logging.getLogger("adrank.batch")
router = APIRouter()
_decoder = msgspec.json.Decoder(schemas.BatchRequest)


def _decode(body: bytes) -> schemas.BatchRequest:
    try:
        return _decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise ApiError(422, "invalid_request", f'{exc} (body: {{"auctions": [<rank request>, ...]}})') from None
    except msgspec.DecodeError as exc:
        raise ApiError(422, "invalid_json", f"malformed JSON: {exc}") from None


def _named(i: int, exc: Exception) -> Exception:
    """The /v1/rank error of auction ``i`` (i < 0: of the batch itself), its message prefixed with
    the auction's position; any other exception as it is (a 500)."""
    where = f"auctions[{i}]: " if i >= 0 else ""
    error = api_error(exc)
    if error is None:
        return exc
    return ApiError(error.status, error.code, f"{where}{error.message}", error.headers, **error.extra)


def answer(snap, body: bytes, settings) -> bytes:
    """The batch reply for ``body`` (raises ApiError naming the auction at fault)."""
    bounds.prescan(body, settings.max_auctions, "auctions", "too_many_auctions", "auctions")
    req = _decode(body)
    if len(req.auctions) > settings.max_auctions:
        raise ApiError(422, "too_many_auctions",
                       f"auctions: {len(req.auctions)} exceed the limit of {settings.max_auctions}")
    left = settings.max_candidates
    out = []
    for i, raw in enumerate(req.auctions):
        try:
            a = pipeline.answer(snap, bytes(raw), left, None, settings.fastpath, settings.max_top_k,
                                settings.max_explain)
        except ApiError as exc:
            if exc.code == "too_many_candidates":
                raise ApiError(422, "too_many_candidates",
                               f"auctions[{i}]: the batch's ads exceed the limit of {settings.max_candidates} "
                               "candidates in all") from None
            raise _named(i, exc) from None
        except Exception as exc:  # noqa: BLE001 - named, then answered as /v1/rank would
            raise _named(i, exc) from None
        left -= a.n_returned if a.mode == "all" else a.n_candidates
        if left < 0:
            raise ApiError(422, "too_many_candidates", f"auctions[{i}]: the batch's ads exceed the limit of "
                           f"{settings.max_candidates} candidates in all")
        observe_rank(a.model, a.mode, a.seconds, a.n_candidates, a.version)
        out.append(a.body)
    return b'{"results":[' + b",".join(out) + b"]}"


@router.post(BATCH)
async def rank_batch(request: Request) -> Response:
    """Admitted like /v1/rank: counted among the ranking requests in flight (catalog writes wait
    for it, service/state.py) and under the same in-flight limit."""
    svc = request.app.state.svc
    s = svc.settings
    try:
        with svc.ranking():
            check_body_headers(request.headers.get("content-type"), request.headers.get("content-encoding"), False)
            body = await read_body(request, s.max_body_bytes)
            with svc.scoring():
                return Response(answer(svc.state.snapshot, body, s), media_type=JSON)
    except Exception as exc:  # noqa: BLE001 - every failure is a JSON error reply
        named = _named(-1, exc) if not isinstance(exc, ApiError) else exc
        if isinstance(named, ApiError):
            return named.response()
        log.exception("internal error while ranking a batch")
        return ApiError(500, "internal_error", f"internal error: {type(exc).__name__}").response()
