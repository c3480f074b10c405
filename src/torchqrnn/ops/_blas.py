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


def _register() -> bool:
    """Make torch's ``sgemv_`` and ``dgemv_`` known to LLVM's linker (numba's JIT and its cache loader)."""
    path = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:
        library = ctypes.CDLL(path)  # already loaded by torch: the same handle
        addresses = {
            name: ctypes.cast(getattr(library, name), ctypes.c_void_p).value for name in _SYMBOLS.values()
        }
    except (OSError, AttributeError):
        return False
    for name, address in addresses.items():
        binding.add_symbol(name, address)
    return True


AVAILABLE = _register()


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
