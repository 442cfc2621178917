"""The FastAPI application: composition and the start-up/shut-down lifespan, nothing else.

Start-up (lifespan, before the server accepts a request and before /readyz says ready): open the
replication log, rebuild the serving state from it and reconcile the start-up arguments
(service/state.py: load + verify every artifact, compile and warm its kernels from Numba's
on-disk cache, build the catalog), publish the first snapshot, then ``gc.freeze()`` so the
collector stops walking the long-lived heap during requests (DESIGN §7).  While serving, the
state follows the log in a background thread; SIGHUP re-reads every model.

Shut-down: SIGTERM first turns /readyz to 503 (``draining``) and keeps serving for
``ADRANK_DRAIN_SECONDS`` (so a load balancer stops sending new requests), then hands the signal to
uvicorn, which stops accepting connections, lets the requests in flight finish and exits.

``create_app()`` with no arguments reads ``Settings.from_env()``: that is how uvicorn workers
build it (``uvicorn service.app:create_app --factory``).  This module never imports torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import Callable
from time import perf_counter

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from service import bounds, metrics, openapi, protocol, trace
from service.batch import router as batch_router
from service.catalog.routes import router as catalog_router
from service.errors import ApiError
from service.routes import ServiceState, admin_router, is_rank, rank_asgi, router
from service.settings import Settings
from service.state import ServingState

log = logging.getLogger("adrank.app")


async def _reload_all(svc: ServiceState) -> None:
    log.info("SIGHUP: reloading every model")
    try:
        await asyncio.to_thread(svc.state.reload_all)
    except Exception:  # noqa: BLE001 - a failed reload never takes the server down
        log.exception("SIGHUP reload failed")


def _on_sighup(svc: ServiceState) -> None:
    svc.background.add(task := asyncio.get_running_loop().create_task(_reload_all(svc)))
    task.add_done_callback(svc.background.discard)


def _drain_on_sigterm(svc: ServiceState, loop: asyncio.AbstractEventLoop):
    """Wrap the SIGTERM handler uvicorn installed: readiness off at once, uvicorn's shut-down
    after ``drain_seconds``.  Returns a function restoring the previous handler."""
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous):  # not under uvicorn's handler (tests, an embedding server)
        return lambda: None

    def handler(sig, frame):
        if not svc.state.draining:
            svc.state.draining = True
            log.info("SIGTERM: draining (readyz 503) for %.1f s, then finishing the requests in flight",
                     svc.settings.drain_seconds)
        loop.call_soon_threadsafe(loop.call_later, svc.settings.drain_seconds, previous, sig, None)

    signal.signal(signal.SIGTERM, handler)

    def restore():
        if signal.getsignal(signal.SIGTERM) is handler:
            signal.signal(signal.SIGTERM, previous)

    return restore


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    svc: ServiceState = app.state.svc
    # the event loop (ranking) and the threads that prepare writes and reloads share the GIL: a
    # shorter switch interval bounds how long either waits for the other (Python's default is 5 ms)
    sys.setswitchinterval(svc.settings.switch_interval)
    trace.configure(svc.settings.access_log)
    bounds.warm()
    snap = await asyncio.to_thread(svc.state.start)
    log.info("ready: %s", ", ".join(f"{name}={mv.version}" for name, mv in snap.models.items()))
    if svc.settings.gc_freeze:
        gc.collect()
        gc.freeze()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGHUP, _on_sighup, svc)
    restore = lambda: None  # noqa: E731
    with contextlib.suppress(ValueError):  # signal handlers only in the main thread
        restore = _drain_on_sigterm(svc, loop)
    metrics.process_started()
    refresher = loop.create_task(_refresh_process_metrics())
    try:
        yield
    finally:
        refresher.cancel()
        svc.state.ready = False
        restore()
        await asyncio.to_thread(svc.state.stop)
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGHUP)
        metrics.worker_exited()


async def _refresh_process_metrics() -> None:
    while True:
        await asyncio.sleep(metrics.PROCESS_INTERVAL)
        metrics.refresh_process()
        metrics.INFLIGHT.set(protocol.in_progress())


def _log_to_stderr() -> None:
    """adrank.* messages (ready, reloads, refusals) beside uvicorn's, unless logging is configured."""
    root = logging.getLogger("adrank")
    if not root.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)


class _App(FastAPI):
    """FastAPI answering ``POST /v1/rank`` itself, first (routes.rank_asgi): before FastAPI's
    per-request telemetry check, Starlette's middleware stack and the router.  Every other
    request takes the usual path, with its request id echoed and an access line."""

    async def __call__(self, scope, receive, send) -> None:
        if is_rank(scope):
            scope["app"] = self
            await rank_asgi(self.state, scope, receive, send)
        elif scope["type"] == "http":
            await self._traced(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def _traced(self, scope, receive, send) -> None:
        t0 = perf_counter()
        rid = trace.request_id(next((v for k, v in scope["headers"] if k == b"x-request-id"), None))
        status = [500]

        async def send_traced(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(message)

        try:
            await super().__call__(scope, receive, send_traced)
        finally:
            trace.log_access(rid, scope["method"], scope["path"], status[0], perf_counter() - t0)


def _envelope(status: int, code: str, message: str, headers: dict | None = None):
    return ApiError(status, code, message, headers=headers).response()


_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
          413: "body_too_large", 415: "unsupported_media_type", 422: "invalid_request"}


def _install_error_envelope(app: FastAPI) -> None:
    """Framework errors (unknown route, wrong method, ...) in the service's ``{"error", "message"}``."""

    async def http_error(request: Request, exc: HTTPException):
        code = _CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return _envelope(exc.status_code, code, message, headers=dict(exc.headers or {}))

    async def validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _envelope(422, "invalid_request", f"{where}: {first.get('msg', 'invalid')}")

    async def internal_error(request: Request, exc: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return _envelope(500, "internal_error", f"internal error: {type(exc).__name__}")

    app.add_exception_handler(HTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, internal_error)


def create_app(settings: Settings | None = None, loader: Callable | None = None) -> FastAPI:
    """Build the app; ``loader(path, name) -> Ranker`` is swappable for tests."""
    _log_to_stderr()
    settings = settings or Settings.from_env()
    if not settings.models:
        raise ValueError("no models configured: pass artifacts to `adrank serve` or set ADRANK_MODELS")
    app = _App(title="adrank", version="1", lifespan=lifespan, docs_url="/docs" if settings.docs else None,
               redoc_url=None, redirect_slashes=False)
    svc = app.state.svc = ServiceState(settings=settings, state=ServingState(settings, loader=loader))
    svc.idle.set()
    svc.state.idle = svc.idle  # catalog writes let ranking requests run first
    app.include_router(router)
    app.include_router(batch_router)
    if settings.admin_enabled:  # every admin route, the catalog's included; --no-admin: none exists
        app.include_router(catalog_router)
        app.include_router(admin_router)
    spec = openapi.document(settings.admin_enabled)
    app.openapi = lambda: spec  # type: ignore[method-assign]
    _install_error_envelope(app)
    return app
