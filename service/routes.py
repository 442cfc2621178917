"""HTTP routes: /v1/rank, /v1/models, reload, state, health and metrics.  Wiring only: the work is
in the pipeline (service/pipeline.py), the serving state (service/state.py) and metrics.

The rank handler reads the raw body, takes the current serving snapshot *once*, and runs the
pipeline on the event loop (the request is CPU-bound; a thread hop would add latency and GIL
hand-offs).  Every expected failure is an ``ApiError`` -> JSON ``{"error": code, "message": ...}``;
bad input is 4xx and never a 500.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from time import perf_counter

from fastapi import APIRouter, Request, Response
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect

from adrank.core.preprocess import EncodeError
from service import fastpath, metrics, pipeline, protocol, schemas, shadow, trace
from service.admin import check_body_headers, check_token, confine
from service.catalog import metrics as catalog_metrics
from service.catalog.store import CatalogError
from service.errors import JSON, ApiError
from service.models import ModelLoadError, SchemaChanged, UnknownModel
from service.replog import LogError
from service.settings import Settings
from service.state import ReloadBusy, ServingState, VersionInUse
from service.traffic import TrafficError, UnknownVersion

log = logging.getLogger("adrank.routes")
router = APIRouter()
admin_router = APIRouter()
RANK = "/v1/rank"
RELOAD = "/v1/models/{name}/reload"
VERSION = "/v1/models/{name}/versions/{version}"
TRAFFIC = "/v1/models/{name}/traffic"
__all__ = ["ApiError", "ServiceState", "router", "admin_router", "rank_asgi", "is_rank"]


@dataclass
class ServiceState:
    settings: Settings
    state: ServingState
    inflight: int = 0  # /v1/rank requests admitted (body read) and not yet answered (this worker)
    pending: int = 0  # /v1/rank requests between their arrival in the app and their reply
    idle: threading.Event = field(default_factory=threading.Event)  # set while pending == 0
    background: set = field(default_factory=set)  # tasks kept referenced until done

    @contextmanager
    def ranking(self):
        """A ranking request (/v1/rank, a batch) from its arrival to its reply: pending, so catalog
        writes wait (service/state.py) until none is; 503 + Retry-After while not ready (during
        a SIGTERM drain requests are still answered: only readiness is off)."""
        self.pending += 1
        if self.pending == 1:
            self.idle.clear()
        try:
            if not self.state.ready:
                raise _unavailable(self, "not_ready", "models are still loading")
            yield
        finally:
            self.pending -= 1
            if not self.pending:
                self.idle.set()

    @contextmanager
    def scoring(self):
        """A ranking request being scored, under the in-flight limit (503 + Retry-After above)."""
        if self.inflight >= self.settings.max_inflight:
            raise _unavailable(self, "overloaded", f"{self.settings.max_inflight} requests already in flight")
        self.inflight += 1
        try:
            yield
        finally:
            self.inflight -= 1


def _unavailable(svc: ServiceState, code: str, message: str) -> ApiError:
    return ApiError(503, code, message, headers={"Retry-After": str(svc.settings.retry_after)})


async def in_daemon_thread(fn, *args):
    """``await fn(*args)`` run in a daemon thread (a load stuck in the kernel never holds shut-down)."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def settle(value, error):
        if not fut.done():
            fut.set_exception(error) if error is not None else fut.set_result(value)

    def run():
        try:
            value, error = fn(*args), None
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting request
            value, error = None, exc
        try:
            loop.call_soon_threadsafe(settle, value, error)
        except RuntimeError:  # the loop is gone (shut-down)
            pass

    threading.Thread(target=run, name="adrank-admin", daemon=True).start()
    return await fut


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
@functools.cache
def _children(model: str, mode: str, version: str) -> tuple:
    """The metric children one ranked request updates (``labels()`` costs a lock and a dict
    lookup each; the children of a label set never change; ``version`` is a loaded version's)."""
    return (metrics.INFERENCE_DURATION.labels(model), metrics.REQUEST_CANDIDATES.labels(model),
            catalog_metrics.SCORING.labels(model, mode), metrics.VERSION_REQUESTS.labels(model, version),
            metrics.VERSION_DURATION.labels(model, version))


def observe_rank(model: str, mode: str, seconds: float, n_ads: int, version: str) -> None:
    """A ranked request (or a batch's auction) in the scoring metrics, its version's included."""
    inference, candidates, scoring, v_count, v_duration = _children(model, mode, version)
    scoring.observe(seconds)
    inference.observe(seconds)
    candidates.observe(n_ads)
    v_count.inc()
    v_duration.observe(seconds)


@functools.cache
def _request_children(model: str, status: int) -> tuple:
    return metrics.REQUESTS.labels(RANK, model, str(status)), metrics.REQUEST_DURATION.labels(RANK, model)


def _label(svc: ServiceState, body: bytes | None) -> str:
    """The model a request refused before parsing is counted under: the one its body names if it
    is served, the default model if it names none, else ``unknown`` (a bounded label set)."""
    snap = svc.state.snapshot if svc.state.ready else None
    if snap is None or body is None:
        return metrics.UNKNOWN_MODEL
    named = fastpath.guess_model(body)
    if named is None and b'"model"' not in body[:512]:
        return snap.default
    return named if named in snap.models else metrics.UNKNOWN_MODEL


@dataclass
class RankExchange:
    """One /v1/rank request's trace: what the access line and the metrics say about it."""

    rid: str
    t0: float
    complete: float = 0.0  # when the body was complete (the deadline counts from here)
    queued: float = 0.0
    model: str = ""
    version: str = ""
    candidates: int = 0
    status: int = 200
    error: str = ""


async def answer_rank(svc: ServiceState, read, ex: RankExchange, content_type: str | None = None,
                      content_encoding: str | None = None, stamped=None) -> Response:
    """One /v1/rank exchange; ``read(limit)`` awaits the raw body.  Admission happens once the body
    is complete: a request is shed (503 + Retry-After) when it waited longer than the queue budget
    between its last byte (``stamped()``, the protocol's time, else now) and the start of its
    scoring.  Every failure is a JSON error reply (never an exception); the request is counted,
    timed and logged."""
    s = svc.settings
    body = None
    labels = [""]
    try:
        with svc.ranking():
            check_body_headers(content_type, content_encoding, body_required=False)
            body = await read(s.max_body_bytes)
            ex.complete = (stamped() if stamped is not None else None) or perf_counter()
            await asyncio.sleep(0)  # requests complete at the same time queue here, in arrival order
            ex.queued = perf_counter() - ex.complete
            if ex.queued > s.queue_budget:
                metrics.SHED.inc()
                raise _unavailable(svc, "overloaded", f"the request waited {ex.queued * 1e3:.1f} ms for scoring, "
                                   f"over the budget of {s.queue_budget * 1e3:.1f} ms")
            metrics.QUEUE_WAIT.observe(ex.queued)
            with svc.scoring():
                out = pipeline.answer(svc.state.snapshot, body, s.max_candidates, labels, s.fastpath, s.max_top_k,
                                      s.max_explain)
        observe_rank(out.model, out.mode, out.seconds, out.n_candidates, out.version)
        ex.model, ex.version, ex.candidates = out.model, out.version, out.n_candidates
        # a shadow job is queued once the reply has been sent (Starlette runs it after the body)
        response = Response(out.body, media_type=JSON, headers={"x-request-id": ex.rid},
                            background=None if out.shadow is None else BackgroundTask(_submit, out.shadow))
    except Exception as exc:  # noqa: BLE001 - every failure becomes a JSON error reply
        response = _error_response(exc)
        response.headers["x-request-id"] = ex.rid
        ex.status = response.status_code
        ex.error = getattr(exc, "code", "") or type(exc).__name__
        ex.model = labels[0] or _label(svc, body)
    count, duration = _request_children(ex.model, ex.status)
    count.inc()
    seconds = perf_counter() - ex.t0
    duration.observe(seconds)
    trace.log_access(ex.rid, "POST", RANK, ex.status, seconds, ex.model, ex.version, ex.candidates, ex.queued,
                     ex.error)
    return response


async def _submit(job) -> None:
    """Queue a shadow job on the event loop (a coroutine: Starlette would run a plain function
    through its thread pool, a thread hop per shadowed request)."""
    shadow.submit(job)


async def rank(request: Request) -> Response:
    """POST /v1/rank as a plain Starlette route (the app normally answers it earlier, in
    :func:`rank_asgi`; this route serves apps built without it)."""
    h = request.headers
    rid = trace.request_id(h["x-request-id"].encode("latin-1") if "x-request-id" in h else None)
    return await answer_rank(request.app.state.svc, lambda limit: read_body(request, limit),
                             RankExchange(rid, perf_counter()), h.get("content-type"), h.get("content-encoding"))


def is_rank(scope) -> bool:
    """``scope`` is a ``POST /v1/rank`` HTTP request."""
    return scope["type"] == "http" and scope["path"] == RANK and scope["method"] == "POST"


async def rank_asgi(state, scope, receive, send) -> None:
    """``POST /v1/rank`` answered as bare ASGI (``app.state`` = ``state``), before FastAPI's
    telemetry check, Starlette's middleware stack and the router (service/app.py): together they
    cost ~45 us a request, a tenth of a 100-ad request's time in the server.  ``answer_rank``
    turns every failure into a JSON reply itself."""
    t0 = perf_counter()
    declared = content_type = encoding = given_id = None
    for k, v in scope["headers"]:
        if k == b"content-length":
            declared = v.decode("latin-1")
        elif k == b"content-type":
            content_type = v.decode("latin-1")
        elif k == b"content-encoding":
            encoding = v.decode("latin-1")
        elif k == b"x-request-id":
            given_id = v

    async def chunks():
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            yield message.get("body", b"")
            if not message.get("more_body", False):
                return

    response = await answer_rank(state.svc, lambda limit: _read_limited(declared, chunks(), limit),
                                 RankExchange(trace.request_id(given_id), t0), content_type, encoding,
                                 lambda: scope.get(protocol.COMPLETE))
    await response(scope, receive, send)


router.add_route(RANK, rank, methods=["POST"])


def api_error(exc: Exception) -> ApiError | None:
    """The reply a ranking failure gets (None: an internal error, a bug)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, schemas.BadRequest):
        return ApiError(422, exc.code, str(exc))
    if isinstance(exc, UnknownModel):
        return ApiError(404, "unknown_model", str(exc))
    if isinstance(exc, UnknownVersion):
        return ApiError(404, "unknown_version", str(exc), model=exc.name, versions=exc.loaded)
    if isinstance(exc, ClientDisconnect):  # nobody to answer; counted as 499 (nginx's convention)
        return ApiError(499, "client_disconnected", "the client went away before sending its body")
    if isinstance(exc, EncodeError):
        return ApiError(422, getattr(exc, "code", "invalid_value"), str(exc), field=exc.field)
    return None


def _error_response(exc: Exception) -> Response:
    error = api_error(exc)
    if error is not None:
        return error.response()
    log.exception("internal error while ranking")
    return ApiError(500, "internal_error", f"internal error: {type(exc).__name__}").response()


# --- models, health, state, metrics ----------------------------------------------------------
@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    snap = request.app.state.svc.state.snapshot
    models = [{**{k: v for k, v in mv.info().items() if k != "path"}, "default": name == snap.default,
               "versions": _versions(snap, name),
               "traffic": snap.traffic[name].to_dict() if name in snap.traffic else None}
              for name, mv in snap.models.items()]  # file paths only for admins (/v1/state)
    return json_response({"default": snap.default, "worker": os.getpid(), "models": models})


def _versions(snap, name: str) -> list[schemas.VersionInfo]:
    """Every loaded version of ``name``: the current one first, then those kept beside it."""
    cur = snap.models[name]
    return [schemas.VersionInfo(version=v, current=mv is cur, loaded_at=round(mv.loaded_at, 3))
            for v, mv in snap.versions(name).items()]


@router.get("/livez")
async def livez() -> Response:
    return json_response({"status": "alive"})


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    svc: ServiceState = request.app.state.svc
    if svc.state.draining:
        return _unavailable(svc, "draining", "shutting down: finishing the requests in flight").response()
    if not svc.state.ready:
        return _unavailable(svc, "not_ready", "models are still loading").response()
    snap = svc.state.snapshot
    return json_response({"status": "ready", "models": {n: mv.version for n, mv in snap.models.items()},
                          "position": snap.position})


@router.get("/metrics")
async def metrics_endpoint() -> Response:
    metrics.INFLIGHT.set(protocol.in_progress())
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)


# --- admin: hot reload, state ----------------------------------------------------------------
def check_admin(request: Request) -> None:
    """401 unless the request carries the admin token (service/admin.py: the policy)."""
    check_token(request.headers.get("authorization"), request.app.state.svc.settings.admin_token)


def _counted(route: str, name: str, svc: ServiceState, response: Response) -> Response:
    """``response`` of an admin call on model ``name``, counted (an unknown name under one label)."""
    known = name if name in svc.state.snapshot.models else metrics.UNKNOWN_MODEL
    metrics.REQUESTS.labels(route, known, str(response.status_code)).inc()
    return response


async def read_json_body(request: Request, limit: int, required: bool) -> bytes:
    """The body of an admin request: 415 unless JSON (an empty body passes when not ``required``)."""
    body = await read_body(request, limit)
    check_body_headers(request.headers.get("content-type"), request.headers.get("content-encoding"),
                       body_required=required or bool(body.strip()))
    return body


@admin_router.post(RELOAD)
async def reload_model(name: str, request: Request) -> Response:
    """Load + verify + warm off the event loop, log, then swap; 422/409 keep the old version."""
    svc: ServiceState = request.app.state.svc
    try:
        check_admin(request)
        req = schemas.decode_reload(await read_json_body(request, 64 * 1024, required=False))
        svc.state.snapshot.model(name)  # 404 for an unknown model before any path is looked at
        path = str(confine(req.path, svc.settings.model_dir)) if req.path is not None else None
        new, old = await in_daemon_thread(svc.state.reload, name, path, req.force, req.keep)
        snap = svc.state.snapshot
        response = json_response({"model": name, "version": new.version, "previous_version": old.version,
                                  "current_version": snap.models[name].version, "kept": req.keep,
                                  "versions": list(snap.versions(name)), "path": str(new.path),
                                  "position": snap.position})
    except Exception as exc:  # noqa: BLE001 - every failure is a JSON reply naming it
        response = _reload_error(exc, name, svc)
    return _counted(RELOAD, name, svc, response)


def _reload_error(exc: Exception, name: str, svc: ServiceState) -> Response:
    cur = svc.state.snapshot.models.get(name)
    version = cur.version if cur is not None else None
    if isinstance(exc, SchemaChanged):
        return ApiError(409, exc.code, exc.detail, model=name, version=version).response()
    if isinstance(exc, ModelLoadError):
        return ApiError(422, exc.code, exc.detail, model=name, version=version).response()
    if isinstance(exc, ReloadBusy):
        return ApiError(409, "reload_in_progress", str(exc), model=name, version=version).response()
    if isinstance(exc, CatalogError):
        return ApiError(422, "invalid_ad", f"the new version cannot encode a catalog ad: {exc}", model=name,
                        version=version).response()
    if isinstance(exc, LogError):
        return _unavailable(svc, "log_unavailable", f"the reload was not recorded: {exc}").response()
    return _error_response(exc)


@admin_router.get("/v1/state")
async def state_endpoint(request: Request) -> Response:
    """Where this process stands: log engine and position, snapshot age, catalog, skipped entries."""
    svc: ServiceState = request.app.state.svc
    try:
        check_admin(request)
    except ApiError as exc:
        return exc.response()
    return json_response({"worker": os.getpid(), **await asyncio.to_thread(svc.state.describe)})


# --- admin: versions and traffic (service/traffic.py) -----------------------------------------
@admin_router.delete(VERSION)
async def retire_version(name: str, version: str, request: Request) -> Response:
    """Unload a version kept beside the current one (logged: every worker and replica follows)."""
    svc: ServiceState = request.app.state.svc
    try:
        check_admin(request)
        snap = await asyncio.to_thread(svc.state.retire, name, version)
        response = json_response({"model": name, "retired": version, "versions": list(snap.versions(name)),
                                  "position": snap.position})
    except Exception as exc:  # noqa: BLE001 - every failure is a JSON reply naming it
        response = _traffic_error(exc, svc)
    return _counted(VERSION, name, svc, response)


@admin_router.get(TRAFFIC)
async def get_traffic(name: str, request: Request) -> Response:
    svc: ServiceState = request.app.state.svc
    try:
        check_admin(request)
        return json_response(_traffic_reply(svc.state.snapshot, name))
    except Exception as exc:  # noqa: BLE001
        return _traffic_error(exc, svc)


@admin_router.put(TRAFFIC)
async def put_traffic(name: str, request: Request) -> Response:
    """Set (``{}``: clear) the split and shadow of ``name``; logged, so it survives restarts and
    every worker and replica routes alike."""
    svc: ServiceState = request.app.state.svc
    try:
        check_admin(request)
        req = schemas.decode_traffic(await read_json_body(request, 64 * 1024, required=True))
        snap = await asyncio.to_thread(svc.state.set_traffic, name, req.to_dict())
        response = json_response(_traffic_reply(snap, name))
    except Exception as exc:  # noqa: BLE001
        response = _traffic_error(exc, svc)
    return _counted(TRAFFIC, name, svc, response)


def _traffic_reply(snap, name: str) -> schemas.TrafficReply:
    snap.model(name)
    split = snap.traffic.get(name)
    traffic = None if split is None else schemas.TrafficSetting(**split.to_dict())
    return schemas.TrafficReply(model=name, current_version=snap.models[name].version,
                                versions=_versions(snap, name), traffic=traffic, position=snap.position)


def _traffic_error(exc: Exception, svc: ServiceState) -> Response:
    if isinstance(exc, TrafficError):
        return ApiError(422, "invalid_traffic", str(exc)).response()
    if isinstance(exc, VersionInUse):
        return ApiError(409, "version_in_use", str(exc)).response()
    if isinstance(exc, LogError):
        return _unavailable(svc, "log_unavailable", f"the change was not recorded: {exc}").response()
    return _error_response(exc)
