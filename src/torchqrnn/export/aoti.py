"""AOTInductor: a QRNN as a package that a C++ program linked only against libtorch runs.

The program is exported with time and batch dynamic (:func:`~torchqrnn.export.export_program`), then
:func:`decompose_ops` replaces torchqrnn's ops by their decompositions (``torchqrnn/ops/*/scan.py``):
element-wise ops over the whole sequence around one ``scan`` over time per layer and direction. Inductor
turns each ``scan`` into a ``while_loop`` and compiles it into the package's C++ code like the rest of the
graph. A package that kept the ops would call back into Python (and torchqrnn) for every pooling; this one
needs neither. The loop is the same recurrence as the kernels, ``c_t = a_t + b_t * c_{t-1}`` with
``a = i * z`` and ``b = 1 - f``, computed step by step in float32.

``cpp/aoti_runner.cpp`` (:data:`RUNNER_SOURCE`) is a complete C++ program that runs a package on tensors
from a file; :func:`build_runner` compiles it against the installed torch, :func:`write_tensors` and
:func:`read_tensors` write its input and read its output. Nothing here is compiled at install time: Inductor
needs a C++ compiler when :func:`to_aoti` runs, and so does :func:`build_runner`.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..nn.layer import QRNNLayer

__all__ = [
    "RUNNER_SOURCE",
    "build_runner",
    "check_deployable",
    "decompose_ops",
    "read_tensors",
    "to_aoti",
    "write_tensors",
]

RUNNER_SOURCE = Path(__file__).with_name("cpp") / "aoti_runner.cpp"

_MAGIC = b"TQRNTENS"


def _torchqrnn_ops() -> dict[Any, Any]:
    """Each torchqrnn op an evaluation-mode program can hold, with its registered decomposition."""
    from torch._decomp import decomposition_table

    ops = (torch.ops.torchqrnn.qrnn_pool.default, torch.ops.torchqrnn.forget_mult.default)
    return {op: decomposition_table[op] for op in ops}


def check_deployable(model: nn.Module, args: Sequence[object], target: str) -> None:
    """Raise if ``model`` cannot be deployed as it is: training mode (zoneout and dropout draw random
    masks on every call, which a deployed graph cannot reproduce), a ``PackedSequence`` input, or a layer
    with ``save_prev_x`` (module state that a deployed graph does not carry; export a
    :class:`~torchqrnn.StreamingQRNN`, whose contexts are inputs and outputs)."""
    from torch.nn.utils.rnn import PackedSequence

    if model.training:
        raise ValueError(
            f"{target}: expected an evaluation-mode model (call model.eval() first), got one in training "
            "mode: zoneout and dropout draw random masks in training, which a deployed model cannot reproduce"
        )
    for index, arg in enumerate(args):
        if isinstance(arg, PackedSequence):
            raise TypeError(
                f"{target}: argument {index} is a PackedSequence, which a deployed graph cannot take; "
                "expected a padded tensor (run each sequence at its own length, or pad and ignore the tail)"
            )
    for name, module in model.named_modules():
        if isinstance(module, QRNNLayer) and module.save_prev_x:
            raise ValueError(
                f"{target}: layer {name or 'model'!r} has save_prev_x=True, state kept inside the module "
                "that a deployed graph does not carry; expected save_prev_x=False: deploy "
                "torchqrnn.StreamingQRNN(qrnn), which takes the window context as an input and returns it"
            )


def decompose_ops(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """``program`` with torchqrnn's ops replaced by their decompositions: aten ops and one ``scan`` per
    recurrence, a program that runs without torchqrnn (AOTInductor, ExecuTorch). Raises if an op of
    torchqrnn remains (the backward ops, which only a training graph holds)."""
    decomposed = program.run_decompositions(_torchqrnn_ops())
    left = sorted(
        {
            str(node.target)
            for module in decomposed.graph_module.modules()
            if isinstance(module, torch.fx.GraphModule)
            for node in module.graph.nodes
            if node.op == "call_function" and str(node.target).startswith("torchqrnn.")
        }
    )
    if left:
        raise ValueError(
            f"expected a program whose torchqrnn ops all decompose, got {', '.join(left)} left: export an "
            "evaluation-mode model under torch.no_grad()"
        )
    return decomposed


def to_aoti(
    model: nn.Module | torch.export.ExportedProgram,
    args: Tensor | Sequence[Tensor | None] | None = None,
    path: str | os.PathLike[str] = "qrnn.pt2",
    *,
    dynamic: bool = True,
    inductor_configs: dict[str, Any] | None = None,
) -> str:
    """Compile ``model`` into an AOTInductor package at ``path`` and return the path.

    ``model`` is an evaluation-mode :class:`~torchqrnn.QRNN`, :class:`~torchqrnn.QRNNLayer` or
    :class:`~torchqrnn.StreamingQRNN` with the example ``args`` (``input``, and ``h0`` / contexts to make
    them inputs of the package; at least 2 steps and a batch of 2, see
    :func:`~torchqrnn.export.export_program`), or an ``ExportedProgram`` of any model that uses
    torchqrnn's ops (then ``args`` is ``None``). Time and batch stay dynamic: the package runs any ``T`` and
    ``B`` (down to 1). Its inputs and outputs are those of the exported forward, flattened (``h0=None`` left
    out: a package has fixed inputs; zeros give the same result).

    Load it with ``torch._inductor.aoti_load_package(path)`` in Python, or with
    ``torch::inductor::AOTIModelPackageLoader`` in C++ (:data:`RUNNER_SOURCE`). The compile takes tens of
    seconds per layer and needs a C++ compiler.
    """
    from . import _as_tuple, export_program

    if isinstance(model, torch.export.ExportedProgram):
        if args is not None:
            raise TypeError("to_aoti: expected args=None with an ExportedProgram (it holds its inputs)")
        program = model
    else:
        if not isinstance(model, nn.Module):
            raise TypeError(f"to_aoti: expected a module or an ExportedProgram, got {type(model).__name__}")
        if args is None:
            raise TypeError("to_aoti: expected example args for the model, got None")
        example = _as_tuple(args)
        while example and example[-1] is None:  # the defaults (h0=None): not package inputs
            example = example[:-1]
        check_deployable(model, example, "to_aoti")
        with torch.no_grad():
            program = export_program(model, example, dynamic=dynamic)
    decomposed = decompose_ops(program)
    # Inductor 2.13's C++ wrapper declares a while_loop's outputs before the loop; a kernel after the loop
    # that writes in place into one of them makes it declare the buffer a second time, which does not
    # compile ("conflicting declaration 'auto buf8'"). Without in-place buffers it compiles.
    configs = {"inplace_buffers": False, **(inductor_configs or {})}
    package = torch._inductor.aoti_compile_and_package(
        decomposed, package_path=os.fspath(path), inductor_configs=configs
    )
    return str(package)


def write_tensors(path: str | os.PathLike[str], tensors: Sequence[Tensor]) -> None:
    """Write ``tensors`` as float32 in the runner's format: ``TQRNTENS``, the count, then per tensor its
    rank, sizes and row-major data (little-endian, 64-bit integers)."""
    with open(path, "wb") as file:
        file.write(_MAGIC + struct.pack("<Q", len(tensors)))
        for tensor in tensors:
            data = tensor.detach().to("cpu", torch.float32).contiguous()
            file.write(struct.pack(f"<Q{data.dim()}q", data.dim(), *data.shape))
            file.write(data.numpy().astype("<f4", copy=False).tobytes())


def read_tensors(path: str | os.PathLike[str]) -> list[Tensor]:
    """The float32 tensors of a file in the runner's format (see :func:`write_tensors`)."""
    import numpy as np

    raw = Path(path).read_bytes()
    if raw[:8] != _MAGIC:
        raise ValueError(f"read_tensors: expected a file starting with {_MAGIC!r}, got {raw[:8]!r} in {path}")
    (count,), offset = struct.unpack_from("<Q", raw, 8), 16
    tensors = []
    for _ in range(count):
        (ndim,) = struct.unpack_from("<Q", raw, offset)
        shape = struct.unpack_from(f"<{ndim}q", raw, offset + 8)
        offset += 8 + 8 * ndim
        numel = int(np.prod(shape, dtype=np.int64))
        data = np.frombuffer(raw, dtype="<f4", count=numel, offset=offset)
        tensors.append(torch.from_numpy(data.astype(np.float32)).reshape(shape))
        offset += 4 * numel
    return tensors


def build_runner(output: str | os.PathLike[str], *, compiler: str = "g++") -> Path:
    """Compile :data:`RUNNER_SOURCE` into the executable ``output``, against the headers and libraries of
    the installed torch (``torch/include``, ``torch/lib``, found by rpath at run time). It links libtorch,
    libtorch_cpu and libc10, no Python. Takes about 10 s."""
    if shutil.which(compiler) is None:
        raise FileNotFoundError(f"build_runner: expected a C++ compiler {compiler!r} on PATH, found none")
    root = Path(torch.__file__).parent
    abi = int(torch.compiled_with_cxx11_abi())
    command = [
        compiler,
        "-std=c++20",
        "-O2",
        f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        str(RUNNER_SOURCE),
        f"-I{root / 'include'}",
        f"-L{root / 'lib'}",
        f"-Wl,-rpath,{root / 'lib'}",
        "-ltorch",
        "-ltorch_cpu",
        "-lc10",
        "-o",
        os.fspath(output),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"build_runner: {' '.join(command)} failed:\n{result.stderr}")
    return Path(output)
