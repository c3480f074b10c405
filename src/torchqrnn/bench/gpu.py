"""ForgetMult and the fused QRNN pooling on a GPU: Triton kernels against the HBM floor and the reference
loop, and QRNN layers against cuDNN's LSTM.

    python -m torchqrnn.bench.gpu                     # the full tables on a CUDA device (about 2 minutes)
    python -m torchqrnn.bench.gpu --json out.json     # also write the results as JSON
    TRITON_INTERPRET=1 python -m torchqrnn.bench.gpu --cpu-smoke  # tiny shapes on CPU, interpreted

For each (T, B, H) it times, interleaved in the same rounds (one sample per candidate per round, rotating
order, as torchqrnn.bench.timing does on CPU, but with the GPU synchronised around every sample and timed
with CUDA events): forward and forward+backward of the Triton sequential kernel, of the chunked scan (forced,
with the chunk the heuristic would use for that many columns), and of the heuristic's own choice; the
reference loop (``backend="reference"``); and a large device-to-device copy. The floor is the bytes that must
move (forward: read f, x, write h, 3 tensors of T*B*H; forward+backward: 9) over the copy's bandwidth in the
same round; ratios are medians of per-round ratios.

Then the fused ``qrnn_pool`` kernel (fo-pooling) at the PTB language model's layer shape, timed the same way
against its own floor: forward reads the 3 gate blocks and writes the output and the cell states (5 tensors of
T*B*H); backward reads the gates, the cells and the output gradient and writes the 3 gate gradients (8), so
forward+backward moves 13. Beside it, the unfused layer (torch's tanh / sigmoid, the Triton ForgetMult, the
output gate) and the reference loop.

Then the grid of the QRNN paper's Figure 4 (right): the inference speed-up of one 320-unit
``torchqrnn.QRNN`` layer over an equal ``nn.LSTM(320, 320)`` (cuDNN) for batch x sequence length, both in
eval mode under ``torch.no_grad()``, next to the paper's cuDNN figures (as ``python -m torchqrnn.bench``
prints them on CPU). The caption does not give the QRNN's convolution width; this uses ``window=1``, as that
benchmark does (``--window 2`` for the other), so the layer is one projection ``Linear(320, 3 * 320)`` and
the fused pooling.

Last, a training step (forward and backward) in the paper's PTB setting: 2 layers of 640 units (window 2,
then 1), batches of 20 x 105 steps, the QRNN against cuDNN's ``nn.LSTM`` and ``nn.GRU`` of the same size;
and one 640-unit QRNN layer against its projection alone (the same GEMMs forward and backward: the floor a
QRNN layer cannot go below) and one ``nn.LSTM`` layer: ``python -m torchqrnn.bench``'s PTB measurement,
run on the GPU (float32; timed on the host clock with the device synchronised after every call).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

import torchqrnn
from torchqrnn.bench.layer import BATCHES, LENGTHS, PAPER_GRID, Budget, Run, ptb_training
from torchqrnn.bench.timing import CopyBandwidth, Samples, machine_info, ratio

SHAPES = [(105, 20, 640), (1024, 1, 320), (64, 256, 320), (4096, 1, 1024)]
SMOKE_SHAPES = [(40, 1, 16)]
# The fused pooling: the PTB language model's layer (Merity et al.'s AWD-QRNN and the QRNN paper: 2 layers of
# 640 units, batches of 20 sequences of 105 steps).
POOL_SHAPES = [(105, 20, 640)]
SMOKE_POOL_SHAPES = [(12, 2, 16)]
# Figure 4 (right) of the QRNN paper: batch sizes (rows) x sequence lengths (columns), 320 units; the grid
# and the paper's figures are the CPU benchmark's (``python -m torchqrnn.bench``), so both print the same.
FIGURE4: tuple[tuple[int, ...], tuple[int, ...], int] = (tuple(BATCHES), tuple(LENGTHS), 320)
SMOKE_FIGURE4: tuple[tuple[int, ...], tuple[int, ...], int] = ((2,), (4, 8), 8)
PAPER_FIGURE4 = {
    (batch, steps): speedup
    for batch, row in PAPER_GRID.items()
    for steps, speedup in zip(LENGTHS, row, strict=True)
}
KERNELS = ("sequential", "chunked", "auto")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# (title, width, format, result key) of the printed table
COLUMNS = [
    ("T, B, H", 14, "", "shape"),
    ("GB/s", 6, ".0f", "bandwidth_gb_s"),
    ("auto", 10, "", "auto_schedule"),
    ("chunk", 5, "", "forced_chunk"),
    *(
        column
        for kernel in KERNELS
        for column in (
            (f"{kernel} fwd ms", len(kernel) + 7, ".3f", f"{kernel}_fwd_ms"),
            ("x floor", 7, ".2f", f"{kernel}_fwd_over_floor"),
            ("f+b ms", 7, ".3f", f"{kernel}_fb_ms"),
            ("x floor", 7, ".2f", f"{kernel}_fb_over_floor"),
        )
    ),
    ("ref fwd ms", 10, ".2f", "reference_fwd_ms"),
    ("ref/auto fwd", 12, ".1f", "reference_over_auto_fwd"),
    ("ref f+b ms", 10, ".2f", "reference_fb_ms"),
    ("ref/auto f+b", 12, ".1f", "reference_over_auto_fb"),
]
POOL_COLUMNS = [
    ("T, B, H", 14, "", "shape"),
    ("GB/s", 6, ".0f", "bandwidth_gb_s"),
    ("fused fwd ms", 12, ".3f", "fused_fwd_ms"),
    ("x floor", 7, ".2f", "fused_fwd_over_floor"),
    ("f+b ms", 7, ".3f", "fused_fb_ms"),
    ("x floor", 7, ".2f", "fused_fb_over_floor"),
    ("unfused fwd ms", 14, ".3f", "unfused_fwd_ms"),
    ("/fused", 6, ".2f", "unfused_over_fused_fwd"),
    ("unfused f+b ms", 14, ".3f", "unfused_fb_ms"),
    ("/fused", 6, ".2f", "unfused_over_fused_fb"),
    ("ref fwd ms", 10, ".2f", "reference_fwd_ms"),
    ("/fused", 6, ".1f", "reference_over_fused_fwd"),
    ("ref f+b ms", 10, ".2f", "reference_fb_ms"),
    ("/fused", 6, ".1f", "reference_over_fused_fb"),
]


class Clock:
    """Seconds of a stretch of work: CUDA events on a GPU (the host does not wait between calls), the
    wall clock on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.begin = torch.cuda.Event(enable_timing=True)
            self.end = torch.cuda.Event(enable_timing=True)

    def time(self, fn: Callable[[], object], calls: int) -> float:
        """Seconds per call of ``calls`` back-to-back calls, the device idle before and after."""
        if self.cuda:
            torch.cuda.synchronize()
            self.begin.record()
            for _ in range(calls):
                fn()
            self.end.record()
            torch.cuda.synchronize()
            return self.begin.elapsed_time(self.end) / 1e3 / calls
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - start) / calls


def interleaved(
    candidates: dict[str, Callable[[], object]], clock: Clock, *, rounds: int, min_seconds: float
) -> dict[str, Samples]:
    """Every candidate once per round, in rotating order; a sample averages enough calls to last
    ``min_seconds`` (at least one)."""
    calls = {}
    for name, fn in candidates.items():
        fn()  # warm-up: compilation and autotuning are not what this measures
        once = clock.time(fn, 1)
        calls[name] = max(1, min(1 << 14, math.ceil(min_seconds / max(once, 1e-7))))
    samples = {name: Samples() for name in candidates}
    names = list(candidates)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            samples[name].seconds.append(clock.time(candidates[name], calls[name]))
    return samples


class DeviceCopy(CopyBandwidth):
    """:class:`CopyBandwidth` with its buffers on ``device``: the HBM bandwidth the floor is taken from."""

    def __init__(self, megabytes: int, device: torch.device) -> None:
        n = megabytes * (1 << 20) // 4
        self.src, self.dst = torch.rand(n, device=device), torch.rand(n, device=device)
        self.bytes_moved = 2 * n * 4  # read + write


def forced_chunk(steps: int, batch: int, hidden: int) -> int:
    """The chunk the chunked scan runs with when forced: the heuristic's own, or, for shapes it keeps
    sequential, the split it would choose for that many columns (at least two chunks)."""
    from torchqrnn.ops.forget_mult import triton as kernels

    chosen = kernels.choose_chunk(steps, batch, hidden)
    if chosen:
        return chosen
    chunks = min(
        math.ceil(kernels._TARGET_COLUMNS / (batch * hidden)),
        steps // kernels._MIN_CHUNK_STEPS,
        kernels._MAX_CHUNKS,
    )
    return math.ceil(steps / max(2, chunks))


def time_shape(
    steps: int,
    batch: int,
    hidden: int,
    *,
    dtype: torch.dtype,
    device: torch.device,
    copy: DeviceCopy,
    clock: Clock,
    rounds: int,
    min_seconds: float,
) -> dict[str, float | str]:
    from torchqrnn.ops.forget_mult import triton as kernels

    heuristic = kernels.choose_chunk
    chunk = forced_chunk(steps, batch, hidden)
    policies: dict[str, Callable[[int, int, int], int]] = {
        "sequential": lambda s, b, h: 0,
        "chunked": lambda s, b, h: chunk,
        "auto": heuristic,
    }
    f = torch.rand(steps, batch, hidden, device=device, dtype=dtype, requires_grad=True)
    x = torch.randn(steps, batch, hidden, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(steps, batch, hidden, device=device, dtype=dtype)

    def forward(backend: str, policy: Callable[[int, int, int], int] = heuristic) -> Callable[[], None]:
        def run() -> None:
            kernels.choose_chunk = policy  # type: ignore[assignment]  # the schedule, forced as tests do
            with torch.no_grad():
                torchqrnn.forget_mult(f, x, backend=backend)

        return run

    def forward_backward(
        backend: str, policy: Callable[[int, int, int], int] = heuristic
    ) -> Callable[[], None]:
        def run() -> None:
            kernels.choose_chunk = policy  # type: ignore[assignment]
            f.grad = x.grad = None
            torchqrnn.forget_mult(f, x, backend=backend).backward(grad)

        return run

    candidates: dict[str, Callable[[], object]] = {"copy": copy}
    for name, policy in policies.items():
        candidates[f"{name}_fwd"] = forward("triton", policy)
        candidates[f"{name}_fb"] = forward_backward("triton", policy)
    candidates["reference_fwd"] = forward("reference")
    candidates["reference_fb"] = forward_backward("reference")
    try:
        samples = interleaved(candidates, clock, rounds=rounds, min_seconds=min_seconds)
    finally:
        kernels.choose_chunk = heuristic

    tensor_bytes = steps * batch * hidden * f.element_size()
    auto_chunk = heuristic(steps, batch, hidden)
    row: dict[str, float | str] = {
        "bandwidth_gb_s": copy.bytes_moved / samples["copy"].median / 1e9,
        "auto_schedule": f"chunk {auto_chunk}" if 0 < auto_chunk < steps else "sequential",
        "forced_chunk": chunk,
        "reference_fwd_ms": samples["reference_fwd"].median * 1e3,
        "reference_over_auto_fwd": ratio(samples["reference_fwd"], samples["auto_fwd"]),
        "reference_fb_ms": samples["reference_fb"].median * 1e3,
        "reference_over_auto_fb": ratio(samples["reference_fb"], samples["auto_fb"]),
        "floor_fwd_ms": 3 * tensor_bytes / (copy.bytes_moved / samples["copy"].median) * 1e3,
        "floor_fb_ms": 9 * tensor_bytes / (copy.bytes_moved / samples["copy"].median) * 1e3,
    }
    for name in KERNELS:
        for stage, tensors in (("fwd", 3), ("fb", 9)):
            kernel = samples[f"{name}_{stage}"]
            row[f"{name}_{stage}_ms"] = kernel.median * 1e3
            row[f"{name}_{stage}_over_floor"] = copy.floor_ratio(
                kernel, samples["copy"], tensors * tensor_bytes
            )
    return row


def time_pool_shape(
    steps: int,
    batch: int,
    hidden: int,
    *,
    dtype: torch.dtype,
    device: torch.device,
    copy: DeviceCopy,
    clock: Clock,
    rounds: int,
    min_seconds: float,
) -> dict[str, float | str]:
    """The fused fo-pooling against its floor, the unfused layer and the reference loop."""
    from torchqrnn.ops.qrnn_pool import qrnn_pool

    gates = torch.randn(steps, batch, 3 * hidden, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(steps, batch, hidden, device=device, dtype=dtype)

    def unfused(gates: torch.Tensor) -> torch.Tensor:
        """The layer before fusion: one kernel per activation, the ForgetMult, the output gate."""
        z, f, o = gates.chunk(3, dim=-1)  # views of the gate blocks
        return torch.sigmoid(o) * torchqrnn.forget_mult(torch.sigmoid(f), torch.tanh(z), backend="triton")

    runs: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "fused": lambda g: qrnn_pool(g, backend="triton")[0],
        "unfused": unfused,
        "reference": lambda g: qrnn_pool(g, backend="reference")[0],
    }

    def forward(run: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        def call() -> None:
            with torch.no_grad():
                run(gates)

        return call

    def forward_backward(run: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        def call() -> None:
            gates.grad = None
            run(gates).backward(grad)

        return call

    candidates: dict[str, Callable[[], object]] = {"copy": copy}
    for name, run in runs.items():
        candidates[f"{name}_fwd"] = forward(run)
        candidates[f"{name}_fb"] = forward_backward(run)
    samples = interleaved(candidates, clock, rounds=rounds, min_seconds=min_seconds)

    tensor_bytes = steps * batch * hidden * gates.element_size()
    floor_tensors = {"fwd": 5, "fb": 5 + 8}  # see the module docstring
    bandwidth = copy.bytes_moved / samples["copy"].median
    row: dict[str, float | str] = {"bandwidth_gb_s": bandwidth / 1e9}
    for stage, tensors in floor_tensors.items():
        fused = samples[f"fused_{stage}"]
        row[f"floor_{stage}_ms"] = tensors * tensor_bytes / bandwidth * 1e3
        row[f"fused_{stage}_over_floor"] = copy.floor_ratio(fused, samples["copy"], tensors * tensor_bytes)
        for name in runs:
            row[f"{name}_{stage}_ms"] = samples[f"{name}_{stage}"].median * 1e3
            if name != "fused":
                row[f"{name}_over_fused_{stage}"] = ratio(samples[f"{name}_{stage}"], fused)
    return row


def figure4_speedups(
    batches: tuple[int, ...],
    steps_list: tuple[int, ...],
    hidden: int,
    *,
    window: int,
    dtype: torch.dtype,
    device: torch.device,
    clock: Clock,
    rounds: int,
    min_seconds: float,
) -> dict[str, float]:
    """LSTM time over QRNN time, inference, per ``"{batch}x{steps}"``: one layer each, interleaved rounds."""
    qrnn = torchqrnn.QRNN(hidden, hidden, window=window, backend="triton", device=device, dtype=dtype).eval()
    lstm = torch.nn.LSTM(hidden, hidden, device=device, dtype=dtype).eval()
    speedups: dict[str, float] = {}
    for batch in batches:
        for steps in steps_list:
            x = torch.randn(steps, batch, hidden, device=device, dtype=dtype)

            def run(module: torch.nn.Module, x: torch.Tensor = x) -> Callable[[], None]:
                def call() -> None:
                    with torch.no_grad():
                        module(x)

                return call

            samples = interleaved(
                {"lstm": run(lstm), "qrnn": run(qrnn)}, clock, rounds=rounds, min_seconds=min_seconds
            )
            speedups[f"{batch}x{steps}"] = ratio(samples["lstm"], samples["qrnn"])
    return speedups


def print_ptb(ptb: dict[str, Any], lstm: str) -> None:
    s = ptb["shape"]
    print(f"# training step (forward+backward), {s['layers']} layers x {s['units']} units (window 2, 1),")
    print(f"# batch {s['batch']} x {s['steps']} steps, against {lstm} nn.LSTM / nn.GRU")
    print("  " + ", ".join(f"{name} {ms:.3f} ms" for name, ms in ptb["ms"].items()))
    print(f"  nn.LSTM / QRNN = {ptb['lstm_over_qrnn']:.2f}x, nn.GRU / QRNN = {ptb['gru_over_qrnn']:.2f}x")
    print(
        f"  one QRNN layer {ptb['layer_ms']:.3f} ms vs its projection GEMMs alone "
        f"{ptb['layer_gemm_ms']:.3f} ms: "
        f"{ptb['layer_over_gemm']:.2f}x the floor; one nn.LSTM layer {ptb['layer_lstm_ms']:.3f} ms "
        f"({ptb['lstm_layer_over_layer']:.2f}x the QRNN layer)"
    )


def print_header(columns: list[tuple[str, int, str, str]]) -> None:
    header = " | ".join(f"{title:>{width}}" for title, width, _, _ in columns)
    print(header)
    print("-" * len(header))


def print_table(
    columns: list[tuple[str, int, str, str]],
    shapes: list[tuple[int, int, int]],
    time_fn: Callable[..., dict[str, float | str]],
    timing: dict[str, Any],
) -> dict[str, dict[str, float | str]]:
    """Time every (T, B, H) with ``time_fn``, printing one row each; the rows by ``TxBxH``."""
    print_header(columns)
    results: dict[str, dict[str, float | str]] = {}
    for steps, batch, hidden in shapes:
        row: dict[str, float | str] = {"shape": f"{steps}, {batch}, {hidden}"}
        row.update(time_fn(steps, batch, hidden, **timing))
        results[f"{steps}x{batch}x{hidden}"] = row
        print_row(columns, row)
    return results


def print_row(columns: list[tuple[str, int, str, str]], row: dict[str, float | str]) -> None:
    print(" | ".join(f"{row[key]:>{width}{spec}}" for _, width, spec, key in columns))


def print_figure4(speedups: dict[str, float], batches: tuple[int, ...], steps_list: tuple[int, ...]) -> None:
    """Rows of batch sizes, columns of sequence lengths: ours, and the paper's in parentheses."""
    corner = "batch \\ T"
    print(f"{corner:>10} | " + " | ".join(f"{steps:>14}" for steps in steps_list))
    for batch in batches:
        cells = []
        for steps in steps_list:
            paper = PAPER_FIGURE4.get((batch, steps))
            ours = f"{speedups[f'{batch}x{steps}']:.1f}x"
            cells.append(ours + (f" ({paper:.1f}x)" if paper else ""))
        print(f"{batch:>10} | " + " | ".join(f"{cell:>14}" for cell in cells))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m torchqrnn.bench.gpu",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--cpu-smoke",
        "--interpret-smoke",
        action="store_true",
        dest="cpu_smoke",
        help="run end to end on CPU tensors under TRITON_INTERPRET=1 with tiny shapes (no timing value)",
    )
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds per shape")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32")
    parser.add_argument("--window", type=int, default=1, help="the QRNN layer's window in the Figure 4 grid")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)

    if args.cpu_smoke:
        if os.environ.get("TRITON_INTERPRET") != "1":
            parser.error("--cpu-smoke runs the kernels in Triton's interpreter: set TRITON_INTERPRET=1")
        device, shapes, rounds, min_seconds, megabytes = torch.device("cpu"), SMOKE_SHAPES, 2, 0.0, 1
        pool_shapes, (batches, steps_list, units) = SMOKE_POOL_SHAPES, SMOKE_FIGURE4
    else:
        if not torch.cuda.is_available():
            parser.error("expected a CUDA device, got none (use --cpu-smoke for a CPU run)")
        device, shapes, rounds, min_seconds, megabytes = torch.device("cuda"), SHAPES, 15, 0.02, 512
        pool_shapes, (batches, steps_list, units) = POOL_SHAPES, FIGURE4
    rounds = args.rounds or rounds
    dtype = DTYPES[args.dtype]
    clock, copy = Clock(device), DeviceCopy(megabytes, device)

    probe = torch.rand(2, 1, 1, device=device)
    torchqrnn.forget_mult(probe, probe, backend="triton")  # import Triton before recording versions
    info = machine_info()
    if device.type == "cuda":
        info["cudnn"] = torch.backends.cudnn.version()
    print(f"# ForgetMult, Triton kernels on {info['cuda'] or info['cpu']}; {args.dtype}; {info['versions']}")
    print(
        "# times: medians of interleaved rounds; x floor: median per-round ratio to the bytes that must move"
    )
    print(
        "# (fwd 3, f+b 9 tensors of T*B*H) at the bandwidth of a large device copy timed in the same rounds"
    )
    timing = dict(dtype=dtype, device=device, copy=copy, clock=clock, rounds=rounds, min_seconds=min_seconds)
    results = print_table(COLUMNS, shapes, time_shape, timing)
    print()
    print("# qrnn_pool, fused fo-pooling (Triton) against its floor (fwd 5, f+b 13 tensors of T*B*H), the")
    print("# unfused layer (torch activations + Triton ForgetMult + output gate) and the reference loop")
    pool_results = print_table(POOL_COLUMNS, pool_shapes, time_pool_shape, timing)

    print()
    lstm = f"cuDNN {info['cudnn']}" if device.type == "cuda" else "CPU"
    print(f"# QRNN paper, Figure 4 (right): inference speed-up of one {units}-unit QRNN layer (window")
    print(
        f"# {args.window}) over nn.LSTM({units}, {units}) on {lstm}; the paper's (cuDNN, 2016) in parentheses"
    )
    speedups = figure4_speedups(
        batches,
        steps_list,
        units,
        window=args.window,
        dtype=dtype,
        device=device,
        clock=clock,
        rounds=rounds,
        min_seconds=min_seconds,
    )
    print_figure4(speedups, batches, steps_list)

    print()
    # the CPU benchmark's PTB step, on this device (its smoke shapes run on the CPU kernels)
    # (its own printing goes nowhere: print_ptb prints the figures beside cuDNN's)
    quiet = Run(device, Budget(rounds, max(min_seconds, 0.002)), quick=args.cpu_smoke, out=io.StringIO())
    ptb = ptb_training(quiet)
    print_ptb(ptb, lstm)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(
                {
                    "machine": info,
                    "dtype": args.dtype,
                    "interpreted": args.cpu_smoke,
                    "shapes": results,
                    "qrnn_pool": pool_results,
                    "figure4": {
                        "hidden": units,
                        "window": args.window,
                        "lstm_time_over_qrnn_time": speedups,
                        "paper": {f"{b}x{t}": v for (b, t), v in PAPER_FIGURE4.items()},
                    },
                    "ptb_training": ptb,
                },
                out,
                indent=2,
            )
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
