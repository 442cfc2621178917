"""Catalog metrics (DESIGN §6 conventions: seconds, 0.1 ms buckets, never labelled by ad).

    adrank_catalog_ads{model,version}                ads in the catalog, per served model version
    adrank_catalog_version{model}                    the catalog view's version (bumped by every change)
    adrank_catalog_updates_total{op,result}          upsert | delete | reload | load, ok | refused
    adrank_catalog_updated_ads_total{op}             ads those operations touched
    adrank_catalog_merges_total                      background merges of the delta into the base
    adrank_catalog_scoring_duration_seconds{model,mode}
        scoring time of a /v1/rank request by mode: ``catalog`` (ads by id), ``all`` (whole-catalog
        top-k), ``mixed`` (ids + inline ads), ``inline`` (every ad with its features)

Each process (uvicorn worker, replica) holds its own copy of the catalog, built from the same
replication log; ``adrank_catalog_ads`` keeps a ``pid`` label per live worker.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

BUCKETS = (0.00001, 0.00003, 0.0001, 0.0002, 0.0003, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003,
           0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

ADS = Gauge("adrank_catalog_ads", "Ads in the catalog, per served model version.", ["model", "version"],
            multiprocess_mode="liveall")
VERSION = Gauge("adrank_catalog_version", "Catalog view version (bumped by every write / reload).", ["model"],
                multiprocess_mode="max")
UPDATES = Counter("adrank_catalog_updates", "Catalog write operations by result (ok | refused).", ["op", "result"])
UPDATED_ADS = Counter("adrank_catalog_updated_ads", "Ads touched by catalog writes.", ["op"])
MERGES = Counter("adrank_catalog_merges", "Background merges of the delta segment into the base.")
SCORING = Histogram("adrank_catalog_scoring_duration_seconds",
                    "Scoring time of /v1/rank requests by mode.", ["model", "mode"], buckets=BUCKETS)


def published(snap, op: str | None = None, n_ads: int = 0) -> None:
    """Record the catalog of a newly published serving snapshot (and the write that made it)."""
    if op is not None:
        UPDATES.labels(op, "ok").inc()
        UPDATED_ADS.labels(op).inc(n_ads)
    view = snap.catalog
    for name, mv in snap.models.items():
        ADS.labels(name, mv.version).set(view.size)
        VERSION.labels(name).set(view.version)


def refused(op: str) -> None:
    UPDATES.labels(op, "refused").inc()


def retired(name: str, version: str) -> None:
    """A replaced model version reads 0 (like adrank_model_info; multiprocess files cannot drop a series)."""
    ADS.labels(name, version).set(0)
