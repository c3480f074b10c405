"""``python -m torchqrnn.bench deploy``: a QRNN and nn.LSTM / nn.GRU through each deployment runtime.

For a 320-unit layer at batch 1 it times a whole sequence and one streaming step (state in, state out)
in eager PyTorch, an ExecuTorch ``.pte`` (XNNPACK projections, run by ``executorch.runtime``), an
AOTInductor package (loaded by ``torch._inductor.aoti_load_package``: the same compiled code the C++ runner
runs) and ONNX Runtime. The QRNN's programs keep a dynamic length; nn.LSTM / nn.GRU are exported at the
length they run (their exports unroll time), and a runtime they do not reach is reported with the reason.
Every runtime's output is checked against eager before it is timed. Times are medians of interleaved rounds
(see :mod:`torchqrnn.bench.timing`), per model, so the runtimes of one model share the machine's state.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import QRNN, StreamingQRNN
from .options import check_output_path, command_parser, positive_int
from .timing import interleaved, machine_info

__all__ = ["main", "parser"]

RUNTIMES = ("eager", "pte", "aoti", "onnx")
MODELS = ("qrnn", "lstm", "gru")

Run = Callable[[], list[Tensor]]


def parser() -> argparse.ArgumentParser:
    result = command_parser("deploy", __doc__)
    result.add_argument("--quick", action="store_true", help="a smoke run: 32 units, 16 steps, 3 rounds")
    result.add_argument("--hidden", type=positive_int, default=320, help="units of each layer (default 320)")
    result.add_argument("--steps", type=positive_int, default=256, help="sequence length (default 256)")
    result.add_argument(
        "--rounds", type=positive_int, default=None, help="timing rounds (default 15; 3 with --quick)"
    )
    result.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch.set_num_threads before measuring (also the OpenMP threads of the AOTInductor package); "
        "default: torch's",
    )
    result.add_argument(
        "--runtimes", default=",".join(RUNTIMES), help=f"comma-separated subset of {','.join(RUNTIMES)}"
    )
    result.add_argument(
        "--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}"
    )
    result.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    return result


def _choices(
    args_parser: argparse.ArgumentParser, option: str, value: str, allowed: tuple[str, ...]
) -> list[str]:
    chosen = [item for item in value.split(",") if item]
    unknown = [item for item in chosen if item not in allowed]
    if unknown or not chosen:
        args_parser.error(
            f"{option}: expected a comma-separated subset of {','.join(allowed)}, got {value!r}"
        )
    return chosen


class Case:
    """One model and its two workloads: ``sequence`` (input, state) and ``step`` (one step, state)."""

    def __init__(self, name: str, hidden: int, steps: int) -> None:
        torch.manual_seed(0)
        self.name = name
        self.sequence: tuple[Any, ...]
        self.step: tuple[Any, ...]
        if name == "qrnn":
            qrnn = QRNN(hidden, hidden).eval()
            self.sequence_module: nn.Module = qrnn
            self.step_module: nn.Module = StreamingQRNN(qrnn)
            self.sequence = (torch.randn(steps, 1, hidden), torch.randn(1, 1, hidden))
            self.step = (torch.randn(1, 1, hidden), torch.randn(1, 1, hidden), torch.zeros(0, 1, hidden))
        else:
            rnn = (nn.LSTM if name == "lstm" else nn.GRU)(hidden, hidden).eval()
            self.sequence_module = self.step_module = rnn
            state: Any = torch.randn(1, 1, hidden)
            if name == "lstm":
                state = (state, torch.randn(1, 1, hidden))
            self.sequence = (torch.randn(steps, 1, hidden), state)
            self.step = (torch.randn(1, 1, hidden), state)

    def flat(self, workload: str) -> tuple[Tensor, ...]:
        """The workload's inputs as a flat tuple (an LSTM's (h, c) unpacked), as exported programs take."""
        args = self.sequence if workload == "sequence" else self.step
        return tuple(torch.utils._pytree.tree_leaves(args))

    def module(self, workload: str) -> nn.Module:
        """A module taking the flat inputs and returning flat outputs."""
        inner = self.sequence_module if workload == "sequence" else self.step_module
        lstm = self.name == "lstm"

        class Flat(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
                if lstm:
                    output, (h, c) = self.inner(inputs[0], (inputs[1], inputs[2]))
                    return output, h, c
                return tuple(self.inner(*inputs))

        return Flat().eval()


def _dynamic_time(case: Case, workload: str) -> Any:
    """A dynamic length for the QRNN's sequence programs; nn.LSTM / nn.GRU and steps stay static."""
    if case.name != "qrnn" or workload != "sequence":
        return None
    inputs = case.flat(workload)
    time_dim = torch.export.Dim("time", min=1, max=max(inputs[0].shape[0], 2))
    return (({0: time_dim},) + (None,) * (len(inputs) - 1),)  # forward(*inputs): one argument


def _eager(case: Case, workload: str, folder: Path) -> Run:
    module, inputs = case.module(workload), case.flat(workload)

    def run() -> list[Tensor]:
        with torch.inference_mode():
            return list(module(*inputs))

    return run


def _pte(case: Case, workload: str, folder: Path) -> Run:
    from executorch import exir
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.runtime import Runtime

    from ..export import decompose_ops

    inputs = case.flat(workload)
    with torch.no_grad():
        program = torch.export.export(
            case.module(workload), inputs, dynamic_shapes=_dynamic_time(case, workload)
        )
        program = decompose_ops(program)
    edge = exir.to_edge_transform_and_lower(
        program,
        partitioner=[XnnpackPartitioner()],
        compile_config=exir.EdgeCompileConfig(_check_ir_validity=False),
    )
    loaded = Runtime.get().load_program(edge.to_executorch().buffer)
    method = loaded.load_method("forward")
    arguments = list(inputs)

    def run() -> list[Tensor]:
        _ = loaded  # the method points into its program: keep the program alive
        return list(method.execute(arguments))

    return run


def _aoti(case: Case, workload: str, folder: Path) -> Run:
    from ..export import to_aoti

    inputs = case.flat(workload)
    with torch.no_grad():
        program = torch.export.export(
            case.module(workload), inputs, dynamic_shapes=_dynamic_time(case, workload)
        )
    package = to_aoti(program, path=folder / f"{case.name}_{workload}.pt2")
    loaded = torch._inductor.aoti_load_package(package)

    def run() -> list[Tensor]:
        return list(loaded(*inputs))

    return run


def _onnx(case: Case, workload: str, folder: Path) -> Run:
    import onnxruntime

    from ..export import onnx_translation_table

    inputs = case.flat(workload)
    path = folder / f"{case.name}_{workload}.onnx"
    names = [f"input_{index}" for index in range(len(inputs))]
    shapes = _dynamic_time(case, workload)
    torch.onnx.export(
        case.module(workload),
        inputs,
        str(path),
        dynamo=True,
        input_names=names,
        dynamic_shapes=shapes,
        custom_translation_table=onnx_translation_table(),
        verbose=False,
    )
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {name: tensor.numpy() for name, tensor in zip(names, inputs, strict=True)}

    def run() -> list[Tensor]:
        return [torch.from_numpy(output) for output in session.run(None, feeds)]

    return run


BUILDERS: dict[str, Callable[[Case, str, Path], Run]] = {
    "eager": _eager,
    "pte": _pte,
    "aoti": _aoti,
    "onnx": _onnx,
}


def _build(
    case: Case, workload: str, runtime: str, folder: Path, reference: list[Tensor]
) -> tuple[Run, float]:
    """The runtime's callable and the seconds its export and compile took; raises if it disagrees with
    eager."""
    start = time.perf_counter()
    run = BUILDERS[runtime](case, workload, folder)
    seconds = time.perf_counter() - start
    outputs = run()
    if len(outputs) != len(reference):
        raise RuntimeError(f"{len(outputs)} outputs, eager has {len(reference)}")
    for got, expected in zip(outputs, reference, strict=True):
        if got.shape != expected.shape:
            raise RuntimeError(f"an output of shape {tuple(got.shape)}, eager's is {tuple(expected.shape)}")
        if expected.numel() == 0:  # a window-1 layer's empty context
            continue
        error = (got - expected).abs().max().item()
        if not error <= 1e-4 * max(1.0, expected.abs().max().item()):
            raise RuntimeError(f"output differs from eager by {error:.2e}")
    return run, seconds


def _reason(error: BaseException) -> str:
    message = str(error).strip().splitlines()
    return f"{type(error).__name__}: {message[0][:110] if message else ''}"


def main(argv: list[str] | None = None) -> int:
    args_parser = parser()
    args = args_parser.parse_args(argv)
    runtimes = _choices(args_parser, "--runtimes", args.runtimes, RUNTIMES)
    models = _choices(args_parser, "--models", args.models, MODELS)
    if args.json:
        check_output_path(args_parser, "--json", args.json)
    hidden, steps = (32, 16) if args.quick else (args.hidden, args.steps)
    if steps < 2:
        args_parser.error(f"--steps: expected at least 2 (a length of 1 exports as a constant), got {steps}")
    rounds = args.rounds or (3 if args.quick else 15)
    if args.threads:
        torch.set_num_threads(args.threads)

    info = machine_info()
    print(f"# Deployment runtimes on {info['cpu']}, {info['torch_threads']} threads")
    print(f"# versions {info['versions']}")
    print(f"# one {hidden}-unit layer, batch 1: a sequence of {steps} steps, and one streaming step")
    print("# times: medians of interleaved rounds; build: export + lowering / compile, once")
    print(f"{'model':<6} {'workload':<9} {'runtime':<6} {'time':>11} {'vs eager':>9} {'build':>8}")
    report: dict[str, Any] = {"machine": info, "hidden": hidden, "steps": steps, "results": {}}
    with tempfile.TemporaryDirectory() as directory:
        for model in models:
            case = Case(model, hidden, steps)
            for workload in ("sequence", "step"):
                reference = _eager(case, workload, Path(directory))()
                runs: dict[str, Run] = {}
                rows: dict[str, dict[str, Any]] = {}
                for runtime in runtimes:
                    try:
                        runs[runtime], build = _build(case, workload, runtime, Path(directory), reference)
                        rows[runtime] = {"build_s": build}
                    except Exception as error:  # a runtime a model does not reach: report why, go on
                        rows[runtime] = {"unavailable": _reason(error)}
                samples = interleaved(dict(runs), rounds=rounds) if runs else {}
                for runtime in runtimes:
                    row = rows[runtime]
                    if runtime in samples:
                        row["median_us"] = samples[runtime].median * 1e6
                        if "eager" in samples:
                            row["vs_eager"] = samples["eager"].median / samples[runtime].median
                        speed = f"{row['vs_eager']:>8.2f}x" if "vs_eager" in row else f"{'':>9}"
                        print(
                            f"{model:<6} {workload:<9} {runtime:<6} {row['median_us']:>9.1f}us {speed} "
                            f"{row['build_s']:>7.1f}s",
                            flush=True,
                        )
                    else:
                        print(f"{model:<6} {workload:<9} {runtime:<6} n/a ({row['unavailable']})", flush=True)
                report["results"][f"{model}/{workload}"] = rows
    print("# vs eager: eager time / this runtime's time (above 1 = faster than eager)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
