"""Model kind -> scorer class, and the one way to build a scorer from an artifact.  Every kind of
the kinds table (adrank/core/kinds.py) has one (a test checks it)."""

from __future__ import annotations

from service.kernels.base import Scorer
from service.kernels.dplr import DPLRScorer
from service.kernels.fm import FMScorer
from service.kernels.fwfm import FwFMScorer
from service.kernels.lr import LRScorer
from service.kernels.pruned import PrunedScorer

SCORERS: dict[str, type[Scorer]] = {
    "lr": LRScorer,
    "fm": FMScorer,
    "fwfm": FwFMScorer,
    "pruned": PrunedScorer,
    "dplr": DPLRScorer,
}


def make_scorer(manifest: dict, arrays: dict, **options) -> Scorer:
    """The scorer for ``manifest["kind"]``; ``options`` (prefetch, prefetch_mode, prefetch_linear,
    parallel_min, threads, huge_pages: service/kernels/base.py) go to it."""
    kind = manifest.get("kind")
    if kind not in SCORERS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {sorted(SCORERS)}")
    return SCORERS[kind](manifest, arrays, **options)
