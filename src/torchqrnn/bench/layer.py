"""``python -m torchqrnn.bench``: how fast a QRNN is here, against nn.LSTM / nn.GRU, in about a minute.

Prints, and writes as JSON (``--json``) and a PNG heatmap (``--plot``):

1. the paper's Figure 4 grid: inference speed-up of a 320-unit QRNN layer over an equal ``nn.LSTM``, for
   batch x sequence length, beside the paper's cuDNN numbers;
2. training time per batch in the paper's PTB setting (2 layers of 640 units, 20 x 105 steps): QRNN vs
   ``nn.LSTM`` vs ``nn.GRU``, and one QRNN layer against its own projection GEMM (forward+backward), the
   floor a QRNN layer cannot go below;
3. streaming latency per step, batch 1, 320 units: a QRNN layer called with T = 1 vs ``nn.LSTMCell`` /
   ``nn.GRUCell``;
4. peak memory of a training step (the PTB setting): QRNN vs ``nn.LSTM``.

Candidates are timed interleaved in the same rounds and ratios are medians of per-round ratios (see
``torchqrnn.bench.timing``): this project's machines drift by 2x within seconds. ``--quick`` is a smoke run.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import QRNN, QRNNLayer
from ..ops.linear import cpu_gemm, linear
from .memory import peak_bytes
from .timing import interleaved, machine_info, ratio

BATCHES = [8, 16, 32, 64, 128, 256]
LENGTHS = [32, 64, 128, 256, 512]
# The paper's Figure 4 (right), transcribed: inference speed-up of a 320-unit QRNN layer over an equal
# cuDNN LSTM layer on a GPU, by batch size (rows) and sequence length (columns).
PAPER_GRID = {
    8: [5.5, 8.8, 11.0, 12.4, 16.9],
    16: [5.5, 6.7, 7.8, 8.3, 10.8],
    32: [4.2, 4.5, 4.9, 4.9, 6.4],
    64: [3.0, 3.0, 3.0, 3.0, 3.7],
    128: [2.1, 1.9, 2.0, 2.0, 2.4],
    256: [1.4, 1.4, 1.3, 1.3, 1.3],
}


def _synchronizer(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else lambda: None


def _timed(fn: Callable[[], object], sync: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        fn()
        sync()

    return run


@dataclass
class Budget:
    """How long each measurement may take: rounds of interleaved samples, each at least ``min_seconds``."""

    rounds: int = 5
    min_seconds: float = 0.02

    def time(
        self, candidates: dict[str, Callable[[], object]], min_seconds: float | None = None
    ) -> dict[str, Any]:
        return interleaved(
            candidates, rounds=self.rounds, min_seconds=min(self.min_seconds, min_seconds or 1e9)
        )


def figure4_grid(
    device: torch.device, batches: list[int], lengths: list[int], budget: Budget
) -> dict[str, Any]:
    """LSTM time / QRNN time for inference (eval, no grad) of one 320-unit layer, per (batch, length)."""
    size, sync = 320, _synchronizer(device)
    qrnn = QRNN(size, size, device=device).eval()
    lstm = nn.LSTM(size, size, device=device).eval()
    cells: dict[str, Any] = {}
    with torch.no_grad():
        for batch in batches:
            for steps in lengths:
                x = torch.randn(steps, batch, size, device=device)
                samples = budget.time(
                    {
                        "qrnn": _timed(lambda x=x: qrnn(x), sync),  # type: ignore[misc]
                        "lstm": _timed(lambda x=x: lstm(x), sync),  # type: ignore[misc]
                    },
                    min_seconds=0.01,
                )
                cells[f"{batch}x{steps}"] = {
                    "qrnn_ms": samples["qrnn"].median * 1e3,
                    "lstm_ms": samples["lstm"].median * 1e3,
                    "speedup": ratio(samples["lstm"], samples["qrnn"]),
                }
    return {"batches": batches, "lengths": lengths, "cells": cells}


def _training_step(model: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        for p in model.parameters():
            p.grad = None
        output = model(x)[0]
        output.backward(grad)

    return step


def ptb_training(device: torch.device, budget: Budget, quick: bool) -> dict[str, Any]:
    """Per-batch training time in the paper's PTB setting, and one layer against its projection GEMM."""
    steps, batch, size = (21, 4, 128) if quick else (105, 20, 640)
    sync = _synchronizer(device)
    x = torch.randn(steps, batch, size, device=device)
    grad = torch.randn(steps, batch, size, device=device)
    models = {
        "qrnn": QRNN(size, size, num_layers=2, window=[2, 1], device=device),
        "lstm": nn.LSTM(size, size, num_layers=2, device=device),
        "gru": nn.GRU(size, size, num_layers=2, device=device),
    }
    samples = budget.time({name: _timed(_training_step(m, x, grad), sync) for name, m in models.items()})

    # One layer as in the middle of a network (its input needs a gradient) against its projection alone
    # (the same GEMMs, forward and backward: dX and dW, through the same F.linear / oneDNN choices) and
    # against one nn.LSTM layer of the same size: the PTB layer the speed targets are stated for.
    layer = QRNNLayer(size, size, device=device)
    lstm_layer = nn.LSTM(size, size, device=device)
    x_layer = x.clone().requires_grad_()
    weight, bias = layer.linear.weight, layer.linear.bias
    gates_grad = torch.randn(steps, batch, 3 * size, device=device)

    def layer_step() -> None:
        x_layer.grad = weight.grad = bias.grad = None
        layer(x_layer)[0].backward(grad)
        sync()

    def gemm_step() -> None:
        x_layer.grad = weight.grad = bias.grad = None
        linear(x_layer, weight, bias).backward(gates_grad)
        sync()

    def lstm_step() -> None:
        x_layer.grad = None
        for p in lstm_layer.parameters():
            p.grad = None
        lstm_layer(x_layer)[0].backward(grad)
        sync()

    layer_samples = budget.time({"layer": layer_step, "gemm": gemm_step, "lstm": lstm_step})
    return {
        "shape": {"steps": steps, "batch": batch, "units": size, "layers": 2},
        "ms": {name: s.median * 1e3 for name, s in samples.items()},
        "lstm_over_qrnn": ratio(samples["lstm"], samples["qrnn"]),
        "gru_over_qrnn": ratio(samples["gru"], samples["qrnn"]),
        "layer_ms": layer_samples["layer"].median * 1e3,
        "layer_gemm_ms": layer_samples["gemm"].median * 1e3,
        "layer_over_gemm": ratio(layer_samples["layer"], layer_samples["gemm"]),
        "layer_lstm_ms": layer_samples["lstm"].median * 1e3,
        "lstm_layer_over_layer": ratio(layer_samples["lstm"], layer_samples["layer"]),
        "cpu_gemm": cpu_gemm() if device.type == "cpu" else None,
    }


def long_sequence_training(device: torch.device, budget: Budget, quick: bool) -> dict[str, Any]:
    """T = 1024, B = 1, 320 units, training: where an LSTM's step-by-step recurrence hurts most."""
    steps, size = (128, 64) if quick else (1024, 320)
    sync = _synchronizer(device)
    x = torch.randn(steps, 1, size, device=device)
    grad = torch.randn(steps, 1, size, device=device)
    qrnn, lstm = QRNN(size, size, device=device), nn.LSTM(size, size, device=device)
    samples = budget.time(
        {
            "qrnn": _timed(_training_step(qrnn, x, grad), sync),
            "lstm": _timed(_training_step(lstm, x, grad), sync),
        }
    )
    return {
        "shape": {"steps": steps, "batch": 1, "units": size},
        "ms": {name: s.median * 1e3 for name, s in samples.items()},
        "lstm_over_qrnn": ratio(samples["lstm"], samples["qrnn"]),
    }


def streaming(device: torch.device, budget: Budget) -> dict[str, Any]:
    """Latency of one step at batch 1: a QRNN layer fed T = 1 chunks vs the LSTM and GRU cells."""
    size, sync = 320, _synchronizer(device)
    layer = QRNNLayer(size, size, device=device).eval()
    lstm, gru = nn.LSTMCell(size, size, device=device), nn.GRUCell(size, size, device=device)
    x_t, h, c = (torch.randn(1, size, device=device) for _ in range(3))
    x_seq, state = x_t.unsqueeze(0), torch.zeros(1, size, device=device)
    with torch.no_grad():
        samples = budget.time(
            {
                "qrnn": _timed(lambda: layer(x_seq, state), sync),
                "lstm_cell": _timed(lambda: lstm(x_t, (h, c)), sync),
                "gru_cell": _timed(lambda: gru(x_t, h), sync),
                "matvec": _timed(lambda: linear(x_t, layer.linear.weight, layer.linear.bias), sync),
            }
        )
    return {
        "us": {name: s.median * 1e6 for name, s in samples.items()},
        "lstm_cell_over_qrnn": ratio(samples["lstm_cell"], samples["qrnn"]),
        "gru_cell_over_qrnn": ratio(samples["gru_cell"], samples["qrnn"]),
        "qrnn_over_matvec": ratio(samples["qrnn"], samples["matvec"]),
    }


def training_memory(quick: bool) -> dict[str, Any]:
    """Peak bytes of one training step in the PTB setting (CPU, glibc): QRNN vs nn.LSTM."""
    steps, batch, size = (21, 4, 128) if quick else (105, 20, 640)
    x, grad = torch.randn(steps, batch, size), torch.randn(steps, batch, size)
    peaks = {
        name: peak_bytes(_training_step(model, x, grad))
        for name, model in (("qrnn", QRNN(size, size, 2, window=[2, 1])), ("lstm", nn.LSTM(size, size, 2)))
    }
    return {"mb": {k: None if v is None else v / 1e6 for k, v in peaks.items()}}


def _print_report(report: dict[str, Any]) -> None:
    info = report["machine"]
    print(f"# torchqrnn benchmark on {report['device']}: {info['cpu']}, {info['torch_threads']} threads")
    print(f"# versions: {info['versions']}")
    print("# times: medians of interleaved rounds; ratios: medians of per-round ratios")
    grid = report["figure4"]
    print("\n1. Inference speed-up of a 320-unit QRNN layer over nn.LSTM (paper's cuDNN numbers in brackets)")
    print("   batch \\ T " + "".join(f"{t:>14}" for t in grid["lengths"]))
    for batch in grid["batches"]:
        row = ""
        for k, steps in enumerate(grid["lengths"]):
            paper = PAPER_GRID.get(batch, [])
            bracket = f" [{paper[k]:.1f}]" if k < len(paper) and steps in LENGTHS else ""
            row += f"{grid['cells'][f'{batch}x{steps}']['speedup']:>8.1f}x{bracket:>6}"
        print(f"   {batch:>9} {row}")
    speedups = [cell["speedup"] for cell in grid["cells"].values()]
    print(f"   slowest cell {min(speedups):.2f}x, fastest {max(speedups):.2f}x")

    ptb = report["ptb_training"]
    s = ptb["shape"]
    shape = f"{s['layers']} layers x {s['units']} units, batch {s['batch']} x {s['steps']} steps"
    print(f"\n2. Training step, {shape}")
    print("   " + ", ".join(f"{name} {ms:.1f} ms" for name, ms in ptb["ms"].items()))
    print(f"   nn.LSTM / QRNN = {ptb['lstm_over_qrnn']:.2f}x, nn.GRU / QRNN = {ptb['gru_over_qrnn']:.2f}x")
    print(
        f"   one QRNN layer {ptb['layer_ms']:.2f} ms vs its projection GEMM alone "
        f"{ptb['layer_gemm_ms']:.2f} ms (forward+backward, GEMM: {ptb['cpu_gemm']}): "
        f"{ptb['layer_over_gemm']:.2f}x the floor; one nn.LSTM layer {ptb['layer_lstm_ms']:.2f} ms, "
        f"{ptb['lstm_layer_over_layer']:.2f}x the QRNN layer"
    )
    long = report["long_sequence"]
    print(
        f"   T={long['shape']['steps']}, B=1, {long['shape']['units']} units, training: QRNN "
        f"{long['ms']['qrnn']:.2f} ms, nn.LSTM {long['ms']['lstm']:.2f} ms, {long['lstm_over_qrnn']:.2f}x"
    )

    stream = report["streaming"]
    print("\n3. Streaming, batch 1, 320 units, one step per call")
    print("   " + ", ".join(f"{name} {us:.1f} us" for name, us in stream["us"].items()))
    print(
        f"   nn.LSTMCell / QRNN = {stream['lstm_cell_over_qrnn']:.2f}x, nn.GRUCell / QRNN = "
        f"{stream['gru_cell_over_qrnn']:.2f}x; a QRNN step costs {stream['qrnn_over_matvec']:.2f}x its "
        "matrix-vector product"
    )

    memory = report.get("memory")
    if memory is not None:
        mb = memory["mb"]
        if None in mb.values():
            print("\n4. Peak memory: not measured (needs glibc's mallinfo2)")
        else:
            print(
                f"\n4. Peak memory of a training step: QRNN {mb['qrnn']:.1f} MB, nn.LSTM {mb['lstm']:.1f} MB"
            )


def _plot(report: dict[str, Any], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise SystemExit("--plot needs matplotlib: `pip install torchqrnn[bench]`") from error
    grid = report["figure4"]
    values = [[grid["cells"][f"{b}x{t}"]["speedup"] for t in grid["lengths"]] for b in grid["batches"]]
    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    image = axis.imshow(values, cmap="viridis", origin="upper")
    axis.set_xticks(range(len(grid["lengths"])), [str(t) for t in grid["lengths"]])
    axis.set_yticks(range(len(grid["batches"])), [str(b) for b in grid["batches"]])
    axis.set_xlabel("sequence length")
    axis.set_ylabel("batch size")
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            axis.text(j, i, f"{value:.1f}x", ha="center", va="center", color="white", fontsize=9)
    axis.set_title(f"QRNN layer inference speed-up over nn.LSTM ({report['device']})")
    figure.colorbar(image, ax=axis, label="nn.LSTM time / QRNN time")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m torchqrnn.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small shapes and few rounds: a smoke run")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds per measurement")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--plot", metavar="PATH", help="write the Figure 4 grid as a PNG heatmap")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    budget = Budget(rounds=2, min_seconds=0.002) if args.quick else Budget()
    if args.rounds:
        budget.rounds = args.rounds
    batches, lengths = ([8, 16], [32, 64]) if args.quick else (BATCHES, LENGTHS)

    torch.manual_seed(0)
    report: dict[str, Any] = {"device": str(device), "machine": machine_info(), "quick": args.quick}
    report["figure4"] = figure4_grid(device, batches, lengths, budget)
    report["ptb_training"] = ptb_training(device, budget, args.quick)
    report["long_sequence"] = long_sequence_training(device, budget, args.quick)
    # a step is ~50 us: many rounds of longer samples, so that the machine's drift averages out
    report["streaming"] = streaming(device, Budget(max(budget.rounds, 15), budget.min_seconds * 2.5))
    report["memory"] = training_memory(args.quick) if device.type == "cpu" else None
    _print_report(report)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=2)
    if args.plot:
        _plot(report, args.plot)
    sys.stdout.flush()
    return report


if __name__ == "__main__":
    main()
