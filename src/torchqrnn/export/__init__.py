"""Deployment: ``torch.export`` and ONNX export of QRNNs with dynamic sequence length and batch size.

- :func:`export_program` runs ``torch.export.export`` with the time and batch dimensions of every input
  marked dynamic. The program holds torchqrnn's ops, so it runs wherever ``torchqrnn`` is imported.
- Plain ``torch.onnx.export(model, args, f, dynamic_shapes=...)`` (or ``dynamic_axes=``), torch's default
  exporter, works as an ``nn.GRU`` user writes it: each op has its recurrence written with torch's ``scan``
  registered as its decomposition (``torchqrnn/ops/*/scan.py``), which the exporter applies and translates
  to one ONNX ``Scan``; onnxruntime then runs any ``T`` and ``B``. An ``ExportedProgram`` from
  :func:`export_program` exports the same way.
- :func:`to_onnx` is the convenience: it names the graph's inputs and outputs, marks time and batch
  dynamic, and passes :func:`onnx_translation_table` (see :mod:`torchqrnn.export.onnx_ops`), which takes
  precedence over the decompositions and walks a reverse direction in the ``Scan`` itself. Either way
  needs ``pip install onnx onnxscript`` (``torchqrnn[export]``).
- The TorchScript-based exporter (``dynamo=False``) and ``torch.jit.trace`` record a trace, which can
  hold neither a kernel nor a loop over time: they raise, naming what works.
- :class:`torchqrnn.StreamingQRNN` is the streaming form to export: one chunk in, ``h`` and every layer's
  window context in and out as tensors (give its contexts to ``torch.onnx.export`` as one tuple in
  ``dynamic_shapes``, e.g. :func:`dynamic_shapes`; torch cannot map ``dynamic_axes`` names onto
  ``*contexts``).
- :func:`to_aoti` compiles an AOTInductor package that a C++ program linked only against libtorch runs
  (:mod:`torchqrnn.export.aoti`): the ops are decomposed to their ``scan`` form, which Inductor compiles.
- :func:`to_executorch` lowers to an ExecuTorch ``.pte`` with a ``forward`` of dynamic length up to a bound
  and a ``step`` method for streaming (:mod:`torchqrnn.export.pte`; ``pip install executorch``).

Importing this module imports neither onnx nor onnxscript; they load when an ONNX export runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from ..nn.layer import QRNNLayer
from ..nn.qrnn import QRNN
from ..nn.streaming import StreamingQRNN
from ..ops._dispatch import shape_str
from .aoti import build_runner, decompose_ops, read_tensors, to_aoti, write_tensors
from .pte import to_executorch

if TYPE_CHECKING:
    from torch.onnx import ONNXProgram

__all__ = [
    "build_runner",
    "decompose_ops",
    "dynamic_shapes",
    "export_program",
    "io_names",
    "onnx_translation_table",
    "read_tensors",
    "to_aoti",
    "to_executorch",
    "to_onnx",
    "write_tensors",
]

# torch.onnx.export's own default (ONNX opset 20); Scan has been in this form since opset 16.
DEFAULT_OPSET = 20


def _as_tuple(args: Tensor | Sequence[Tensor | None]) -> tuple[Tensor | None, ...]:
    return (args,) if isinstance(args, Tensor) else tuple(args)


def _data_dims(batch_first: bool, unbatched: bool, time: Any, batch: Any) -> dict[int, Any]:
    if unbatched:
        return {0: time}
    return {0: batch, 1: time} if batch_first else {0: time, 1: batch}


def dynamic_shapes(
    model: nn.Module,
    args: Tensor | Sequence[Tensor | None],
    time: Any = "time",
    batch: Any = "batch",
) -> tuple[Any, ...]:
    """The ``dynamic_shapes`` marking time and batch dynamic in ``args`` of a QRNN, QRNNLayer or
    StreamingQRNN: ``input`` in the model's layout, the batch dim of ``h0`` / ``hidden`` and of every
    context. ``time`` and ``batch`` are what marks a dim (``torch.export.Dim`` objects, or names for
    ``torch.onnx.export``, which then names the ONNX dims after them)."""
    args = _as_tuple(args)
    if not isinstance(model, QRNN | QRNNLayer | StreamingQRNN):
        raise TypeError(
            "dynamic_shapes: expected a QRNN, QRNNLayer or StreamingQRNN, got "
            f"{type(model).__name__}; pass dynamic_shapes= to torch.export / torch.onnx yourself"
        )
    if not args or not isinstance(args[0], Tensor):
        raise TypeError("dynamic_shapes: expected the input tensor as the first argument")
    batch_first = model.qrnn.batch_first if isinstance(model, StreamingQRNN) else model.batch_first
    unbatched = args[0].dim() == 2
    specs: list[dict[int, Any] | None] = [_data_dims(batch_first, unbatched, time, batch)]
    for state in args[1:]:
        # h0 (L * D, B, H), QRNNLayer's hidden (1, B, H) or (B, H), contexts (window - 1, B, I)
        if state is None or unbatched:
            specs.append(None)
        else:
            specs.append({0 if state.dim() == 2 else 1: batch})
    if isinstance(model, StreamingQRNN):  # forward(input, h0, *contexts): the contexts are one argument
        return (*specs[:2], tuple(specs[2:]))
    return tuple(specs)


def _check_example(args: tuple[Tensor | None, ...], model: nn.Module) -> None:
    """torch.export specialises any size 0 or 1 it sees, so a dynamic example needs T >= 2 and B >= 2."""
    x = args[0]
    assert isinstance(x, Tensor)  # dynamic_shapes checked it
    batch_first = model.qrnn.batch_first if isinstance(model, StreamingQRNN) else model.batch_first
    sizes = [x.shape[0]] if x.dim() == 2 else list(x.shape[:2])
    if min(sizes) < 2:
        layout = "(T, I)" if x.dim() == 2 else ("(B, T, I)" if batch_first else "(T, B, I)")
        raise ValueError(
            f"expected an example input with at least 2 steps and a batch of at least 2, got {layout} = "
            f"{shape_str(x)}: torch.export fixes sizes 0 and 1 as constants, so the exported model would "
            "accept no other (the exported model itself runs any T >= 1 and B >= 1)"
        )


def export_program(
    model: nn.Module, args: Tensor | Sequence[Tensor | None], *, dynamic: bool = True, strict: bool = False
) -> torch.export.ExportedProgram:
    """``torch.export.export(model, args)`` with time and batch dynamic (see :func:`dynamic_shapes`).

    Export an evaluation-mode model (``model.eval()``): zoneout and dropout in training mode draw random
    masks. The example needs at least 2 steps and a batch of at least 2 (torch.export fixes sizes 0 and 1
    as constants). The program calls torchqrnn's ops, so ``import torchqrnn`` before running a loaded one.
    It records the backend chosen for the example's device (numba on CPU, Triton on CUDA): export on the
    device the program will run on.
    """
    example = _as_tuple(args)
    shapes = None
    if dynamic:
        time, batch = torch.export.Dim("time", min=1), torch.export.Dim("batch", min=1)
        shapes = dynamic_shapes(model, example, time, batch)
        _check_example(example, model)
    return torch.export.export(model, example, dynamic_shapes=shapes, strict=strict)


def onnx_translation_table() -> dict[Any, Callable[..., Any]]:
    """``custom_translation_table`` for ``torch.onnx.export`` of any model that uses torchqrnn's ops."""
    try:
        from . import onnx_ops  # imports onnxscript: only now
    except ImportError as error:
        if (error.name or "").split(".")[0] not in ("onnx", "onnxscript", "onnx_ir"):
            raise  # the packages are there: the failure is something else, and its own message says what
        raise ImportError(
            f"ONNX export needs the packages onnx and onnxscript ({error.name!r} is missing): "
            "`pip install onnx onnxscript` (or `pip install torchqrnn[export]`)"
        ) from error

    return {
        torch.ops.torchqrnn.qrnn_pool.default: onnx_ops.qrnn_pool,
        torch.ops.torchqrnn.forget_mult.default: onnx_ops.forget_mult,
    }


def io_names(model: nn.Module, args: Tensor | Sequence[Tensor | None]) -> tuple[list[str], list[str]]:
    """The ONNX graph's ``(input_names, output_names)`` :func:`to_onnx` gives ``model``.

    QRNN: ``input``, ``h0`` -> ``output``, ``h_n``. StreamingQRNN: ``input``, ``h0``, ``context_0`` ... ->
    ``output``, ``h_n``, ``next_context_0`` ... (one context per layer). Arguments given as ``None`` are
    not graph inputs.
    """
    present = [arg is not None for arg in _as_tuple(args)]
    if isinstance(model, StreamingQRNN):
        contexts = [str(layer) for layer in range(model.qrnn.num_layers)]
        inputs = ["input", "h0", *(f"context_{layer}" for layer in contexts)]
        outputs = ["output", "h_n", *(f"next_context_{layer}" for layer in contexts)]
    elif isinstance(model, QRNN | QRNNLayer):
        inputs, outputs = ["input", "h0"], ["output", "h_n"]
    else:
        raise TypeError(f"io_names: expected a QRNN, QRNNLayer or StreamingQRNN, got {type(model).__name__}")
    return [name for name, given in zip(inputs, present, strict=False) if given], outputs


def to_onnx(
    model: nn.Module,
    args: Tensor | Sequence[Tensor | None],
    path: str | os.PathLike[str] | None = None,
    *,
    dynamic: bool = True,
    opset_version: int = DEFAULT_OPSET,
    **export_kwargs: Any,
) -> ONNXProgram:
    """Export ``model`` (a QRNN, QRNNLayer, StreamingQRNN, or any module using torchqrnn's ops) to ONNX.

    Runs ``torch.onnx.export(model, args, path, dynamo=True, ...)`` with :func:`onnx_translation_table`,
    so every recurrence becomes one ONNX ``Scan`` over time (plain ``torch.onnx.export`` gets one too, from
    the ops' registered decompositions; this translation runs a reverse direction in the ``Scan`` itself
    rather than around flips); for the library's modules it also names the graph's inputs and outputs
    (:func:`io_names`) and makes time and batch dynamic (dims ``"time"`` and ``"batch"``). Export an
    evaluation-mode model. The example needs at least 2 steps and a batch of at least 2; the model then runs
    any ``T`` and ``B``. ``export_kwargs`` go to ``torch.onnx.export`` (they override the names and dynamic
    shapes chosen here). Trailing ``None`` arguments (``h0=None``) are left out of the graph. Returns the
    ``ONNXProgram`` (also saved to ``path`` if given).
    """
    example = _as_tuple(args)
    while example and example[-1] is None:  # the defaults (h0=None): not graph inputs
        example = example[:-1]
    options: dict[str, Any] = {}
    if isinstance(model, QRNN | QRNNLayer | StreamingQRNN):
        if dynamic:
            options["dynamic_shapes"] = dynamic_shapes(model, example)
            _check_example(example, model)
        options["input_names"], options["output_names"] = io_names(model, example)
    options.update(export_kwargs)
    program = torch.onnx.export(
        model,
        example,
        path,
        dynamo=True,
        opset_version=opset_version,
        custom_translation_table=onnx_translation_table(),
        **{"verbose": False, **options},
    )
    return cast("ONNXProgram", program)  # dynamo=True always returns the program
