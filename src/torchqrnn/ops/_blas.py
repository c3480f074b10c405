"""The BLAS that PyTorch itself links, called from inside a numba kernel: a matrix-vector product.

A streaming step's product is a matrix-vector product, memory-bound, and torch's ``addmv`` runs it through
the BLAS that torch links (MKL on x86 Linux builds), at the speed of the memory, on torch's OpenMP threads.
Called from Python, each torch op costs microseconds of dispatch, about what the product of a 320-unit
layer costs on two threads; so the step kernel calls that same BLAS routine (``sgemv_`` / ``dgemv_``,
Fortran interface, which ``libtorch_cpu`` exports) from inside numba, and a step is one kernel call: the
product at torch's own speed plus the gates, with one dispatch.

Where torch's library does not export them (builds without MKL: ARM, macOS), :data:`AVAILABLE` is false
and the step takes ``torch.addmv`` and a separate gates kernel instead.
"""

from __future__ import annotations

import ctypes
import os

import torch
from llvmlite import binding, ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_SYMBOLS = {types.float32: "sgemv_", types.float64: "dgemv_"}
# MKL's bfloat16 product with float32 accumulation (C interface): a bfloat16 model's step reads half the
# weight bytes of a float32 one (measured on an Intel Xeon with AMX, 960 x 640: 40 us against sgemv's 129 us
# at one thread), where torch's bfloat16 F.linear of one row costs more than float32's.
_BF16_SYMBOL = "cblas_gemm_bf16bf16f32"


def _register() -> tuple[bool, bool]:
    """Make torch's ``sgemv_``, ``dgemv_`` (and MKL's bfloat16 product) known to LLVM's linker (numba's JIT
    and its cache loader): whether the float gemvs, and whether the bfloat16 product, are there."""
    path = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:
        library = ctypes.CDLL(path)  # already loaded by torch: the same handle
    except OSError:
        return False, False
    found = {}
    for name in (*_SYMBOLS.values(), _BF16_SYMBOL):
        try:
            found[name] = ctypes.cast(getattr(library, name), ctypes.c_void_p).value
        except AttributeError:
            continue
        binding.add_symbol(name, found[name])
    return all(name in found for name in _SYMBOLS.values()), _BF16_SYMBOL in found


AVAILABLE, BF16_AVAILABLE = _register()


@intrinsic
def gemv(typingctx, weight, x, y):  # pragma: no cover - numba
    """``y += weight @ x`` for a C-contiguous ``weight`` ``(N, K)``, contiguous ``x`` ``(K,)`` and ``y``
    ``(N,)`` of one float dtype, by the BLAS that torch links (see the module docstring).

    A row-major ``(N, K)`` matrix is the column-major ``(K, N)`` one that Fortran BLAS sees, so this is
    ``gemv('T', K, N, 1, weight, K, x, 1, 1, y, 1)``.
    """
    if not (
        isinstance(weight, types.Array)
        and weight.dtype in _SYMBOLS
        and weight.dtype == x.dtype == y.dtype
        and weight.ndim == 2
        and x.ndim == y.ndim == 1
    ):
        return None
    scalar = weight.dtype

    def codegen(context, builder, signature, args):
        w, xv, yv = (
            context.make_array(t)(context, builder, a) for t, a in zip(signature.args, args, strict=True)
        )
        value = context.get_value_type(scalar)
        int32 = ir.IntType(32)
        rows, cols = cgutils.unpack_tuple(builder, w.shape, 2)

        def pointer(llvm_type, initial):
            slot = cgutils.alloca_once(builder, llvm_type)
            builder.store(initial, slot)
            return slot

        trans = pointer(ir.IntType(8), ir.Constant(ir.IntType(8), ord("T")))
        m = pointer(int32, builder.trunc(cols, int32))
        n = pointer(int32, builder.trunc(rows, int32))
        one = pointer(value, context.get_constant(scalar, 1.0))
        inc = pointer(int32, ir.Constant(int32, 1))
        ptr = ir.PointerType(value)
        function_type = ir.FunctionType(
            ir.VoidType(),
            [trans.type, m.type, n.type, ptr, ptr, m.type, ptr, inc.type, ptr, ptr, inc.type],
        )
        function = cgutils.get_or_insert_function(builder.module, function_type, _SYMBOLS[scalar])
        builder.call(function, [trans, m, n, one, w.data, m, xv.data, inc, one, yv.data, inc])
        return context.get_dummy_value()

    return types.void(weight, x, y), codegen


@intrinsic
def gemv_bf16(typingctx, weight, x, y):  # pragma: no cover - numba
    """``y += weight @ x`` for bfloat16 ``weight`` ``(N, K)`` (C-contiguous) and ``x`` ``(K,)``, both as
    their uint16 storage, into float32 ``y`` ``(N,)``: MKL's ``cblas_gemm_bf16bf16f32`` with one row,
    ``C (1, N) = x (1, K) @ weight.T + C``."""
    if not (
        isinstance(weight, types.Array)
        and weight.dtype == x.dtype == types.uint16
        and y.dtype == types.float32
        and weight.ndim == 2
        and x.ndim == y.ndim == 1
    ):
        return None

    def codegen(context, builder, signature, args):
        w, xv, yv = (
            context.make_array(t)(context, builder, a) for t, a in zip(signature.args, args, strict=True)
        )
        int32, f32 = ir.IntType(32), ir.FloatType()
        rows, cols = cgutils.unpack_tuple(builder, w.shape, 2)
        n, k = builder.trunc(rows, int32), builder.trunc(cols, int32)
        constant = lambda value: ir.Constant(int32, value)
        u16 = ir.PointerType(ir.IntType(16))
        function_type = ir.FunctionType(
            ir.VoidType(),
            [
                int32,
                int32,
                int32,
                int32,
                int32,
                int32,
                f32,
                u16,
                int32,
                u16,
                int32,
                f32,
                ir.PointerType(f32),
                int32,
            ],
        )
        function = cgutils.get_or_insert_function(builder.module, function_type, _BF16_SYMBOL)
        row_major, no_trans, trans, one = constant(101), constant(111), constant(112), ir.Constant(f32, 1.0)
        a = builder.bitcast(xv.data, u16)
        b = builder.bitcast(w.data, u16)
        builder.call(
            function, [row_major, no_trans, trans, constant(1), n, k, one, a, k, b, k, one, yv.data, n]
        )
        return context.get_dummy_value()

    return types.void(weight, x, y), codegen
