"""The cyclic garbage collector paused around bulk work.

Decoding or encoding a catalog, or parsing a data set, allocates millions of small acyclic
objects and frees no cycles: every collection meanwhile walks the growing heap again for nothing
(it took most of the time of such work), so the collector is off while it runs.
"""

from __future__ import annotations

import contextlib
import gc


@contextlib.contextmanager
def gc_paused():
    """No cyclic collection inside the block (the previous state restored after it)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
