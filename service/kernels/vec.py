"""k-wide float32 vectors held in registers: a numba type ``F32Vec(K)`` = LLVM ``<K x float>``.

Numba keeps a scratch array's elements in memory (every ``a[t] += row[t]`` is a load and a
store, and LLVM cannot prove the scratch array does not alias the embedding table), so the
accumulators of a k-long sum never live in registers.  These intrinsics instead pass a row as
an SSA value of LLVM vector type ``<K x float>`` (K a compile-time constant), so an
accumulation over fields is a chain of vector adds in registers, fully unrolled for the
artifact's K (DESIGN.md §7: "an inner loop over the embedding dimension fully unrolled").

    vload(a, i, K)      a[i, 0:K] (2-D, K columns) or a[i:i+K] (1-D) as a vector
    vstore(a, i, x)     the inverse
    vzero(K)            the zero vector
    vadd(x, y)          x + y
    vaxpy(y, s, x)      y + s x      (s a scalar, converted to float32; fused multiply-add)
    vmul(x, y)          x * y        (elementwise)
    vdot(x, y)          <x, y>       (float32; lanes summed by halving)
    vsum(x)             sum of the lanes
    vfma(y, w, x)       y + w x      (elementwise, fused)
    vpair(U, i, r, K)   (U[i, r], U[i, r+1], U[i, r], U[i, r+1], ...): one 8-byte load, K even
    vswap(x)            (x_1, x_0, x_3, x_2, ...): lanes swapped in pairs, K even

``vpair``/``vswap`` let two rank-one terms share their loads (dplr.py, "lane-paired ranks"):
with ``w = vpair(U, i, r, K)``, ``A += w x`` and ``B += w vswap(x)`` accumulate ``U[i, r] x`` and
``U[i, r+1] x`` between them, from one load of the coefficient pair instead of two broadcasts.
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic, models, register_model

_F32 = ir.FloatType()
_I32 = ir.IntType(32)


class F32Vec(types.Type):
    """K float32 lanes held as one LLVM ``<K x float>`` SSA value (a register, not memory)."""

    def __init__(self, k: int):
        self.k = k
        super().__init__(name=f"f32x{k}")


@register_model(F32Vec)
class _F32VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.VectorType(_F32, fe_type.k))


def _k_of(K):
    if isinstance(K, types.IntegerLiteral):
        return K.literal_value
    return None


def _is_vec(x, y=None):
    return isinstance(x, F32Vec) and (y is None or x == y)


def _row_ptr(context, builder, aryty, ary_val, row, k):
    """Address of ``a[row, 0]`` (2-D) / ``a[row]`` (1-D).  A C-contiguous 2-D array is taken to
    have k columns (every kernel's rows are k wide), so the offset is ``row * k`` with k a
    constant (a shift) instead of a multiply by the runtime ``shape[1]``; no wraparound: the
    kernels' row indices are never negative."""
    ary = context.make_array(aryty)(context, builder, ary_val)
    if aryty.ndim == 2 and aryty.layout == "C":
        return builder.gep(ary.data, [builder.mul(row, ir.Constant(row.type, k))], inbounds=True)
    inds = [row] + [context.get_constant(types.intp, 0)] * (aryty.ndim - 1)
    return cgutils.get_item_pointer(context, builder, aryty, ary, inds)


def _is_f32_array(a):
    return isinstance(a, types.Array) and a.dtype == types.float32 and a.ndim in (1, 2)


@intrinsic
def vload(typingctx, a, i, K):
    k = _k_of(K)
    if k is None or not _is_f32_array(a) or not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        row = context.cast(builder, args[1], sig.args[1], types.intp)
        ptr = _row_ptr(context, builder, sig.args[0], args[0], row, k)
        return builder.load(builder.bitcast(ptr, ir.VectorType(_F32, k).as_pointer()), align=4)

    return F32Vec(k)(a, i, K), codegen


@intrinsic
def vstore(typingctx, a, i, x):
    if not _is_f32_array(a) or not _is_vec(x):
        return None

    def codegen(context, builder, sig, args):
        row = context.cast(builder, args[1], sig.args[1], types.intp)
        ptr = _row_ptr(context, builder, sig.args[0], args[0], row, x.k)
        builder.store(args[2], builder.bitcast(ptr, ir.VectorType(_F32, x.k).as_pointer()), align=4)
        return context.get_dummy_value()

    return types.void(a, i, x), codegen


@intrinsic
def vzero(typingctx, K):
    k = _k_of(K)
    if k is None:
        return None

    def codegen(context, builder, sig, args):
        return ir.Constant(ir.VectorType(_F32, k), [_F32(0.0)] * k)

    return F32Vec(k)(K), codegen


def _binary(op):
    def typer(typingctx, x, y):
        if not _is_vec(x, y):
            return None

        def codegen(context, builder, sig, args):
            return getattr(builder, op)(args[0], args[1])

        return x(x, y), codegen

    return typer


vadd = intrinsic(_binary("fadd"))
vmul = intrinsic(_binary("fmul"))


@intrinsic
def vaxpy(typingctx, y, s, x):
    if not _is_vec(x, y) or not isinstance(s, (types.Float, types.Integer)):
        return None
    k = x.k

    def codegen(context, builder, sig, args):
        sc = context.cast(builder, args[1], sig.args[1], types.float32)
        splat = builder.insert_element(ir.Constant(ir.VectorType(_F32, k), ir.Undefined), sc, _I32(0))
        splat = builder.shuffle_vector(splat, splat, ir.Constant(ir.VectorType(_I32, k), [0] * k))
        vt = ir.VectorType(_F32, k)
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt, vt, vt]), f"llvm.fma.v{k}f32")
        return builder.call(fma, [splat, args[2], args[0]])  # one fused multiply-add per lane

    return y(y, s, x), codegen


def _hsum(builder, vec, k):
    """Sum of the lanes: halve the vector while its width is even, then add what is left."""
    while k > 1 and k % 2 == 0:
        h = k // 2
        lo = builder.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(_I32, h), list(range(h))))
        hi = builder.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(_I32, h), list(range(h, k))))
        vec, k = builder.fadd(lo, hi), h
    total = builder.extract_element(vec, _I32(0))
    for i in range(1, k):
        total = builder.fadd(total, builder.extract_element(vec, _I32(i)))
    return total


@intrinsic
def vdot(typingctx, x, y):
    if not _is_vec(x, y):
        return None

    def codegen(context, builder, sig, args):
        return _hsum(builder, builder.fmul(args[0], args[1]), x.k)

    return types.float32(x, y), codegen


@intrinsic
def vsum(typingctx, x):
    if not _is_vec(x):
        return None

    def codegen(context, builder, sig, args):
        return _hsum(builder, args[0], x.k)

    return types.float32(x), codegen


@intrinsic
def vfma(typingctx, y, w, x):
    if not (_is_vec(y, w) and _is_vec(y, x)):
        return None
    k = y.k

    def codegen(context, builder, sig, args):
        vt = ir.VectorType(_F32, k)
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt, vt, vt]), f"llvm.fma.v{k}f32")
        return builder.call(fma, [args[1], args[2], args[0]])

    return y(y, w, x), codegen


@intrinsic
def vpair(typingctx, U, i, r, K):
    k = _k_of(K)
    if (k is None or k % 2 or not (isinstance(U, types.Array) and U.dtype == types.float32 and U.ndim == 2)
            or not isinstance(i, types.Integer) or not isinstance(r, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        aryty = sig.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        inds = [context.cast(builder, a, t, types.intp) for a, t in zip(args[1:3], sig.args[1:3], strict=True)]
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, inds)
        two = builder.load(builder.bitcast(ptr, ir.VectorType(_F32, 2).as_pointer()), align=4)
        return builder.shuffle_vector(two, two, ir.Constant(ir.VectorType(_I32, k), [t % 2 for t in range(k)]))

    return F32Vec(k)(U, i, r, K), codegen


@intrinsic
def vswap(typingctx, x):
    if not _is_vec(x) or x.k % 2:
        return None

    def codegen(context, builder, sig, args):
        return builder.shuffle_vector(args[0], args[0], ir.Constant(ir.VectorType(_I32, x.k), [t ^ 1 for t in range(x.k)]))

    return x(x), codegen
