"""How the app hosts the catalog (called from service/app.py; no logic of its own).

    catalog = Catalog()
    ModelRegistry(..., on_swap=chain(metrics.model_swapped, on_swap(catalog)))  # reloads recompute
    install(app, catalog, settings.run_dir)      # create_app: app.state.catalog, router, journal
    follower = load(app, registry.all(), path)   # lifespan, after the models loaded, before gc.freeze
    follower.stop()                              # lifespan shut-down (when not None)

The catalog exists even without a start-up file, so PUT /v1/ads works on any server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from service.catalog import metrics
from service.catalog.journal import Follower, Journal
from service.catalog.routes import router
from service.catalog.store import Catalog, Model

log = logging.getLogger("adrank.catalog")


def install(app, catalog: Catalog, run_dir: str | Path | None = None) -> Catalog:
    """``app.state.catalog`` + the /v1/ads router; with a run directory, writes go through the
    journal shared by the workers (journal.py)."""
    app.state.catalog = catalog
    app.state.catalog_journal = catalog.journal = Journal(run_dir, catalog) if run_dir else None
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


def load(app, rankers: Iterable, path: str | Path | None) -> Follower | None:
    """Register the served models, upsert the start-up JSONL file (if any), replay the workers'
    journal; returns the thread following the journal (``.stop()`` it at shut-down) or None."""
    catalog, journal = app.state.catalog, app.state.catalog_journal
    for r in rankers:
        if r.name not in catalog.snapshot.parts:
            catalog.set_model(Model.from_ranker(r))
    if path:
        log.info("catalog: loading ads from %s and computing their per-model parts", path)
        snap = catalog.load_jsonl(path, progress=True)
        log.info("catalog: %d ads loaded from %s", len(snap), path)
    if journal is None:
        metrics.published(catalog.snapshot, "load", len(catalog.snapshot))
        return None
    journal.sync()
    metrics.published(catalog.snapshot, "load", len(catalog.snapshot))
    return Follower(journal)
