"""HTTP routes: /v1/rank, /v1/models, reload, health and metrics.  Wiring only: the work is
in the Ranker (scoring), schemas (parsing), models (registry) and metrics modules.

The rank handler reads the raw body, parses it with msgspec, ranks *inline* on the event loop
(the request is CPU-bound; a thread hop would add latency and GIL hand-offs) and writes the
response with msgspec.  Every expected failure is an ``ApiError`` -> JSON
``{"error": code, "message": ...}``; bad input is 4xx and never a 500.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import hmac
import logging
import os
from dataclasses import dataclass, field
from time import perf_counter

from fastapi import APIRouter, Request, Response
from starlette.requests import ClientDisconnect

from adrank.core.preprocess import EncodeError
from service import fastpath, metrics, schemas
from service.catalog import metrics as catalog_metrics
from service.catalog.routes import resolve, uses_catalog
from service.models import ModelLoadError, ModelRegistry, UnknownModel
from service.settings import Settings

log = logging.getLogger("adrank.routes")
router = APIRouter()
admin_router = APIRouter()
JSON = "application/json"
RANK = "/v1/rank"
RELOAD = "/v1/models/{name}/reload"


@dataclass
class ServiceState:
    settings: Settings
    registry: ModelRegistry
    inflight: int = 0  # /v1/rank requests admitted and not yet answered (this worker)
    background: set = field(default_factory=set)  # tasks kept referenced until done


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None, **extra):
        super().__init__(message)
        self.status, self.code, self.message, self.headers, self.extra = status, code, message, headers, extra

    def response(self) -> Response:
        body = schemas.encode({"error": self.code, "message": self.message, **self.extra})
        return Response(body, status_code=self.status, headers=self.headers, media_type=JSON)


def _unavailable(svc: ServiceState, code: str, message: str) -> ApiError:
    return ApiError(503, code, message, headers={"Retry-After": str(svc.settings.retry_after)})


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing (413) anything over ``limit`` bytes before reading all of it."""
    return await _read_limited(request.headers.get("content-length"), request.stream(), limit)


async def _read_limited(declared: str | None, chunks, limit: int) -> bytes:
    """Join the body ``chunks`` (an async iterator of bytes), refusing (413) a declared
    content-length or a running size over ``limit``."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "body_too_large", f"request body of {declared} bytes exceeds the limit of {limit}")
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body_too_large", f"request body exceeds the limit of {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


def json_response(obj, status: int = 200, headers: dict | None = None) -> Response:
    return Response(schemas.encode(obj), status_code=status, headers=headers, media_type=JSON)


# --- ranking -------------------------------------------------------------------------------
async def _rank(svc: ServiceState, catalog, read, labels: list[str]) -> bytes:
    """Read -> parse -> pick the model -> rank -> serialise; ``labels[0]`` learns the model."""
    s = svc.settings
    await asyncio.sleep(0)  # let requests already queued on this loop register as in flight
    body = await read(s.max_body_bytes)
    if s.fastpath:  # the common shapes: body bytes -> ids -> response, compiled
        t0 = perf_counter()  # (parse and encode are one pass there: the inference time includes it)
        fast = fastpath.rank_body(svc.registry, body, s.max_candidates, catalog)
        if fast is not None:  # None: anything else, errors included, takes the generic path below
            ranker, response, n_ads, mode = fast
            labels[0] = ranker.name
            _observe_rank(ranker.name, mode, perf_counter() - t0, n_ads)
            return response
    req = schemas.decode_rank(body)
    ranker = svc.registry.get(req.model)
    labels[0] = ranker.name
    if req.ads is None and not req.all_ads:
        raise ApiError(422, "invalid_request", "Object missing required field `ads` (or give \"all_ads\": true)")
    n_ads = len(req.ads) if req.ads is not None else 0
    if n_ads > s.max_candidates:
        raise ApiError(422, "too_many_candidates",
                       f"ads: {n_ads} candidates exceed the limit of {s.max_candidates}")
    t0 = perf_counter()
    if uses_catalog(req.all_ads, req.ads):  # ads by id alone / all_ads: service/catalog
        ranked = resolve(catalog, ranker.name, req.context, req.ads, req.all_ads, req.top_k)
        metrics.INFERENCE_DURATION.labels(ranker.name).observe(perf_counter() - t0)
        metrics.REQUEST_CANDIDATES.labels(ranker.name).observe(n_ads or len(ranked))
    else:
        ranked = ranker.rank(req.context, req.ads, req.top_k)
        _observe_rank(ranker.name, "inline", perf_counter() - t0, n_ads)
    return schemas.encode_ranking(ranker.name, ranker.version, ranked)


@functools.cache
def _children(model: str, mode: str) -> tuple:
    """The metric children one ranked request updates (``labels()`` costs a lock and a dict
    lookup each; the children of a label set never change)."""
    return (metrics.INFERENCE_DURATION.labels(model), metrics.REQUEST_CANDIDATES.labels(model),
            catalog_metrics.SCORING.labels(model, mode))


def _observe_rank(model: str, mode: str, seconds: float, n_ads: int) -> None:
    inference, candidates, scoring = _children(model, mode)
    scoring.observe(seconds)
    inference.observe(seconds)
    candidates.observe(n_ads)


@functools.cache
def _request_children(model: str, status: int) -> tuple:
    return metrics.REQUESTS.labels(RANK, model, str(status)), metrics.REQUEST_DURATION.labels(RANK, model)


async def answer_rank(svc: ServiceState, catalog, read) -> Response:
    """One /v1/rank exchange; ``read(limit)`` awaits the raw body.  Every failure is a JSON error
    reply (never an exception), and the request is counted and timed."""
    t0 = perf_counter()
    labels, status = [""], 200
    try:
        if not svc.registry.ready:
            raise _unavailable(svc, "not_ready", "models are still loading")
        if svc.inflight >= svc.settings.max_inflight:
            raise _unavailable(svc, "overloaded", f"{svc.settings.max_inflight} requests already in flight")
        svc.inflight += 1
        try:
            response = Response(await _rank(svc, catalog, read, labels), media_type=JSON)
        finally:
            svc.inflight -= 1
    except Exception as exc:  # noqa: BLE001 - every failure becomes a JSON error reply
        response = _error_response(exc)
        status = response.status_code
    count, duration = _request_children(labels[0], status)
    count.inc()
    duration.observe(perf_counter() - t0)
    return response


async def rank(request: Request) -> Response:
    """POST /v1/rank as a plain Starlette route (the app normally answers it earlier, in
    :func:`rank_asgi`; this route serves apps built without it)."""
    return await answer_rank(request.app.state.svc, getattr(request.app.state, "catalog", None),
                             lambda limit: read_body(request, limit))


def is_rank(scope) -> bool:
    """``scope`` is a ``POST /v1/rank`` HTTP request."""
    return scope["type"] == "http" and scope["path"] == RANK and scope["method"] == "POST"


async def rank_asgi(state, scope, receive, send) -> None:
    """``POST /v1/rank`` answered as bare ASGI (``app.state`` = ``state``), before FastAPI's
    telemetry check, Starlette's middleware stack and the router (service/app.py): together they
    cost ~45 us a request, a tenth of a 100-ad request's time in the server.  ``answer_rank``
    turns every failure into a JSON reply itself."""
    declared = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"content-length"), None)

    async def chunks():
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            yield message.get("body", b"")
            if not message.get("more_body", False):
                return

    response = await answer_rank(state.svc, getattr(state, "catalog", None),
                                 lambda limit: _read_limited(declared, chunks(), limit))
    await response(scope, receive, send)


router.add_route(RANK, rank, methods=["POST"])


def _error_response(exc: Exception) -> Response:
    if isinstance(exc, ApiError):
        return exc.response()
    if isinstance(exc, schemas.BadRequest):
        return ApiError(422, exc.code, str(exc)).response()
    if isinstance(exc, UnknownModel):
        return ApiError(404, "unknown_model", str(exc)).response()
    if isinstance(exc, ClientDisconnect):  # nobody to answer; counted as 499 (nginx's convention)
        return ApiError(499, "client_disconnected", "the client went away before sending its body").response()
    if isinstance(exc, EncodeError):
        return ApiError(422, getattr(exc, "code", "invalid_value"), str(exc), field=exc.field).response()
    log.exception("internal error while ranking")
    return ApiError(500, "internal_error", f"internal error: {type(exc).__name__}").response()


# --- models, health, metrics ----------------------------------------------------------------
@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    registry = request.app.state.svc.registry
    models = [{**r.info(), "default": r.name == registry.default} for r in registry.all()]
    return json_response({"default": registry.default, "worker": os.getpid(), "models": models})


@router.get("/livez")
async def livez() -> Response:
    return json_response({"status": "alive"})


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    svc: ServiceState = request.app.state.svc
    if not svc.registry.ready:
        return _unavailable(svc, "not_ready", "models are still loading").response()
    return json_response({"status": "ready", "models": {r.name: r.version for r in svc.registry.all()}})


@router.get("/metrics")
async def metrics_endpoint() -> Response:
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)


# --- admin: hot reload -----------------------------------------------------------------------
def check_admin(request: Request, token: str | None) -> None:
    if token is None:
        return
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        raise ApiError(401, "unauthorized", "admin endpoints need 'Authorization: Bearer <ADRANK_ADMIN_TOKEN>'",
                       headers={"WWW-Authenticate": "Bearer"})


@admin_router.post(RELOAD)
async def reload_model(name: str, request: Request) -> Response:
    """Load + verify + warm the new artifact off the event loop, then swap; 422 keeps the old."""
    svc: ServiceState = request.app.state.svc
    try:
        check_admin(request, svc.settings.admin_token)
        req = schemas.decode_reload(await read_body(request, 64 * 1024))
        old = svc.registry.get(name).version
        new = await asyncio.to_thread(svc.registry.reload, name, req.path)
        if svc.settings.gc_freeze:
            gc.freeze()  # the new model's long-lived objects join the frozen generation
        response = json_response({"model": name, "version": new.version, "previous_version": old,
                                  "path": str(svc.registry.path_of(name))})
    except ModelLoadError as exc:
        response = ApiError(422, exc.code, exc.detail, model=name, version=old).response()
    except Exception as exc:  # noqa: BLE001
        response = _error_response(exc)
    known = name if name in svc.registry.names() else ""
    metrics.REQUESTS.labels(RELOAD, known, str(response.status_code)).inc()
    return response
