"""The prefetch schedule of every kernel: how many candidates ahead, and how.

A candidate's item rows are random rows of a table far larger than the caches, so the kernels
ask for the rows of the candidate ``dist`` ahead while they score the current one (the hints are
emitted by codegen.py).  The mode is a combination of these bits:

``PF_L2``
    prefetch into L2 (x86 ``prefetcht1``) rather than L1 (``prefetcht0``).  L1 has few miss
    buffers: with L1 prefetches of 20-40 random lines per candidate most stay queued, while into
    L2 many more are in flight and the demand load then hits L2.  The largest effect found.
``PF_LINEAR``
    also prefetch the 4-byte linear weights.  Their table is 16x smaller than the rows, but the
    stream of random rows evicts it from L3, so without it the kernels wait on it on cold rows.
    The serving setting ``ADRANK_PREFETCH_LINEAR=0`` (service/settings.py) turns it off.
``PF_INTERLEAVE``
    issue candidate n + dist's prefetches one field at a time inside candidate n's field loop
    instead of as one burst at the top of the iteration.  With L2 prefetches the burst was as
    good or better for every family, so it is off by default.

Every family (FM, DPLR, pruned, full FwFM) uses the same schedule: a burst into L2, linear
weights included, 4 candidates ahead; distances 2 to 8 were within noise of each other.  A
``Scorer``'s ``prefetch`` and ``prefetch_mode`` options override it for A/B runs
(benchmarks/kernels_micro.py).  Measurements: docs/results/kernel-codegen.md.
"""

from __future__ import annotations

PF_LINEAR, PF_INTERLEAVE, PF_L2 = 1, 2, 4
PREFETCH_DISTANCE = 4  # candidates ahead, every kernel family
PREFETCH_MODE = PF_LINEAR | PF_L2  # every kernel family
CATALOG_PREFETCH = 4  # catalog ads ahead whose per-ad row and constant are prefetched (service/catalog/kernels.py)


def prefetch_mode(mode: int | None, linear: bool = True) -> int:
    """PF_* bits of a kernel: None = the default schedule (without ``PF_LINEAR`` when ``linear``
    is False), else ``mode`` itself (A/B runs)."""
    if mode is None:
        return PREFETCH_MODE if linear else PREFETCH_MODE & ~PF_LINEAR
    if not isinstance(mode, int) or not 0 <= mode <= PF_LINEAR | PF_INTERLEAVE | PF_L2:
        raise ValueError(f"prefetch_mode must be a combination of PF_LINEAR | PF_INTERLEAVE | PF_L2, got {mode!r}")
    return mode


def prefetch_distance(prefetch: bool | int) -> int:
    """Candidates ahead whose rows a kernel prefetches: ``True`` = the default distance,
    ``False``/0 = no prefetch, an int >= 0 = that distance (A/B runs)."""
    if prefetch is True:
        return PREFETCH_DISTANCE
    if prefetch is False:
        return 0
    if not isinstance(prefetch, int) or prefetch < 0:
        raise ValueError(f"prefetch must be a bool or a distance >= 0, got {prefetch!r}")
    return prefetch


def prefetch_schedule(dist: int, mode: int) -> tuple[bool, bool, bool]:
    """(inside, whole, context) for kernels prefetching ``dist`` candidates ahead under ``mode``:
    prefetch inside the field loop (PF_INTERLEAVE), else the whole candidate at the top of the
    iteration; and the context rows all at once before the context pass (any dist > 0)."""
    inside = dist > 0 and bool(mode & PF_INTERLEAVE)
    return inside, dist > 0 and not inside, dist > 0
