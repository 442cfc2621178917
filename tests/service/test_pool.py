"""service/kernels/pool.py: work split into contiguous slices, run concurrently, results in order."""

from __future__ import annotations

import threading

import pytest

from service.kernels import pool


@pytest.mark.parametrize("n,parts,minimum", [(0, 3, 0), (1, 3, 0), (2, 3, 0), (10, 3, 0), (1000, 7, 0),
                                             (1000, 7, 2000), (5, 1, 0)])
def test_split_covers_the_range_in_order_without_empty_slices(n, parts, minimum):
    ranges = pool.split(n, parts, minimum)
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    assert len(ranges) == (1 if n < minimum or n == 0 else min(parts, n))
    if n:
        assert all(hi > lo for lo, hi in ranges)
        sizes = [hi - lo for lo, hi in ranges]
        assert max(sizes) - min(sizes) <= 1


def test_run_keeps_task_order_and_uses_the_pool():
    seen = []

    def work(i, lo, hi):
        seen.append(threading.current_thread().name)
        return i, sum(range(lo, hi))

    tasks = [(i, lo, hi) for i, (lo, hi) in enumerate(pool.split(10_000, 4))]
    assert pool.run(work, tasks) == [(i, sum(range(lo, hi))) for i, lo, hi in tasks]
    assert seen.count(threading.current_thread().name) == 1  # the first task on the calling thread
    assert pool.run(work, [(9, 0, 3)]) == [(9, 3)]
