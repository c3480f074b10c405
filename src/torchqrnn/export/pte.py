"""ExecuTorch: a QRNN as a ``.pte`` program for PyTorch's on-device runtime.

:func:`to_executorch` exports an evaluation-mode :class:`~torchqrnn.QRNN` or :class:`~torchqrnn.QRNNLayer`
with the sequence length dynamic up to a bound, replaces torchqrnn's ops by their decompositions
(:func:`~torchqrnn.export.decompose_ops`: element-wise ops around one ``scan`` per layer and direction,
which ExecuTorch's emitter turns into a loop of its portable kernels), delegates the projections to XNNPACK
and writes one program with two methods:

- ``forward(input, h0) -> (output, h_n)``: a whole sequence of any length ``1 <= T <= max_steps``. Memory is
  planned for ``max_steps`` (the upper bound of the exported length, ExecuTorch's constraint-based shape
  pass), so every length up to it fits.
- ``step(input, h0, *contexts) -> (output, h_n, *next_contexts)``: one step (``T = 1``), the cell states and
  each layer's window context in and out, as :class:`~torchqrnn.StreamingQRNN` (a unidirectional model
  only): an app feeds audio frames or tokens one at a time.

The batch size is fixed at export (the example's): ExecuTorch 1.5's ``scan`` keeps its carry at the planned
size, so a smaller batch than planned fails at run time; pad a smaller batch to the exported one.
``quantize=True`` quantizes the projections to int8 (PT2E with ExecuTorch's XNNPACK quantizer, dynamic
per-token activations and per-channel weights), which XNNPACK runs.

Needs ``pip install executorch`` (``torchqrnn[executorch]``); imported only when called.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..nn.layer import QRNNLayer
from ..nn.qrnn import QRNN
from ..nn.streaming import StreamingQRNN
from ..ops._dispatch import shape_str
from .aoti import check_deployable, decompose_ops

if TYPE_CHECKING:
    from executorch.exir import ExecutorchProgramManager

__all__ = ["to_executorch"]


class _LayerStream(nn.Module):
    """A QRNNLayer's step with its window context as an input and an output (StreamingQRNN's form)."""

    def __init__(self, layer: QRNNLayer) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, input: Tensor, hidden: Tensor, context: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.layer.forward_stream(input, hidden, context)


def _import_executorch() -> Any:
    try:
        from executorch import exir
    except ImportError as error:
        raise ImportError(
            "to_executorch needs ExecuTorch: `pip install torch==<your torch> executorch` "
            "(or `pip install torchqrnn[executorch]`)"
        ) from error
    return exir


def _streamer(model: QRNN | QRNNLayer) -> nn.Module:
    if isinstance(model, QRNN):
        if model.bidirectional:
            raise ValueError(
                "to_executorch: a step method needs a unidirectional model, got bidirectional=True (the "
                "reverse direction starts at each sequence's end); pass step=False"
            )
        return StreamingQRNN(model)
    if model.backward:
        raise ValueError(
            "to_executorch: a step method needs a forward layer, got backward=True (it starts at each "
            "sequence's end); pass step=False"
        )
    return _LayerStream(model)


def _step_example(model: QRNN | QRNNLayer, batch: int, example: Tensor) -> tuple[Tensor, ...]:
    """Zeros shaped as one step's inputs: ``(input, h0, *contexts)``."""
    features = example.shape[-1]
    step_input = example.new_zeros((batch, 1, features) if model.batch_first else (1, batch, features))
    if isinstance(model, QRNN):
        return (step_input, *StreamingQRNN(model).initial_state(batch))
    hidden = example.new_zeros(1, batch, model.hidden_size)
    return step_input, hidden, example.new_zeros(model.window - 1, batch, model.input_size)


def _quantize(module: nn.Module, example: tuple[Tensor, ...], dynamic_shapes: Any) -> nn.Module:
    """``module`` with its projections quantized to int8 by PT2E for XNNPACK (dynamic activations,
    per-channel symmetric weights: nothing to calibrate)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True)
    )
    graph = torch.export.export(module, example, dynamic_shapes=dynamic_shapes).module()
    prepared = prepare_pt2e(graph, quantizer)
    prepared(*example)
    return convert_pt2e(prepared)


def _program(
    module: nn.Module, example: tuple[Tensor, ...], dynamic_shapes: Any, quantize: bool
) -> torch.export.ExportedProgram:
    if quantize:
        module = _quantize(module, example, dynamic_shapes)
    program = torch.export.export(module, example, dynamic_shapes=dynamic_shapes)
    return decompose_ops(program)


def to_executorch(
    model: nn.Module,
    args: Tensor | Sequence[Tensor | None],
    path: str | os.PathLike[str] | None = None,
    *,
    max_steps: int,
    step: bool | None = None,
    quantize: bool = False,
) -> ExecutorchProgramManager:
    """Lower ``model`` to an ExecuTorch program (see the module docstring for its methods).

    Args:
        model: an evaluation-mode ``QRNN`` or ``QRNNLayer`` (no ``save_prev_x``: the step method carries
            the window context instead).
        args: an example ``input`` (and ``h0``, which then is an input of ``forward``; zeros give what
            ``h0=None`` gives), batched, with the batch size the program will run and ``2 <= T <= max_steps``.
        path: where to write the ``.pte`` (optional).
        max_steps: the longest sequence ``forward`` accepts; memory is planned for it.
        step: add the ``step`` method; ``None`` adds it where the model can stream (unidirectional).
        quantize: int8 projections (PT2E, XNNPACK).

    Returns the ``ExecutorchProgramManager`` (``.buffer`` holds the program). Raises for a model in training
    mode, a ``PackedSequence``, ``save_prev_x``, an unbatched input or a length outside ``[2, max_steps]``.
    """
    if not isinstance(model, QRNN | QRNNLayer):
        raise TypeError(f"to_executorch: expected a QRNN or QRNNLayer, got {type(model).__name__}")
    example = (args,) if isinstance(args, Tensor) else tuple(args)
    while example and example[-1] is None:  # h0=None: not a program input
        example = example[:-1]
    check_deployable(model, example, "to_executorch")
    if not isinstance(max_steps, int) or max_steps < 2:
        raise ValueError(f"to_executorch: expected max_steps to be an integer >= 2, got {max_steps!r}")
    if not example or not isinstance(example[0], Tensor) or example[0].dim() != 3:
        got = shape_str(example[0]) if example and isinstance(example[0], Tensor) else repr(example[:1])
        raise ValueError(f"to_executorch: expected a batched 3-D example input, got {got}")
    if any(arg is None for arg in example):
        raise ValueError("to_executorch: expected tensors in args (None only as trailing h0)")
    inputs: tuple[Tensor, ...] = example  # type: ignore[assignment]
    x = inputs[0]
    time_dim, batch_dim = (1, 0) if model.batch_first else (0, 1)
    steps, batch = x.shape[time_dim], x.shape[batch_dim]
    if not 2 <= steps <= max_steps:
        raise ValueError(
            f"to_executorch: expected an example of 2 to max_steps = {max_steps} steps, got {steps} "
            f"(input {shape_str(x)}): torch.export fixes a length of 1 as a constant"
        )
    if step is None:
        step = not (isinstance(model, QRNN) and model.bidirectional) and not (
            isinstance(model, QRNNLayer) and model.backward
        )
    exir = _import_executorch()
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    time = torch.export.Dim("time", min=1, max=max_steps)
    with torch.no_grad():
        programs = {
            "forward": _program(model, inputs, ({time_dim: time},) + (None,) * (len(inputs) - 1), quantize)
        }
        if step:
            streamer = _streamer(model)
            programs["step"] = _program(streamer, _step_example(model, batch, x), None, quantize)
    # The edge IR verifier re-specialises a dynamic length to the example inside a scan; the programs
    # come from torch.export and decompose_ops, whose IR is already checked.
    edge = exir.to_edge_transform_and_lower(
        programs,
        partitioner=[XnnpackPartitioner()],
        compile_config=exir.EdgeCompileConfig(_check_ir_validity=False),
    )
    program = edge.to_executorch()
    if path is not None:
        with open(path, "wb") as file:
            program.write_to_file(file)
    return program
