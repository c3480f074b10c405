"""int8 batch inference on x86 CPUs: the PT2E recipe with the X86 Inductor quantizer, in one call.

:func:`quantize_int8` runs the flow PyTorch recommends for int8 on x86 CPUs (torchao's PT2E quantization,
the successor of the deprecated ``torch.ao.quantization``) on a model that uses torchqrnn's layers:

1. ``torch.export`` of the model, time and batch dynamic for torchqrnn's modules;
2. ``prepare_pt2e`` with torchao's ``X86InductorQuantizer``: every ``nn.Linear`` (each QRNN layer's
   projection ``layer.linear``, a decoder) gets int8 per-channel weights and uint8 activations, quantized
   per call from each input's range (dynamic, the default) or with ranges recorded on ``calibration``
   batches (static);
3. ``convert_pt2e``, then ``torch.compile`` with Inductor's weight freezing, under which Inductor replaces
   each quantize - dequantize - linear pattern with one ``onednn.qlinear_pointwise`` call on weights
   prepacked once: oneDNN's int8 matmul (AMX on CPUs that have ``amx_int8``, VNNI on those with
   ``avx512_vnni`` / ``avx_vnni``), its bias and output scaling fused, float32 out. The pooling
   (``torchqrnn::qrnn_pool``) stays torchqrnn's CPU kernel. One compile, with symbolic sizes, serves every
   sequence length and batch size above 1.

Why a helper rather than the recipe in the docs: freezing must be on both when Dynamo traces and when
Inductor compiles, or the int8 weights are not prepacked and the product runs as a dequantized float32
matmul (``aten.addmm``: no int8 product at all, two more passes over the data). Inductor reads freezing
from its global configuration, which ``torch.compile(options=...)`` does not reach in time (the compile
fails: ``onednn.qlinear_prepack`` on a graph input), and setting it globally would freeze every other
model the process compiles. :class:`Int8Inference` turns it on around its own calls only.

``torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)`` keeps working on the
eager modules (the layer calls ``layer.linear`` as the module it is); it runs fbgemm's int8 kernels with no
compile step. See the documentation's performance page for which to pick, measured.

Importing this module imports no torchao; :func:`quantize_int8` does (``pip install torchao``, or
``pip install torchqrnn[quantization]``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .nn.layer import QRNNLayer
from .nn.qrnn import QRNN
from .nn.streaming import StreamingQRNN

__all__ = ["Int8Inference", "quantize_int8"]


def _import_pt2e() -> tuple[Any, Any, Any]:
    """torchao's ``prepare_pt2e``, ``convert_pt2e`` and the x86 Inductor quantizer module."""
    try:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError as error:
        if (error.name or "").split(".")[0] != "torchao":
            raise  # torchao is there: the failure is something else, and its own message says what
        raise ImportError(
            "quantize_int8 needs torchao (PyTorch's quantization library; torch.ao.quantization is "
            f"deprecated in its favour), which does not import ({error}): `pip install torchao` (or "
            "`pip install torchqrnn[quantization]`), keeping your torch build"
        ) from error
    return prepare_pt2e, convert_pt2e, x86


def _as_args(args: Tensor | Sequence[Tensor | None], name: str) -> tuple[Tensor | None, ...]:
    if isinstance(args, Tensor):
        return (args,)
    if isinstance(args, Sequence) and all(a is None or isinstance(a, Tensor) for a in args):
        return tuple(args)
    raise TypeError(
        f"quantize_int8: expected {name} to be a Tensor or a sequence of Tensors (or None), got "
        f"{type(args).__name__}"
    )


class Int8Inference(nn.Module):
    """An int8 model made by :func:`quantize_int8`: call it as the float model was called (same arguments,
    same outputs). It runs the compiled int8 graph without autograd (inference only), with Inductor's
    weight freezing on for its own calls (so that a first call or a recompile prepacks the int8 weights).

    ``quantized`` is the converted ``torch.fx.GraphModule`` (quantize / dequantize ops around the float
    linears), runnable without compiling, slowly: for inspection and debugging.
    """

    def __init__(self, quantized: nn.Module) -> None:
        super().__init__()
        self.quantized = quantized
        # symbolic sizes from the first call: one compile serves every T and B (the program is exported so)
        self.compiled = torch.compile(quantized, dynamic=True)

    def forward(self, *args: Any) -> Any:
        import torch._inductor.config as inductor_config

        with torch.no_grad(), inductor_config.patch(freezing=True):
            return self.compiled(*args)


def quantize_int8(
    model: nn.Module,
    example_args: Tensor | Sequence[Tensor | None],
    *,
    calibration: Iterable[Tensor | Sequence[Tensor | None]] | None = None,
    dynamic_shapes: Any = None,
) -> Int8Inference:
    """The int8 form of ``model`` for batch inference on x86 CPUs (PT2E and the X86 Inductor quantizer).

    Args:
        model: an evaluation-mode module (``model.eval()``) on the CPU: a :class:`~torchqrnn.QRNN`,
            :class:`~torchqrnn.QRNNLayer`, :class:`~torchqrnn.StreamingQRNN`, or any model built from them
            that ``torch.export`` can export. It is not modified.
        example_args: the positional arguments of one call (a tensor, or a tuple such as ``(input, h0)``).
            For torchqrnn's modules time and batch are dynamic (the example needs ``T >= 2`` and
            ``B >= 2``); the result runs any ``T`` and ``B``.
        calibration: batches (each a tensor or a tuple of arguments, as ``example_args``) to record the
            activations' ranges on: static quantization, the fastest (no range computed per call), for
            inputs within the recorded ranges; an input beyond them is clipped there. ``None`` (default):
            dynamic quantization, each call's activations quantized from their own range.
        dynamic_shapes: passed to ``torch.export.export`` for a model that is not one of torchqrnn's
            modules (whose time and batch dims this marks dynamic itself).

    Returns:
        an :class:`Int8Inference`, called as ``model`` was. Its first call compiles (seconds).

    Its output stayed within 1.45% of float32 (relative norm error) on the Figure 4 grid of 320-unit
    layers (``python -m torchqrnn.bench --only int8``), ``quantize_dynamic``'s within 2.81%.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"quantize_int8: expected model to be an nn.Module, got {type(model).__name__}")
    if model.training:
        raise ValueError(
            "quantize_int8: expected a model in evaluation mode, got one in training mode (zoneout and "
            "dropout would be exported as random masks): call model.eval() first"
        )
    example = _as_args(example_args, "example_args")
    devices = {t.device.type for t in (*model.parameters(), *(a for a in example if a is not None))}
    if devices != {"cpu"}:
        raise ValueError(
            "quantize_int8: expected the model and example on the CPU (x86 int8 kernels), got "
            f"{sorted(devices)}"
        )
    batches = None if calibration is None else [_as_args(b, "each calibration batch") for b in calibration]
    if batches is not None and not batches:
        raise ValueError("quantize_int8: expected at least one calibration batch, got none")
    prepare_pt2e, convert_pt2e, x86 = _import_pt2e()

    if isinstance(model, QRNN | QRNNLayer | StreamingQRNN):
        if dynamic_shapes is not None:
            raise ValueError(
                "quantize_int8: dynamic_shapes is for other models; for torchqrnn's modules the time and "
                f"batch dims are made dynamic here, got dynamic_shapes={dynamic_shapes!r}"
            )
        from .export import export_program

        program = export_program(model, example)
    else:
        program = torch.export.export(model, example, dynamic_shapes=dynamic_shapes)

    quantizer = x86.X86InductorQuantizer().set_global(
        x86.get_default_x86_inductor_quantization_config(is_dynamic=batches is None)
    )
    prepared = prepare_pt2e(program.module(), quantizer)
    with torch.no_grad():
        for batch in batches or [example]:  # (dynamic: one run to trace the observers' placeholders)
            prepared(*batch)
    return Int8Inference(convert_pt2e(prepared))
