"""Code-generation choices for every scoring kernel, in one place (DESIGN.md §7).

What was measured to matter on this machine, and how each is applied here:

* **k known at compile time.**  Each kernel family is built by a factory closed over the
  artifact's embedding dimension ``K`` (and rank ``R`` for DPLR); rows are handled as explicit
  ``<K x float>`` register values (vec.py), so the loop over k is fully unrolled by construction
  and accumulators never round-trip through memory.  Numba caches closures keyed by their cell
  values, so ``cache=True`` still works per (K, R).
* **Vector width.**  Because the hot loops use explicit vector IR rather than LLVM's loop
  vectoriser, the vectoriser's width choice (the 20x slowdown DESIGN §7 saw) never applies to
  them; LLVM splits ``<K x float>`` into the target's registers.  Measured: capping the whole
  process to 256-bit AVX2 (``NUMBA_CPU_NAME=znver3``) vs the host's AVX-512 changed no kernel
  by more than the run-to-run noise (docs/results/kernels-micro.md), so nothing is capped.
* **Prefetch.**  ``prefetch_row(table, row)`` emits ``llvm.prefetch`` (read, keep in all
  caches) for the first byte of ``table[row]``; kernels prefetch the rows (and linear weights)
  of the candidate ``PREFETCH_DISTANCES[kind]`` ahead, on the schedule ``PREFETCH_MODES[kind]``.  A 64-byte row is one cache line when the table is 64-byte
  aligned, which :func:`aligned` guarantees.
* **Threads only for large auctions.**  ``PARALLEL_MIN_CANDIDATES`` decides when a request's
  candidates are split over ``THREADS`` threads (base.py); below it, a request never touches
  the thread pool.

``NUMBA_CACHE_DIR`` is honoured by numba itself (``cache=True`` everywhere).  Numba keys a
cached function on its own file only; ``SOURCE_STAMP`` (a digest of this file, vec.py and
fields.py) is closed over by every kernel factory so that editing a helper also invalidates the
cached kernels built on it.  Functions built inside a factory are compiled with
:func:`closure_njit`, whose cache key the next process computes alike (numba's own key for a
closure over another compiled function changed with every process: each server start recompiled
those kernels).
"""

from __future__ import annotations

import hashlib
import mmap
import os
from pathlib import Path

import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import cgutils, serialize, types
from numba.core.caching import FunctionCache
from numba.core.dispatcher import Dispatcher
from numba.extending import intrinsic

# The njit options every kernel uses.  fastmath lets LLVM reassociate the k-long dot products
# (vectorised reductions); NaN/inf semantics are kept ("nnan"/"ninf" are not set).
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
NJIT = dict(cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy", boundscheck=False)


class _ClosureCache(FunctionCache):
    """numba's on-disk cache for a kernel built in a factory, keyed so that it is found again
    by the next process.

    numba keys a cached closure on the pickle of its cell contents.  A compiled helper in a
    cell (another closure of the factory: ``accumulate``, ``candidate_walk``'s ``ahead``/``slot``)
    pickles with a uuid drawn per process, so every process missed the cache, recompiled the
    kernel (about 1 s each) and appended one more entry to the index.  Here a helper in a cell
    is keyed by what determines its code instead: its qualified name, its bytecode and, in turn,
    its own cells."""

    def _index_key(self, sig, codegen):
        code = hashlib.sha256(self._py_func.__code__.co_code).hexdigest()
        cells = hashlib.sha256(serialize.dumps(_cells_key(self._py_func))).hexdigest()
        return sig, codegen.magic_tuple(), (code, cells)


def _cells_key(fn) -> tuple:
    def key(v):
        if isinstance(v, Dispatcher):
            f = v.py_func
            return ("njit", f.__module__, f.__qualname__, f.__code__.co_code, _cells_key(f))
        return v

    return tuple(key(c.cell_contents) for c in fn.__closure__ or ())


def closure_njit(fn=None, **options):
    """``njit`` with NJIT updated by ``options`` for a function built inside a kernel factory, with
    a cache key that survives the process (:class:`_ClosureCache`).  ``@closure_njit`` or
    ``@closure_njit(inline="always")``."""
    def wrap(f):
        d = njit(**{**NJIT, **options})(f)
        d._cache = _ClosureCache(f)  # what Dispatcher.enable_caching() set, re-keyed
        return d

    return wrap if fn is None else wrap(fn)

# Prefetch schedule per kernel family: how many candidates ahead, and how (PREFETCH_MODES bits):
#   PF_L2          prefetch into L2 (x86 prefetcht1) rather than L1 (prefetcht0).  The largest
#                  effect found: L1 has few miss buffers, so with L1 prefetches of 20-40 random
#                  lines per candidate most stayed queued; into L2 many more are in flight and the
#                  demand load then hits L2.  Interleaved A/B in the bench-kernels target cell
#                  (20 item fields, k = 16, 128 MiB table, 1,000 candidates, 40 blocks each),
#                  uniform ids: FM 409 -> 220-242 ns, DPLR rho=2 416 -> 221-253, pruned rho=2
#                  500 -> 300-314, full FwFM 700 -> 483-518; Zipf ids: FM -14%, DPLR -12%,
#                  pruned and FwFM within noise.
#   PF_LINEAR      also the 4-byte linear weights.  Their table is 16x smaller than the rows but the
#                  stream of random rows evicts it from L3; without it (4 ahead, L2) DPLR rho=2
#                  ran 1.6x slower on cold rows and 6% slower on cached ones, FM 1.4x / 1.1x
#                  (docs/results/kernels-micro.md).
#   PF_INTERLEAVE  issue candidate n + dist's prefetches one field at a time inside candidate n's
#                  field loop instead of as one burst at the top of the iteration.  With L1
#                  prefetches it helped pruned (-12% uniform) and FwFM (-10%) but not FM/DPLR;
#                  with L2 prefetches the burst was as good or better for every family.
# Distances 2-8 with L2 prefetches were within the noise of each other (40 blocks each, load ~2.7);
# every family uses the same schedule, 4 candidates ahead.  Re-checked with the lane-paired DPLR and
# all-single-slot kernels (8b1beaa) in the bench-kernels target cell (seed 0, uniform ids, 150
# auctions per case interleaved auction by auction, load ~1.1; ns per candidate): FM 4 ahead 146,
# 3 / 6 / 8 ahead 147-148, interleaved 2 / 4 ahead 155 / 152; DPLR rho=2 147, 148-149, 153 / 151;
# pruned 191, 6 ahead 196, interleaved 2 ahead 204.  The burst, 4 ahead, stays for every family
# (the interleaved L2 schedule that was 12% faster for DPLR on cached rows in a micro run is 3-4%
# slower in the target cell).  A Scorer's ``prefetch`` option
# overrides the distance (an int, False = off) and ``prefetch_mode`` the bits, for A/B runs.
PF_LINEAR, PF_INTERLEAVE, PF_L2 = 1, 2, 4
PREFETCH_DISTANCE = 4  # the default of a kind not listed below
PREFETCH_DISTANCES = {"fm": 4, "dplr": 4, "pruned": 4, "fwfm": 4}
PREFETCH_MODES = {"fm": PF_LINEAR | PF_L2, "dplr": PF_LINEAR | PF_L2, "pruned": PF_LINEAR | PF_L2,
                  "fwfm": PF_LINEAR | PF_L2}
if os.environ.get("ADRANK_PREFETCH_LINEAR", "1") == "0":  # kill switch for the linear-weight prefetch
    PREFETCH_MODES = {k: v & ~PF_LINEAR for k, v in PREFETCH_MODES.items()}
PARALLEL_MIN_CANDIDATES = int(os.environ.get("ADRANK_PARALLEL_MIN_CANDIDATES", "4096"))
THREADS = int(os.environ.get("ADRANK_KERNEL_THREADS", str(min(2, os.cpu_count() or 1))))
ALIGNMENT = 64  # bytes
# Tables the kernels gather from at random (embedding rows, linear weights) of a model loaded from
# its artifact file (service.ranker.Ranker.load) are copied out of the file's shared read-only map
# into private memory advised for 2 MiB transparent huge pages (:func:`resident`).  Arrays built in
# memory (benchmarks, tests, exporter checks) are private already and stay as given.  Measured on the Criteo-shaped artifacts (docs/results/table-pages.md): a
# view into the map (4 KiB page-cache pages: nearly every random row is also a TLB miss) took
# 1.28-1.39x the time per candidate of the copy.  "0" keeps the views: one copy of the tables shared by every worker
# process, at that cost.
HUGE_PAGES = os.environ.get("ADRANK_HUGE_PAGES", "1") != "0"
HUGE_PAGE = 2 << 20  # bytes
SOURCE_STAMP = hashlib.sha1(b"".join((Path(__file__).parent / f).read_bytes()
                                     for f in ("config.py", "vec.py", "fields.py", "rows.py"))).hexdigest()[:16]


def prefetch_mode(kind: str, mode: int | None) -> int:
    """PF_* bits of a ``kind`` kernel: None = the family's measured default."""
    if mode is None:
        return PREFETCH_MODES.get(kind, PF_LINEAR | PF_L2)
    if not isinstance(mode, int) or not 0 <= mode <= PF_LINEAR | PF_INTERLEAVE | PF_L2:
        raise ValueError(f"prefetch_mode must be a combination of PF_LINEAR | PF_INTERLEAVE | PF_L2, got {mode!r}")
    return mode


def prefetch_schedule(dist: int, mode: int) -> tuple[bool, bool, bool]:
    """(inside, whole, context) for kernels prefetching ``dist`` candidates ahead under ``mode``:
    prefetch inside the field loop (PF_INTERLEAVE), else the whole candidate at the top of the
    iteration; and the context rows all at once before the context pass (any dist > 0)."""
    inside = dist > 0 and bool(mode & PF_INTERLEAVE)
    return inside, dist > 0 and not inside, dist > 0


def prefetch_distance(kind: str, prefetch: bool | int) -> int:
    """Candidates ahead whose rows a ``kind`` kernel prefetches: ``True`` = the family's
    measured default, ``False``/0 = no prefetch, an int >= 0 = that distance (A/B runs)."""
    if prefetch is True:
        return PREFETCH_DISTANCES.get(kind, PREFETCH_DISTANCE)
    if prefetch is False:
        return 0
    if not isinstance(prefetch, int) or prefetch < 0:
        raise ValueError(f"prefetch must be a bool or a distance >= 0, got {prefetch!r}")
    return prefetch


def _emit_prefetch(builder, ptr, locality: int) -> None:
    """``llvm.prefetch(ptr, read, locality, data)``: a hint, never a fault."""
    i32 = ir.IntType(32)
    fnty = ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32])
    fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
    builder.call(fn, [ptr, i32(0), i32(locality), i32(1)])


def _prefetch(locality: int, doc: str):
    @intrinsic
    def prefetch(typingctx, table, row):
        if not isinstance(table, types.Array) or not isinstance(row, types.Integer):
            return None
        sig = types.void(table, row)

        def codegen(context, builder, signature, args):
            aryty = signature.args[0]
            ary = context.make_array(aryty)(context, builder, args[0])
            idx = context.cast(builder, args[1], signature.args[1], types.intp)
            inds = [idx] + [context.get_constant(types.intp, 0)] * (aryty.ndim - 1)
            _emit_prefetch(builder, cgutils.get_item_pointer(context, builder, aryty, ary, inds), locality)
            return context.get_dummy_value()

        return sig, codegen

    prefetch.__doc__ = doc
    return prefetch


prefetch_row = _prefetch(3, "``llvm.prefetch(&table[row, 0], read, locality=3, data)`` (x86: prefetcht0, into L1): "
                            "a hint, never a fault.")
prefetch_row_l2 = _prefetch(2, "``llvm.prefetch(&table[row, 0], read, locality=2, data)`` (x86: prefetcht1, into L2 "
                               "and outer levels only): a hint, never a fault.")


def _prefetch_k(locality: int, doc: str):
    @intrinsic
    def prefetch(typingctx, table, row, K):
        k = K.literal_value if isinstance(K, types.IntegerLiteral) else None
        if (k is None or not isinstance(table, types.Array) or table.ndim != 2 or table.layout != "C"
                or not isinstance(row, types.Integer)):
            return None
        sig = types.void(table, row, K)

        def codegen(context, builder, signature, args):
            ary = context.make_array(signature.args[0])(context, builder, args[0])
            idx = context.cast(builder, args[1], signature.args[1], types.intp)
            ptr = builder.gep(ary.data, [builder.mul(idx, ir.Constant(idx.type, k))], inbounds=True)
            # the pointer type llvm.prefetch.p0 is declared with by prefetch_row on float tables
            _emit_prefetch(builder, builder.bitcast(ptr, ir.FloatType().as_pointer()), locality)
            return context.get_dummy_value()

        return sig, codegen

    prefetch.__doc__ = doc
    return prefetch


prefetch_row_k = _prefetch_k(3, "``prefetch_row`` for a C-contiguous table of exactly K columns (K a compile-time "
                                "constant): the row offset is ``row * K``, a shift, not a multiply by the runtime "
                                "row stride.")
prefetch_row_l2_k = _prefetch_k(2, "``prefetch_row_l2`` for a C-contiguous table of exactly K columns (see "
                                   "``prefetch_row_k``).")


def resident(a: np.ndarray, dtype=np.float32) -> np.ndarray:
    """A private copy of ``a`` (C-contiguous ``dtype``) in anonymous memory that starts on a 2 MiB
    boundary and is advised for transparent huge pages, so that one TLB entry covers 2 MiB of a
    table gathered at random.  Arrays under 2 MiB go through :func:`aligned` (no copy when
    aligned).  Where the system has no THP the advice is refused and the copy keeps 4 KiB pages:
    the same values, only without the gain."""
    a = np.asarray(a)
    nbytes = a.size * np.dtype(dtype).itemsize
    if nbytes < HUGE_PAGE:
        return aligned(a, dtype)
    # private: a shared anonymous map would be shmem, whose huge pages are a separate, usually off, setting
    mm = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # kept alive by the view
    try:
        mm.madvise(mmap.MADV_HUGEPAGE)
    except (AttributeError, OSError):  # no madvise/THP here
        pass
    return _copy_into(np.frombuffer(mm, dtype=np.uint8), a, dtype, HUGE_PAGE)


def anon_huge_kib(addr: int) -> int | None:
    """AnonHugePages (KiB) of this process's mapping that holds address ``addr`` (from
    /proc/self/smaps; None where it cannot be read or no mapping holds ``addr``): how much of a
    :func:`resident` copy the kernel backs with huge pages."""
    try:
        lines = Path("/proc/self/smaps").read_text().splitlines()
    except OSError:
        return None
    inside = False
    for line in lines:
        head = line.split(maxsplit=1)[0]
        if "-" in head and not head.endswith(":"):
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo <= addr < hi
        elif inside and line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return None


def aligned(a: np.ndarray, dtype=np.float32) -> np.ndarray:
    """``a`` as a C-contiguous array of ``dtype`` whose data starts on a 64-byte boundary.

    Returns ``a`` itself when it already qualifies (e.g. an aligned read-only mmap view, which
    stays shared between processes); otherwise copies once, at load time.
    """
    a = np.asarray(a)
    if a.dtype == dtype and a.flags.c_contiguous and a.ctypes.data % ALIGNMENT == 0:
        return a
    return _copy_into(np.empty(a.size * np.dtype(dtype).itemsize + ALIGNMENT, dtype=np.uint8), a, dtype, ALIGNMENT)


def _copy_into(buf: np.ndarray, a: np.ndarray, dtype, alignment: int) -> np.ndarray:
    """``a`` copied as ``dtype`` into byte buffer ``buf`` (at least ``alignment`` bytes longer than
    the copy), starting at its first ``alignment``-byte boundary."""
    start = (-buf.ctypes.data) % alignment
    out = buf[start : start + a.size * np.dtype(dtype).itemsize].view(dtype).reshape(a.shape)
    out[...] = a
    return out
