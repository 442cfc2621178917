"""What loading a model is doing, said in the log: the artifact read and verified, then its kernels
compiled (a first start, about a minute for the embedded defaults on 2 cores) or loaded from
Numba's on-disk cache (seconds), each compilation logged as it finishes.

Numba announces every real compilation (never a cache load) as a ``numba:compile`` event; a
listener counts the outermost ones (a kernel's helpers compile inside it) while a model warms.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

from numba.core import event

log = logging.getLogger("adrank.startup")


def _cache_dir() -> str:
    return os.environ.get("NUMBA_CACHE_DIR") or "__pycache__ beside the sources"


class _Compilations(event.Listener):
    def __init__(self, name: str):
        self.name, self.depth, self.count, self.started = name, 0, 0, 0.0

    def on_start(self, ev) -> None:
        if self.depth == 0:
            self.started = time.perf_counter()
        self.depth += 1

    def on_end(self, ev) -> None:
        self.depth -= 1
        if self.depth == 0:
            self.count += 1
            fn = getattr(ev.data.get("dispatcher"), "py_func", None)
            what = f"{fn.__module__}.{fn.__qualname__}" if fn is not None else "a kernel"
            log.info("%s: compiled %s in %.1f s", self.name, what.replace(".<locals>", ""),
                     time.perf_counter() - self.started)


def loading(name: str, path: Path) -> float:
    """Say that ``name`` is being read from ``path``; returns the start time for :func:`loaded`."""
    try:
        size = f"{os.path.getsize(path) / 1e6:.1f} MB"
    except OSError:
        size = "size unknown"
    log.info("%s: loading %s (%s): reading it into memory, checking the SHA-256", name, path, size)
    return time.perf_counter()


def loaded(name: str, ranker, started: float) -> None:
    manifest = getattr(ranker, "manifest", {})
    rho = manifest.get("rank")
    log.info("%s: version %s, %s%s, %s features, k=%s, loaded in %.2f s", name, getattr(ranker, "version", "?"),
             manifest.get("kind", "?"), f" rho={rho}" if rho is not None else "", manifest.get("n_features", "?"),
             manifest.get("embed_dim", "?"), time.perf_counter() - started)


@contextlib.contextmanager
def warming(name: str):
    """Log the kernels' warm-up of model ``name``: each compilation, then the total."""
    log.info("%s: warming kernels: loaded from Numba's cache (%s), or compiled on a first start",
             name, _cache_dir())
    listener, t0 = _Compilations(name), time.perf_counter()
    with event.install_listener("numba:compile", listener):
        yield
    how = f"{listener.count} compiled, now in the cache" if listener.count else "nothing to compile: all cached"
    log.info("%s: kernels ready in %.1f s (%s)", name, time.perf_counter() - t0, how)
