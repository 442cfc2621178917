"""Catalog metrics (DESIGN §6 conventions: seconds, 0.1 ms buckets, never labelled by ad).

    adrank_catalog_ads{model}                        ads in the catalog snapshot serving ``model``
    adrank_catalog_version{model}                    its version (bumped by every write / reload)
    adrank_catalog_updates_total{op}                 upsert | delete | reload | load operations
    adrank_catalog_updated_ads_total{op}             ads those operations touched
    adrank_catalog_scoring_duration_seconds{model,mode}
        scoring time of a /v1/rank request by mode: ``catalog`` (ads by id), ``all`` (whole-catalog
        top-k), ``mixed`` (ids + inline ads), ``inline`` (every ad with its features: Ranker.rank)

Gauges use the ``max`` multiprocess mode; note that each uvicorn worker holds its own catalog.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

BUCKETS = (0.00001, 0.00003, 0.0001, 0.0002, 0.0003, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003,
           0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

ADS = Gauge("adrank_catalog_ads", "Ads in the catalog.", ["model"], multiprocess_mode="max")
VERSION = Gauge("adrank_catalog_version", "Catalog snapshot version.", ["model"], multiprocess_mode="max")
UPDATES = Counter("adrank_catalog_updates", "Catalog write operations.", ["op"])
UPDATED_ADS = Counter("adrank_catalog_updated_ads", "Ads touched by catalog writes.", ["op"])
SCORING = Histogram("adrank_catalog_scoring_duration_seconds",
                    "Scoring time of catalog-backed /v1/rank requests.", ["model", "mode"], buckets=BUCKETS)


def published(snap, op: str, n_ads: int) -> None:
    """Record a write that produced snapshot ``snap``."""
    UPDATES.labels(op).inc()
    UPDATED_ADS.labels(op).inc(n_ads)
    for model in snap.parts:
        ADS.labels(model).set(len(snap))
        VERSION.labels(model).set(snap.version)


def scored(model: str, ranked) -> None:
    SCORING.labels(model, ranked.mode).observe(ranked.seconds)
