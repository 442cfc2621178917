"""Code generation for every compiled function of the service, in one place: the njit option
sets, the ``llvm.prefetch`` intrinsics and the on-disk cache keys of kernels built in factories.

Why the kernels look the way they do (DESIGN.md §7; measurements: docs/results/kernel-codegen.md):

* **k known at compile time.**  Each kernel family is built by a factory closed over the
  artifact's embedding dimension ``K`` (and rank ``R`` for DPLR); rows are handled as explicit
  ``<K x float>`` register values (vec.py), so the loop over k is fully unrolled by construction
  and accumulators never round-trip through memory.
* **No vector-width cap.**  The hot loops use explicit vector IR rather than LLVM's loop
  vectoriser, so the vectoriser's width choice never applies to them; LLVM splits ``<K x float>``
  into the target's registers.  Capping the process to 256-bit vectors changed no kernel beyond
  run-to-run noise, so nothing is capped.
* **Prefetch hints** (:func:`prefetch_row` and its variants) are emitted by one function,
  :func:`_emit_prefetch`; what to prefetch and how far ahead is schedule.py's decision.

``NUMBA_CACHE_DIR`` is honoured by numba itself (``cache=True`` everywhere).  Numba keys a cached
function on its own file only; :data:`SOURCE_STAMP` (a digest of this file and of the modules
whose compiled helpers the kernels inline) is closed over by every kernel factory so that editing
a helper also invalidates the cached kernels built on it.  Functions built inside a factory are
compiled with :func:`closure_njit`, whose cache key the next process computes alike.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from llvmlite import ir
from numba import njit
from numba.core import cgutils, serialize, types
from numba.core.caching import FunctionCache
from numba.core.dispatcher import Dispatcher
from numba.extending import intrinsic

# --- njit option sets ------------------------------------------------------------------------
# fastmath lets LLVM reassociate the k-long dot products (vectorised reductions); NaN/inf
# semantics are kept ("nnan"/"ninf" are never set).
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
# The scoring kernels (service/kernels) and the catalog's per-ad kernels (service/catalog/kernels.py;
# they compile to the same machine code as under their former set without "afn" and boundscheck:
# they call no library function and index nothing out of bounds).
KERNEL = dict(cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy", boundscheck=False)
# The per-ad precompute (service/catalog/precompute.py): reassociation and contraction only, and
# Python's error model (a division by zero raises instead of giving inf).  It runs once per ad,
# off the request path, where the reference semantics matter more than the last nanosecond.
PRECOMPUTE = dict(cache=True, nogil=True, fastmath={"reassoc", "contract", "nsz"})
# The fast path's scanner and lexer (service/fastpath): no Numba runtime, so nothing there may
# allocate, and no reference counting on the workspace arrays the scan writes into.
NO_RUNTIME = dict(cache=True, nogil=True, _nrt=False)
# Everything else compiled in the service (hash lookups, id tables, the link function, the
# response writer): strict IEEE floats, released GIL.
PLAIN = dict(cache=True, nogil=True)


# --- cache keys of kernels built in factories ------------------------------------------------
class _ClosureCache(FunctionCache):
    """numba's on-disk cache for a kernel built in a factory, keyed so that it is found again
    by the next process.

    numba keys a cached closure on the pickle of its cell contents.  A compiled helper in a
    cell (another closure of the factory: ``accumulate``, ``candidate_walk``'s ``ahead``/``slot``)
    pickles with a uuid drawn per process, so every process would miss the cache, recompile the
    kernel and append one more entry to the index.  Here a helper in a cell is keyed by what
    determines its code instead: its qualified name, its bytecode and, in turn, its own cells.
    This relies on numba's cache internals, which is why numba is pinned to the tested minor
    release (pyproject.toml)."""

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
    """``njit`` with :data:`KERNEL` updated by ``options`` for a function built inside a kernel
    factory, with a cache key that survives the process (:class:`_ClosureCache`).
    ``@closure_njit`` or ``@closure_njit(inline="always")``."""
    def wrap(f):
        d = njit(**{**KERNEL, **options})(f)
        d._cache = _ClosureCache(f)  # what Dispatcher.enable_caching() set, re-keyed
        return d

    return wrap if fn is None else wrap(fn)


_STAMPED = ("codegen.py", "vec.py", "fields.py", "rows.py")  # the helpers the kernels inline
SOURCE_STAMP = hashlib.sha1(b"".join((Path(__file__).parent / f).read_bytes() for f in _STAMPED)).hexdigest()[:16]


# --- llvm.prefetch -----------------------------------------------------------------------------
def _emit_prefetch(builder, ptr, locality: int) -> None:
    """``llvm.prefetch(ptr, read, locality, data)``: a hint, never a fault.  Every caller's
    pointer is cast to ``i8*``, so the one declaration per LLVM module fits them all."""
    i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
    fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
    fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
    builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(locality), i32(1)])


L1, L2 = 3, 2  # llvm.prefetch locality: keep in every cache level (x86 prefetcht0) / L2 and outer (prefetcht1)


def _prefetch_row(locality: int, doc: str):
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


prefetch_row = _prefetch_row(L1, "``llvm.prefetch(&table[row, 0, ...], read, locality=3, data)`` (x86: prefetcht0, "
                                 "into L1) for an array of any dtype and rank: a hint, never a fault.")
prefetch_row_l2 = _prefetch_row(L2, "``prefetch_row`` into L2 and outer levels only (locality=2; x86: prefetcht1).")


def _prefetch_row_k(locality: int, doc: str):
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
            _emit_prefetch(builder, ptr, locality)
            return context.get_dummy_value()

        return sig, codegen

    prefetch.__doc__ = doc
    return prefetch


prefetch_row_k = _prefetch_row_k(L1, "``prefetch_row`` for a C-contiguous table of exactly K columns (K a "
                                     "compile-time constant): the row offset is ``row * K``, a shift, not a "
                                     "multiply by the runtime row stride.")
prefetch_row_l2_k = _prefetch_row_k(L2, "``prefetch_row_l2`` for a C-contiguous table of exactly K columns "
                                        "(see ``prefetch_row_k``).")


@intrinsic
def prefetch_addr(typingctx, addr):
    """``llvm.prefetch(addr, read, locality=3, data)`` for a raw address (an integer): a hint,
    never a fault."""
    if not isinstance(addr, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        _emit_prefetch(builder, builder.inttoptr(args[0], ir.IntType(8).as_pointer()), L1)
        return context.get_dummy_value()

    return types.void(addr), codegen
