"""How the app hosts the catalog (called from service/app.py; no logic of its own).

    catalog = Catalog()
    ModelRegistry(..., on_swap=chain(metrics.model_swapped, on_swap(catalog)))  # reloads recompute
    install(app, catalog)                        # create_app: app.state.catalog + the /v1/ads router
    load(catalog, registry.all(), path)          # lifespan, after the models loaded, before gc.freeze

The catalog exists even without a start-up file, so PUT /v1/ads works on any server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from service.catalog import metrics
from service.catalog.routes import router
from service.catalog.store import Catalog, Model

log = logging.getLogger("adrank.catalog")


def install(app, catalog: Catalog) -> Catalog:
    app.state.catalog = catalog
    app.include_router(router)
    return catalog


def on_swap(catalog: Catalog) -> Callable:
    """A registry ``on_swap(name, old, new)`` hook: (re)compute every ad's part for the new model."""

    def hook(name, old, new) -> None:
        snap = catalog.set_model(Model.from_ranker(new, name))
        if old is not None:
            metrics.published(snap, "reload", len(snap))
            log.info("catalog: %d ads recomputed for model %s (version %s)", len(snap), name, new.version)

    return hook


def chain(*hooks: Callable | None) -> Callable:
    """One hook calling each given hook in order."""
    live = [h for h in hooks if h is not None]

    def hook(*args) -> None:
        for h in live:
            h(*args)

    return hook


def load(catalog: Catalog, rankers: Iterable, path: str | Path | None) -> None:
    """Register the served models, then upsert the start-up JSONL file (if any)."""
    for r in rankers:
        if r.name not in catalog.snapshot.parts:
            catalog.set_model(Model.from_ranker(r))
    if path:
        snap = catalog.load_jsonl(path, progress=True)
        metrics.published(snap, "load", len(snap))
        log.info("catalog: %d ads loaded from %s", len(snap), path)
