"""The FastAPI application: composition and the start-up/shut-down lifespan, nothing else.

Start-up (lifespan, before the server accepts a request and before /readyz says ready):
load + verify every artifact, compile and warm its kernels (Numba's on-disk cache,
``NUMBA_CACHE_DIR``), publish model info, then ``gc.freeze()`` so the collector stops walking
the long-lived heap during requests (DESIGN §7).  While serving, a background task follows
reloads made by sibling workers (service.models) and SIGHUP re-reads every model.

``create_app()`` with no arguments reads ``Settings.from_env()``: that is how uvicorn workers
build it (``uvicorn service.app:create_app --factory``).  This module never imports torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import signal
from collections.abc import Callable

from fastapi import FastAPI

from service import metrics
from service.catalog import wiring as catalog_wiring
from service.catalog.store import Catalog
from service.models import ModelRegistry, load_ranker
from service.routes import ServiceState, admin_router, is_rank, rank_asgi, router
from service.settings import Settings

log = logging.getLogger("adrank.app")


async def _follow_reloads(svc: ServiceState) -> None:
    """Poll the shared reload state file; reload (off the loop) what sibling workers reloaded."""
    while True:
        await asyncio.sleep(svc.settings.reload_poll)
        try:
            if await asyncio.to_thread(svc.registry.sync_from_state) and svc.settings.gc_freeze:
                gc.freeze()
        except Exception:  # noqa: BLE001 - the watcher must survive anything
            log.exception("following reloads failed")


async def _reload_all(svc: ServiceState) -> None:
    """SIGHUP: with a run dir, ask every worker (the watcher does it); else reload here."""
    log.info("SIGHUP: reloading every model")
    try:
        await asyncio.to_thread(svc.registry.request_reload_all)
    except Exception:  # noqa: BLE001 - a failed reload never takes the server down
        log.exception("SIGHUP reload failed")
    if svc.settings.gc_freeze:
        gc.freeze()


def _on_sighup(svc: ServiceState) -> None:
    svc.background.add(task := asyncio.get_running_loop().create_task(_reload_all(svc)))
    task.add_done_callback(svc.background.discard)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    svc: ServiceState = app.state.svc
    await asyncio.to_thread(svc.registry.load_all)
    follower = await asyncio.to_thread(catalog_wiring.load, app, svc.registry.all(), svc.settings.catalog)
    if svc.settings.gc_freeze:
        gc.collect()
        gc.freeze()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGHUP, _on_sighup, svc)
    watcher = asyncio.create_task(_follow_reloads(svc)) if svc.settings.run_dir else None
    log.info("ready: %s", ", ".join(f"{r.name}={r.version}" for r in svc.registry.all()))
    try:
        yield
    finally:
        svc.registry.ready = False
        if watcher is not None:
            watcher.cancel()
        if follower is not None:
            follower.stop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGHUP)
        metrics.worker_exited()


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
    request takes the usual path."""

    async def __call__(self, scope, receive, send) -> None:
        if is_rank(scope):
            scope["app"] = self
            await rank_asgi(self.state, scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None, loader: Callable | None = None) -> FastAPI:
    """Build the app; ``loader(path, name) -> Ranker`` is swappable for tests (by default every
    model is loaded with the settings' kernel options)."""
    _log_to_stderr()
    settings = settings or Settings.from_env()
    if not settings.models:
        raise ValueError("no models configured: pass artifacts to `adrank serve` or set ADRANK_MODELS")
    catalog = Catalog()  # ads by id + per-ad precomputed parts, recomputed on every model swap
    loader = loader or functools.partial(load_ranker, **settings.scorer_options())
    registry = ModelRegistry(settings.models, loader=loader, run_dir=settings.run_dir,
                             on_swap=catalog_wiring.chain(metrics.model_swapped, catalog_wiring.on_swap(catalog)))
    app = _App(title="adrank", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.svc = ServiceState(settings=settings, registry=registry)
    app.include_router(router)
    catalog_wiring.install(app, catalog, settings.run_dir)
    if settings.admin_enabled:
        app.include_router(admin_router)
    return app
