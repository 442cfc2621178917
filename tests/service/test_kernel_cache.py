"""The compiled kernels are found in numba's on-disk cache by the next process.

Kernels are closures built per (k, rank, schedule) by factories, and some close over other
compiled helpers.  numba keys a cached closure on the pickle of its cells, in which a compiled
helper carries a uuid drawn per process: every server start then recompiled those kernels and
appended another entry to the cache index (service/kernels/codegen.py, ``closure_njit``).  Two
fresh processes share one cache directory here (the scoring kernels of every family and the
catalog's); the second must compile no kernel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import gc, json, sys
from pathlib import Path
from numba.core.dispatcher import Dispatcher
from service.kernels.registry import make_scorer
from tests.service.test_kernels import case

for kind, rho, p_multi in (("fm", 2, 0.0), ("fm", 2, 0.5), ("dplr", 2, 0.0), ("dplr", 3, 0.5), ("dplr", 5, 0.3),
                          ("pruned", 2, 0.0), ("pruned", 2, 0.5), ("fwfm", 2, 0.3)):
    schema, params, arrays, X, manifest = case(kind, 0, 8, rho=rho, p_multi=p_multi)
    scorer = make_scorer(manifest, arrays)
    scorer.warm()
    scorer.score(X[0, :scorer.n_context_slots], X[:, scorer.n_context_slots:])
from service.catalog import kernels as catalog_kernels
catalog_kernels.warm(16)
compiled = sorted({f"{d.py_func.__module__}.{d.py_func.__qualname__}" for d in gc.get_objects()
                   if isinstance(d, Dispatcher) and d.py_func.__module__.startswith(("service.kernels", "service.catalog"))
                   and d.stats.cache_misses})
index_bytes = sum(p.stat().st_size for p in Path(sys.argv[1]).rglob("*.nbi"))
print(json.dumps({"compiled": compiled, "index_bytes": index_bytes}))
"""


def _run(cache_dir: Path) -> dict:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", CHILD, str(cache_dir)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_second_process_compiles_no_kernel(tmp_path):
    first = _run(tmp_path)
    assert first["compiled"], "the first process should have compiled the kernels (empty cache)"
    second = _run(tmp_path)
    assert second["compiled"] == [], f"recompiled instead of loaded from the cache: {second['compiled']}"
    assert second["index_bytes"] == first["index_bytes"], "the second process grew the cache index"
