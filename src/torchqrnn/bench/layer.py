"""``python -m torchqrnn.bench [layer]``: how fast a QRNN is here, against nn.LSTM and nn.GRU (four minutes).

Prints each figure as it is measured, and writes them as JSON (``--json``) and a PNG heatmap (``--plot``):

1. the paper's Figure 4 grid: inference speed-up of a 320-unit QRNN layer over an equal ``nn.LSTM``, for
   batch x sequence length, beside the paper's cuDNN numbers;
2. training time per batch in the paper's PTB setting (2 layers of 640 units, 20 x 105 steps): QRNN vs
   ``nn.LSTM`` vs ``nn.GRU``, and one QRNN layer against its own projection GEMM (forward+backward), the
   floor a QRNN layer cannot go below;
3. a long sequence (T = 1024, B = 1) in training, where an LSTM's step-by-step recurrence hurts most;
4. streaming latency per step, batch 1, 320 units: a QRNN layer called with T = 1 vs ``nn.LSTMCell`` /
   ``nn.GRUCell``;
5. peak memory of a training step (the PTB setting, CPU): QRNN vs ``nn.LSTM``;
6. bfloat16 autocast (CPU), the PTB setting, training and inference: QRNN vs its float32 self vs
   ``nn.LSTM`` (float32 and autocast);
7. int8 inference (CPU) on the Figure 4 grid through ``quantize_dynamic`` and ``quantize_int8`` (PT2E,
   compiled): QRNN int8 vs QRNN float32 vs ``nn.LSTM`` float32 and int8, beside the floor (the int8 GEMM
   alone plus the pooling alone), with the int8 QRNNs' output error against float32;
8. streaming through the modules users call: ``QRNNLayer``, ``QRNN`` (1 and 2 layers) and ``StreamingQRNN``
   vs one and two ``nn.LSTMCell`` s, medians and each call's p50 / p99 (``--load N`` runs N busy processes
   beside every measurement, as on a shared machine).

Candidates are timed interleaved in the same rounds and ratios are medians of per-round ratios (see
``torchqrnn.bench.timing``): this project's machines drift by 2x within seconds. A ratio whose rounds disagree
by more than 1.5x is marked ``?``, and a section measured on a busy machine (such ratios, or a load average
beyond this benchmark's threads) ends with a note that says so. Headings number the sections and estimate
the time left. ``--quick`` is a smoke run.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .. import QRNN, QRNNLayer, Stepper, StreamingQRNN
from ..ops.linear import cpu_gemm, linear
from ..ops.qrnn_pool import qrnn_pool
from ..ops.qrnn_step import PLAN_ATTRIBUTE
from .memory import peak_bytes
from .options import check_device, check_output_path, check_plotting, command_parser, positive_int
from .text import busy_note, duration, times
from .timing import (
    Samples,
    busy_processes,
    interleaved,
    latencies,
    load_average,
    machine_info,
    percentile,
    ratio,
    spread,
)

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


@dataclass
class Budget:
    """How long each measurement may take: rounds of interleaved samples, each at least ``min_seconds``."""

    rounds: int = 5
    min_seconds: float = 0.02


# Seconds each section takes in a full and in a --quick run on this project's 2-core machine, for the estimate
# of the time left, which scales them by how this run's finished sections compare (so only their proportions
# matter once one has finished). Full: the README's main job on an Intel Xeon (load average 0.3-2, 3 min 32 s
# in all, 5 December 2026, with the Stepper rows). Quick: one run under load 4.5 (cold caches, as in CI).
SECTION_SECONDS = {
    "figure4": 34.0,
    "ptb_training": 8.6,
    "long_sequence": 0.5,
    "streaming": 42.0,
    "memory": 3.7,
    "bf16": 6.9,
    "int8": 102.0,
    "streaming_modules": 14.0,
}
QUICK_SECTION_SECONDS = {
    "figure4": 4.0,
    "ptb_training": 1.5,
    "long_sequence": 0.2,
    "streaming": 6.0,
    "memory": 2.0,
    "bf16": 1.0,
    "int8": 2.7,
    "streaming_modules": 12.0,
}


@dataclass
class Run:
    """What every section gets: where to run, how long to measure, and how to print as it goes.

    ``main`` tells it the sections planned and brackets each with :meth:`begin` and :meth:`end`: headings
    then carry the section's number and the time left, and a section measured on a busy machine ends with a
    note that says so (see :func:`~torchqrnn.bench.text.busy_note`)."""

    device: torch.device
    budget: Budget
    quick: bool
    out: Any = field(default_factory=lambda: sys.stdout)
    sections_printed: int = 0
    plan: list[str] = field(default_factory=list)  # the sections this run measures, in order
    seconds: dict[str, float] = field(default_factory=dict)  # how long each finished section took
    current: str = ""
    spreads: list[float] = field(default_factory=list)  # of the current section's measurements
    loads: list[float] = field(default_factory=list)  # load averages seen during the current section
    _started: float = 0.0

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def timed(self, fn: Callable[[], object]) -> Callable[[], None]:
        """``fn`` followed by a device synchronisation, so that a sample covers the work it launched."""

        def run() -> None:
            fn()
            self.sync()

        return run

    def time(
        self,
        candidates: dict[str, Callable[[], object]],
        min_seconds: float | None = None,
        budget: Budget | None = None,
    ) -> dict[str, Samples]:
        budget = budget or self.budget
        seconds = budget.min_seconds if min_seconds is None else min(budget.min_seconds, min_seconds)
        samples = interleaved(candidates, rounds=budget.rounds, min_seconds=seconds)
        self.spreads.append(spread(samples))
        self._sample_load()
        return samples

    def _sample_load(self) -> None:
        load = load_average()
        if load is not None:
            self.loads.append(load)

    def begin(self, name: str) -> None:
        self.current, self.spreads, self.loads = name, [], []
        self._sample_load()
        self._started = time.perf_counter()

    def end(self) -> dict[str, Any]:
        """Close the current section: print the busy-machine note if it applies; what the JSON records."""
        self._sample_load()
        self.seconds[self.current] = time.perf_counter() - self._started
        threads, cpus = torch.get_num_threads(), os.cpu_count() or 1
        load = max(self.loads) if self.loads else None
        largest = max(self.spreads, default=1.0)
        # (a section that timed nothing, as the memory one, has no figure a busy machine changes)
        note = busy_note(largest, load, threads, cpus) if self.spreads else None
        if note is not None:
            self.print(textwrap.fill(note, 108, initial_indent="   ", subsequent_indent="   "))
        return {
            "seconds": self.seconds[self.current],
            "largest_spread": largest,
            "load_average": load,
            "busy": note is not None,
        }

    def time_left(self) -> float:
        """Seconds the sections not finished yet should take: their reference times, scaled by how long the
        finished ones took against theirs (1 before any has finished)."""
        reference = QUICK_SECTION_SECONDS if self.quick else SECTION_SECONDS
        done = [name for name in self.plan if name in self.seconds]
        expected_done = sum(reference[name] for name in done)
        scale = sum(self.seconds[name] for name in done) / expected_done if expected_done else 1.0
        return scale * sum(reference[name] for name in self.plan if name not in self.seconds)

    def heading(self, title: str) -> None:
        self.sections_printed += 1
        if self.current in self.plan:  # numbered by the plan: "3. ... (3 of 8, about 2 min 10 s left)"
            number = self.plan.index(self.current) + 1
            self.print(
                f"\n{number}. {title} ({number} of {len(self.plan)}, about {duration(self.time_left())} left)"
            )
        else:  # a section called on its own (the GPU benchmark calls ptb_training)
            self.print(f"\n{self.sections_printed}. {title}")

    def print(self, text: str = "", end: str = "\n") -> None:
        print(text, end=end, file=self.out, flush=True)


def _training_step(model: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        for p in model.parameters():
            p.grad = None
        output = model(x)[0]
        output.backward(grad)

    return step


# ---------------------------------------------------------------------------------------------------------
# Sections: each measures, prints its lines as it measures them, and returns its part of the JSON report
# (None where it does not apply). A new figure is one more function here and one more entry in SECTIONS.


def figure4_grid(run: Run) -> dict[str, Any]:
    """LSTM time / QRNN time for inference (eval, no grad) of one 320-unit layer, per (batch, length)."""
    batches, lengths = ([8, 16], [32, 64]) if run.quick else (BATCHES, LENGTHS)
    size, device = 320, run.device
    qrnn = QRNN(size, size, device=device).eval()
    lstm = nn.LSTM(size, size, device=device).eval()
    run.heading(
        "Inference speed-up of a 320-unit QRNN layer over nn.LSTM (paper's cuDNN numbers in brackets)"
    )
    run.print("   batch \\ T " + "".join(f"{t:>16}" for t in lengths))
    cells: dict[str, Any] = {}
    with torch.no_grad():
        for batch in batches:
            run.print(f"   {batch:>9} ", end="")
            paper = PAPER_GRID.get(batch, [])
            for steps in lengths:
                x = torch.randn(steps, batch, size, device=device)
                samples = run.time(
                    {
                        "qrnn": run.timed(lambda x=x: qrnn(x)),  # type: ignore[misc]
                        "lstm": run.timed(lambda x=x: lstm(x)),  # type: ignore[misc]
                    },
                    min_seconds=0.01,
                )
                speedup = ratio(samples["lstm"], samples["qrnn"])
                cells[f"{batch}x{steps}"] = {
                    "qrnn_ms": samples["qrnn"].median * 1e3,
                    "lstm_ms": samples["lstm"].median * 1e3,
                    "speedup": speedup,
                }
                k = LENGTHS.index(steps) if steps in LENGTHS else len(paper)
                bracket = f" [{paper[k]:.1f}]" if k < len(paper) else ""
                run.print(f"{times(speedup, 1, 10)}{bracket:>6}", end="")
            run.print()
    speedups = [cell["speedup"] for cell in cells.values()]
    run.print(f"   slowest cell {times(min(speedups))}, fastest {times(max(speedups))}")
    return {"batches": batches, "lengths": lengths, "cells": cells}


def ptb_training(run: Run) -> dict[str, Any]:
    """Per-batch training time in the paper's PTB setting, and one layer against its projection GEMM."""
    steps, batch, size = (21, 4, 128) if run.quick else (105, 20, 640)
    device = run.device
    run.heading(f"Training step, 2 layers x {size} units, batch {batch} x {steps} steps")
    x = torch.randn(steps, batch, size, device=device)
    grad = torch.randn(steps, batch, size, device=device)
    models = {
        "qrnn": QRNN(size, size, num_layers=2, window=[2, 1], device=device),
        "lstm": nn.LSTM(size, size, num_layers=2, device=device),
        "gru": nn.GRU(size, size, num_layers=2, device=device),
    }
    samples = run.time({name: run.timed(_training_step(m, x, grad)) for name, m in models.items()})
    lstm_over_qrnn, gru_over_qrnn = (
        ratio(samples["lstm"], samples["qrnn"]),
        ratio(samples["gru"], samples["qrnn"]),
    )
    run.print("   " + ", ".join(f"{name} {s.median * 1e3:.1f} ms" for name, s in samples.items()))
    run.print(f"   nn.LSTM / QRNN = {times(lstm_over_qrnn)}, nn.GRU / QRNN = {times(gru_over_qrnn)}")

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

    def gemm_step() -> None:
        x_layer.grad = weight.grad = bias.grad = None
        linear(x_layer, weight, bias).backward(gates_grad)

    def lstm_step() -> None:
        x_layer.grad = None
        for p in lstm_layer.parameters():
            p.grad = None
        lstm_layer(x_layer)[0].backward(grad)

    layer_samples = run.time(
        {"layer": run.timed(layer_step), "gemm": run.timed(gemm_step), "lstm": run.timed(lstm_step)}
    )
    result: dict[str, Any] = {
        "shape": {"steps": steps, "batch": batch, "units": size, "layers": 2},
        "ms": {name: s.median * 1e3 for name, s in samples.items()},
        "lstm_over_qrnn": lstm_over_qrnn,
        "gru_over_qrnn": gru_over_qrnn,
        "layer_ms": layer_samples["layer"].median * 1e3,
        "layer_gemm_ms": layer_samples["gemm"].median * 1e3,
        "layer_over_gemm": ratio(layer_samples["layer"], layer_samples["gemm"]),
        "layer_lstm_ms": layer_samples["lstm"].median * 1e3,
        "lstm_layer_over_layer": ratio(layer_samples["lstm"], layer_samples["layer"]),
        "cpu_gemm": cpu_gemm() if device.type == "cpu" else None,
    }
    run.print(
        f"   one QRNN layer {result['layer_ms']:.2f} ms vs its projection GEMM alone "
        f"{result['layer_gemm_ms']:.2f} ms (forward+backward, GEMM: {result['cpu_gemm']}): "
        f"{times(result['layer_over_gemm'])} the floor; one nn.LSTM layer {result['layer_lstm_ms']:.2f} ms, "
        f"{times(result['lstm_layer_over_layer'])} the QRNN layer"
    )
    return result


def long_sequence_training(run: Run) -> dict[str, Any]:
    """T = 1024, B = 1, 320 units, training: where an LSTM's step-by-step recurrence hurts most."""
    steps, size = (128, 64) if run.quick else (1024, 320)
    device = run.device
    run.heading(f"Long sequence, training: T={steps}, B=1, {size} units")
    x = torch.randn(steps, 1, size, device=device)
    grad = torch.randn(steps, 1, size, device=device)
    qrnn, lstm = QRNN(size, size, device=device), nn.LSTM(size, size, device=device)
    samples = run.time(
        {"qrnn": run.timed(_training_step(qrnn, x, grad)), "lstm": run.timed(_training_step(lstm, x, grad))}
    )
    result: dict[str, Any] = {
        "shape": {"steps": steps, "batch": 1, "units": size},
        "ms": {name: s.median * 1e3 for name, s in samples.items()},
        "lstm_over_qrnn": ratio(samples["lstm"], samples["qrnn"]),
    }
    run.print(
        f"   QRNN {result['ms']['qrnn']:.2f} ms, nn.LSTM {result['ms']['lstm']:.2f} ms: "
        f"nn.LSTM / QRNN = {times(result['lstm_over_qrnn'])}"
    )
    return result


def matvec_floor(weight: torch.Tensor, bias: torch.Tensor) -> dict[str, Callable[[], object]]:
    """Every way torch computes ``bias + weight @ x`` for one x: the candidates for a step's floor, the
    fastest of which (on the running machine, timed in the same rounds) is the floor."""
    x, row = torch.randn(weight.shape[1], device=weight.device), torch.randn(1, weight.shape[1])
    candidates: dict[str, Callable[[], object]] = {
        "mv": lambda: torch.mv(weight, x),
        "addmv": lambda: torch.addmv(bias, weight, x),
        "linear": lambda: torch.nn.functional.linear(row, weight, bias),
    }
    if weight.device.type == "cpu" and torch.backends.mkldnn.is_available():
        candidates["onednn"] = lambda: torch.ops.mkldnn._linear_pointwise(row, weight, bias, "none", [], "")
    return candidates


def streaming(run: Run) -> dict[str, Any]:
    """Latency of one step at batch 1, at 1 and 2 threads: a QRNN layer (windows 1 and 2) fed T = 1 chunks
    against its floor, the fastest matrix-vector product of the same weights that torch has (``mv``,
    ``addmv``, ``F.linear``, oneDNN; timed in the same rounds), and against the LSTM and GRU cells."""
    size, device = 320, run.device
    run.heading(f"Streaming, batch 1, {size} units, one step per call, against its floor")
    run.print(f"   CPU: {machine_info()['cpu']}")
    lstm, gru = nn.LSTMCell(size, size, device=device), nn.GRUCell(size, size, device=device)
    x_t, h, c = (torch.randn(1, size, device=device) for _ in range(3))
    x_seq, state = x_t.unsqueeze(0), torch.zeros(1, size, device=device)
    # a step is tens of us: many rounds of longer samples, so that the machine's drift averages out
    budget = Budget(max(run.budget.rounds, 15), run.budget.min_seconds * 2.5)
    before = torch.get_num_threads()
    result: dict[str, Any] = {"cpu": machine_info()["cpu"], "threads": {}}
    try:
        for threads in sorted({1, min(2, before)}):
            torch.set_num_threads(threads)
            figures: dict[str, Any] = {}
            for window in (1, 2):
                layer = QRNNLayer(size, size, window=window, device=device).eval()
                weight, bias = layer.linear.weight.detach(), layer.linear.bias.detach()
                floors = {f"floor_{n}": fn for n, fn in matvec_floor(weight, bias).items()}

                def step(layer: QRNNLayer = layer) -> object:
                    return layer(x_seq, state)

                stepper = Stepper(layer)

                def stepper_step(stepper: Stepper = stepper) -> object:
                    return stepper(x_t)  # the explicit step API: state inside, one kernel call

                candidates: dict[str, Callable[[], object]] = {
                    "qrnn": run.timed(step),
                    "stepper": stepper_step,
                    **floors,
                }
                with torch.no_grad():
                    step()  # (makes the layer's step plan, where the step kernel runs here)
                plan = layer.__dict__.get(PLAN_ATTRIBUTE)
                if plan is not None:
                    # the step kernel alone (window, product, pooling: one call), without the module around
                    # it: what a step costs beyond its floor, split into the kernel's share and the rest
                    context: list[torch.Tensor | None] = [torch.zeros(window - 1, 1, size)]

                    def kernel_alone(
                        plan: Any = plan, context: list[torch.Tensor | None] = context
                    ) -> object:
                        return plan.run(x_seq, context, state, (1, 1, size), (1, size))

                    candidates["kernel"] = kernel_alone
                if window == 1:
                    candidates["lstm_cell"] = run.timed(lambda: lstm(x_t, (h, c)))
                    candidates["gru_cell"] = run.timed(lambda: gru(x_t, h))
                with torch.no_grad():
                    samples = run.time(candidates, budget=budget)
                floor = min(floors, key=lambda n: samples[n].median)
                row: dict[str, Any] = {
                    "us": {name: s.median * 1e6 for name, s in samples.items()},
                    "floor": floor.removeprefix("floor_"),
                    "qrnn_over_floor": ratio(samples["qrnn"], samples[floor]),
                    "stepper_over_floor": ratio(samples["stepper"], samples[floor]),
                }
                if "kernel" in samples:
                    row["kernel_over_floor"] = ratio(samples["kernel"], samples[floor])
                if window == 1:
                    row["lstm_cell_over_qrnn"] = ratio(samples["lstm_cell"], samples["qrnn"])
                    row["lstm_cell_over_stepper"] = ratio(samples["lstm_cell"], samples["stepper"])
                    row["gru_cell_over_qrnn"] = ratio(samples["gru_cell"], samples["qrnn"])
                figures[f"window_{window}"] = row
                shape = f"{weight.shape[0]} x {weight.shape[1]}"
                cells = (
                    f"; nn.LSTMCell {row['us']['lstm_cell']:6.1f} us = "
                    f"{times(row['lstm_cell_over_qrnn'], width=7)} "
                    f"the QRNN step, nn.GRUCell {times(row['gru_cell_over_qrnn'], width=7)}"
                    if window == 1
                    else ""
                )
                kernel = ""
                if "kernel" in row["us"]:
                    kernel_ratio = times(row["kernel_over_floor"], width=7)
                    kernel = f" (its kernel alone {row['us']['kernel']:6.1f} us: {kernel_ratio})"
                floor_ratio = times(row["qrnn_over_floor"], width=7)
                stepper_ratio = times(row["stepper_over_floor"], width=7)
                stepper_cells = (
                    f"; nn.LSTMCell = {times(row['lstm_cell_over_stepper'], width=7)} the Stepper"
                    if window == 1
                    else ""
                )
                run.print(
                    f"   {threads} thread{'s' if threads > 1 else ' '}, window {window}: QRNNLayer step "
                    f"{row['us']['qrnn']:6.1f} us, floor ({row['floor']} {shape}) "
                    f"{row['us'][floor]:6.1f} us: {floor_ratio} the floor{kernel}{cells}"
                )
                run.print(
                    f"   {' ' * 9}window {window}: Stepper(QRNNLayer) {row['us']['stepper']:6.1f} us: "
                    f"{stepper_ratio} the floor{stepper_cells}"
                )
            result["threads"][threads] = figures
    finally:
        torch.set_num_threads(before)
    return result


def training_memory(run: Run) -> dict[str, Any] | None:
    """Peak bytes of one training step in the PTB setting (CPU, glibc): QRNN vs nn.LSTM."""
    if run.device.type != "cpu":
        return None
    steps, batch, size = (21, 4, 128) if run.quick else (105, 20, 640)
    run.heading(f"Peak memory of a training step, 2 layers x {size} units, batch {batch} x {steps} steps")
    x, grad = torch.randn(steps, batch, size), torch.randn(steps, batch, size)
    peaks = {
        name: peak_bytes(_training_step(model, x, grad))
        for name, model in (("qrnn", QRNN(size, size, 2, window=[2, 1])), ("lstm", nn.LSTM(size, size, 2)))
    }
    mb = {k: None if v is None else v / 1e6 for k, v in peaks.items()}
    if mb["qrnn"] is None or mb["lstm"] is None:
        run.print("   not measured (needs glibc's mallinfo2)")
    else:
        run.print(f"   QRNN {mb['qrnn']:.1f} MB, nn.LSTM {mb['lstm']:.1f} MB")
    return {"mb": mb}


def bf16_autocast(run: Run) -> dict[str, Any] | None:
    """The PTB setting (2 x 640, batch 20 x 105) under ``torch.autocast(dtype=torch.bfloat16)``: training
    step and inference, QRNN against its float32 self and against nn.LSTM (float32 and autocast)."""
    if run.device.type != "cpu":
        return None
    steps, batch, size = (21, 4, 128) if run.quick else (105, 20, 640)
    run.heading(f"bfloat16 autocast, 2 layers x {size} units, batch {batch} x {steps} steps")
    x, grad = torch.randn(steps, batch, size), torch.randn(steps, batch, size)
    qrnn = QRNN(size, size, num_layers=2, window=[2, 1])
    lstm = nn.LSTM(size, size, num_layers=2)

    def autocast(fn: Callable[[], object]) -> Callable[[], None]:
        def run_autocast() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                fn()

        return run_autocast

    def infer(model: nn.Module) -> Callable[[], None]:
        def forward() -> None:
            with torch.no_grad():
                model(x)

        return forward

    result: dict[str, Any] = {"shape": {"steps": steps, "batch": batch, "units": size, "layers": 2}}
    figures: dict[str, Any]
    for mode, make in (("training", lambda m: _training_step(m, x, grad)), ("inference", infer)):
        qrnn.train(mode == "training")
        lstm.train(mode == "training")
        samples = run.time(
            {
                "qrnn_fp32": make(qrnn),
                "qrnn_bf16": autocast(make(qrnn)),
                "lstm_fp32": make(lstm),
                "lstm_bf16": autocast(make(lstm)),
            }
        )
        figures = {
            "ms": {name: s.median * 1e3 for name, s in samples.items()},
            "qrnn_fp32_over_bf16": ratio(samples["qrnn_fp32"], samples["qrnn_bf16"]),
            "lstm_fp32_over_qrnn_bf16": ratio(samples["lstm_fp32"], samples["qrnn_bf16"]),
            "lstm_bf16_over_qrnn_bf16": ratio(samples["lstm_bf16"], samples["qrnn_bf16"]),
        }
        result[mode] = figures
        run.print(f"   {mode}: " + ", ".join(f"{name} {ms:.1f} ms" for name, ms in figures["ms"].items()))
        run.print(
            f"   {mode}: QRNN fp32 / QRNN bf16 = {times(figures['qrnn_fp32_over_bf16'])}; nn.LSTM fp32 / "
            f"QRNN bf16 = {times(figures['lstm_fp32_over_qrnn_bf16'])}, nn.LSTM bf16 / QRNN bf16 = "
            f"{times(figures['lstm_bf16_over_qrnn_bf16'])}"
        )
    return result


def _int8_floor(layer: QRNNLayer, x: torch.Tensor) -> dict[str, Callable[[], object]]:
    """The two halves of an int8 QRNN layer's call at their fastest, for ``x`` ``(T, B, I)``: oneDNN's int8
    matmul (``onednn.qlinear_pointwise``, what the PT2E model's products compile to: uint8 input already
    quantized, int8 weights prepacked, bias fused, float32 out) and the pooling alone on gates already
    computed. Their sum is the floor of any int8 QRNN call (which also quantizes its input)."""
    weight, bias = layer.linear.weight.detach(), layer.linear.bias.detach()
    w_scale = (weight.abs().amax(1) / 127).clamp_min(1e-8)  # per output channel, symmetric
    w_int8 = (weight / w_scale[:, None]).round().clamp(-128, 127).to(torch.int8)
    rows = x.reshape(-1, x.shape[-1])
    x_scale = float((rows.max() - rows.min()) / 255)
    x_zero = round(-float(rows.min()) / x_scale)
    x_uint8 = (rows / x_scale + x_zero).round().clamp(0, 255).to(torch.uint8)
    packed = torch.ops.onednn.qlinear_prepack(w_int8, tuple(rows.shape))
    w_zero = torch.zeros(w_int8.shape[0], dtype=torch.int64)
    gates = layer.linear(x)

    def int8_gemm() -> object:
        return torch.ops.onednn.qlinear_pointwise(
            x_uint8, x_scale, x_zero, packed, w_scale, w_zero, bias, 1.0, 0, torch.float32, "none", [], ""
        )

    return {"int8_gemm": int8_gemm, "pool": lambda: qrnn_pool(gates, None)}


def int8_grid(run: Run) -> dict[str, Any] | None:
    """Inference of one 320-unit layer in int8 on the Figure 4 grid, through both APIs: the eager
    ``torch.ao.quantization.quantize_dynamic`` (fbgemm) and :func:`torchqrnn.quantization.quantize_int8`
    (PT2E, X86 Inductor quantizer, compiled: oneDNN's int8 matmul), against the QRNN and ``nn.LSTM`` in
    float32 (and ``nn.LSTM`` under ``quantize_dynamic``), each row beside its floor (the int8 GEMM alone
    plus the pooling alone), with both int8 outputs' error against float32."""
    if run.device.type != "cpu":
        return None
    import warnings

    from ..quantization import quantize_int8

    batches, lengths = ([8, 16], [32, 64]) if run.quick else (BATCHES, LENGTHS)
    size = 320
    qrnn, lstm = QRNN(size, size).eval(), nn.LSTM(size, size).eval()
    cpu = machine_info()["cpu"]
    heading = (
        "int8 inference (quantize_dynamic; quantize_int8: PT2E, X86 Inductor quantizer, compiled), "
        f"{size}-unit layer, on {cpu}, {torch.get_num_threads()} threads"
    )
    with warnings.catch_warnings():  # torch.ao's eager quantization is deprecated for torchao
        warnings.simplefilter("ignore")
        quantize = torch.ao.quantization.quantize_dynamic
        qrnn_dynamic = quantize(qrnn, {nn.Linear}, dtype=torch.qint8, inplace=False)
        lstm_int8 = quantize(lstm, {nn.LSTM}, dtype=torch.qint8, inplace=False)
        try:
            qrnn_pt2e = quantize_int8(qrnn, torch.randn(lengths[0], batches[0], size))
        except ImportError as error:  # torchao, an extra: the other sections' figures still stand
            run.heading(heading)
            run.print(f"   skipped: {error}")
            return None
        qrnn_pt2e(torch.randn(lengths[0], batches[0], size))  # compiles (once: symbolic sizes)
    run.heading(heading)
    run.print(
        "   floor = int8 GEMM alone (oneDNN qlinear, input already quantized) + pooling alone; "
        "dyn = quantize_dynamic, PT2E = quantize_int8"
    )
    header = (
        f"   {'B':>4} {'T':>4} | {'fp32':>7} {'dyn':>7} {'PT2E':>7} {'floor':>13} ms | fp32/dyn fp32/PT2E | "
        "LSTM/dyn LSTM/PT2E [LSTM int8/PT2E] | PT2E/floor | error dyn PT2E"
    )
    run.print(header)
    cells: dict[str, Any] = {}
    with torch.no_grad():
        for batch in batches:
            for steps in lengths:
                x = torch.randn(steps, batch, size)
                candidates: dict[str, Callable[[], object]] = {
                    "qrnn_fp32": functools.partial(qrnn, x),
                    "qrnn_dynamic": functools.partial(qrnn_dynamic, x),
                    "qrnn_pt2e": functools.partial(qrnn_pt2e, x),
                    "lstm_fp32": functools.partial(lstm, x),
                    "lstm_int8": functools.partial(lstm_int8, x),
                    **_int8_floor(qrnn.layers[0], x),  # type: ignore[arg-type]
                }
                samples = run.time(candidates, min_seconds=0.01)
                gemm, pool = samples["int8_gemm"].seconds, samples["pool"].seconds
                floor = Samples([g + p for g, p in zip(gemm, pool, strict=True)])
                expected = qrnn(x)[0]
                errors = {
                    name: float((model(x)[0] - expected).norm() / expected.norm())
                    for name, model in (("dynamic", qrnn_dynamic), ("pt2e", qrnn_pt2e))
                }
                ms = {name: s.median * 1e3 for name, s in samples.items()}
                cell: dict[str, Any] = {
                    "ms": ms,
                    "floor_ms": floor.median * 1e3,
                    "qrnn_fp32_over_dynamic": ratio(samples["qrnn_fp32"], samples["qrnn_dynamic"]),
                    "qrnn_fp32_over_pt2e": ratio(samples["qrnn_fp32"], samples["qrnn_pt2e"]),
                    "lstm_fp32_over_dynamic": ratio(samples["lstm_fp32"], samples["qrnn_dynamic"]),
                    "lstm_fp32_over_pt2e": ratio(samples["lstm_fp32"], samples["qrnn_pt2e"]),
                    "lstm_int8_over_pt2e": ratio(samples["lstm_int8"], samples["qrnn_pt2e"]),
                    "pt2e_over_floor": ratio(samples["qrnn_pt2e"], floor),
                    "relative_error": errors["pt2e"],
                    "relative_error_dynamic": errors["dynamic"],
                }
                cells[f"{batch}x{steps}"] = cell
                run.print(
                    f"   {batch:>4} {steps:>4} | {ms['qrnn_fp32']:>7.2f} {ms['qrnn_dynamic']:>7.2f} "
                    f"{ms['qrnn_pt2e']:>7.2f} {cell['floor_ms']:>6.2f} "
                    f"({ms['int8_gemm']:.1f}+{ms['pool']:.1f}) | "
                    f"{times(cell['qrnn_fp32_over_dynamic'], width=8)} "
                    f"{times(cell['qrnn_fp32_over_pt2e'], width=9)} | "
                    f"{times(cell['lstm_fp32_over_dynamic'], width=8)} "
                    f"{times(cell['lstm_fp32_over_pt2e'], width=9)} "
                    f"[{times(cell['lstm_int8_over_pt2e'], width=7)}]{'':>8} | "
                    f"{times(cell['pt2e_over_floor'], width=10)} | "
                    f"{100 * errors['dynamic']:>4.1f}% {100 * errors['pt2e']:.1f}%"
                )
    for key, words in (
        ("qrnn_fp32_over_dynamic", "QRNN fp32 / quantize_dynamic"),
        ("qrnn_fp32_over_pt2e", "QRNN fp32 / quantize_int8"),
        ("lstm_fp32_over_dynamic", "LSTM fp32 / QRNN quantize_dynamic"),
        ("lstm_fp32_over_pt2e", "LSTM fp32 / QRNN quantize_int8"),
        ("pt2e_over_floor", "quantize_int8 / its floor"),
    ):
        values = [cell[key] for cell in cells.values()]
        run.print(f"   {words}: {times(min(values))} to {times(max(values))}")
    run.print(
        f"   largest output error: quantize_dynamic "
        f"{100 * max(c['relative_error_dynamic'] for c in cells.values()):.2f}%, quantize_int8 "
        f"{100 * max(c['relative_error'] for c in cells.values()):.2f}%"
    )
    return {"batches": batches, "lengths": lengths, "cpu": cpu, "cells": cells}


def stream_step_candidates(size: int, device: torch.device) -> dict[str, Callable[[], object]]:
    """One step at batch 1 through each module users stream with, and the LSTM cells to beat."""
    layer = QRNNLayer(size, size, window=2, save_prev_x=True, device=device).eval()
    qrnn1 = QRNN(size, size, 1, window=2, save_prev_x=True, device=device).eval()
    qrnn2 = QRNN(size, size, 2, window=[2, 1], save_prev_x=True, device=device).eval()
    streamer = StreamingQRNN(QRNN(size, size, 2, window=[2, 1], device=device).eval())
    cell1, cell2 = nn.LSTMCell(size, size, device=device), nn.LSTMCell(size, size, device=device)
    x = torch.randn(1, 1, size, device=device)
    state = streamer.initial_state(1)
    hc = (torch.zeros(1, size, device=device), torch.zeros(1, size, device=device))

    def two_cells() -> None:
        h, _ = cell1(x[0], hc)
        cell2(h, hc)

    # the floors: each layer's matrix-vector product (addmv, as fast as any of torch's on both CPUs seen)
    layers: list[QRNNLayer] = list(qrnn2.layers)  # type: ignore[arg-type]
    products = [(layer.linear.weight.detach(), layer.linear.bias.detach()) for layer in layers]
    inputs = [torch.randn(w.shape[1], device=device) for w, _ in products]

    def floor(count: int) -> Callable[[], None]:
        def run() -> None:
            for (weight, bias), source in zip(products[:count], inputs[:count], strict=True):
                torch.addmv(bias, weight, source)

        return run

    stepper1, stepper2 = Stepper(qrnn1), Stepper(qrnn2)
    x_step = x[0]
    return {
        "qrnn_layer": lambda: layer(x),
        "qrnn_1": lambda: qrnn1(x),
        "qrnn_2": lambda: qrnn2(x),
        "streaming_qrnn_2": lambda: streamer(x, *state),
        "stepper_1": lambda: stepper1(x_step),
        "stepper_2": lambda: stepper2(x_step),
        "lstm_cell_1": lambda: cell1(x[0], hc),
        "lstm_cell_2": two_cells,
        "floor_1": floor(1),
        "floor_2": floor(2),
    }


def streaming_modules(run: Run) -> dict[str, Any]:
    """One streaming step, batch 1, 320 units (window 2 then 1), through QRNNLayer, QRNN (1 and 2 layers)
    and StreamingQRNN, against one and two nn.LSTMCells: medians of interleaved rounds, and each call's
    latency distribution (median and p99; under ``--load N`` this is the figure that matters)."""
    size = 320
    run.heading(f"Streaming through the modules, batch 1, {size} units, one step per call")
    candidates = stream_step_candidates(size, run.device)
    with torch.no_grad():
        samples = run.time(
            candidates, budget=Budget(max(run.budget.rounds, 15), run.budget.min_seconds * 2.5)
        )
        calls = latencies(candidates, calls=200 if run.quick else 3000)
    result: dict[str, Any] = {
        "us": {name: s.median * 1e6 for name, s in samples.items()},
        "p50_us": {name: percentile(v, 50) * 1e6 for name, v in calls.items()},
        "p99_us": {name: percentile(v, 99) * 1e6 for name, v in calls.items()},
        "lstm_cell_1_over_qrnn_1": ratio(samples["lstm_cell_1"], samples["qrnn_1"]),
        "lstm_cell_2_over_qrnn_2": ratio(samples["lstm_cell_2"], samples["qrnn_2"]),
        "lstm_cell_2_over_streaming_qrnn_2": ratio(samples["lstm_cell_2"], samples["streaming_qrnn_2"]),
        "qrnn_1_over_layer": ratio(samples["qrnn_1"], samples["qrnn_layer"]),
        "qrnn_layer_over_floor": ratio(samples["qrnn_layer"], samples["floor_1"]),
        "qrnn_1_over_floor": ratio(samples["qrnn_1"], samples["floor_1"]),
        "qrnn_2_over_floors": ratio(samples["qrnn_2"], samples["floor_2"]),
        "streaming_qrnn_2_over_floors": ratio(samples["streaming_qrnn_2"], samples["floor_2"]),
        "stepper_1_over_floor": ratio(samples["stepper_1"], samples["floor_1"]),
        "stepper_2_over_floors": ratio(samples["stepper_2"], samples["floor_2"]),
        "lstm_cell_1_over_stepper_1": ratio(samples["lstm_cell_1"], samples["stepper_1"]),
        "lstm_cell_2_over_stepper_2": ratio(samples["lstm_cell_2"], samples["stepper_2"]),
        "cpu": machine_info()["cpu"],
    }
    run.print("   median of rounds: " + ", ".join(f"{n} {us:.1f} us" for n, us in result["us"].items()))
    run.print(
        "   per call, p50 / p99: "
        + ", ".join(f"{n} {result['p50_us'][n]:.0f}/{result['p99_us'][n]:.0f} us" for n in candidates)
    )
    run.print(
        f"   nn.LSTMCell / QRNN(1 layer) = {times(result['lstm_cell_1_over_qrnn_1'])}, 2 nn.LSTMCells / "
        f"QRNN(2 layers) = {times(result['lstm_cell_2_over_qrnn_2'])}, / StreamingQRNN(2 layers) = "
        f"{times(result['lstm_cell_2_over_streaming_qrnn_2'])}; QRNN(1 layer) / QRNNLayer = "
        f"{times(result['qrnn_1_over_layer'])}"
    )
    run.print(
        f"   against the floors (each layer's matrix-vector product, summed; CPU: {result['cpu']}): "
        f"QRNNLayer {result['qrnn_layer_over_floor']:.2f}x, "
        f"QRNN(1 layer) {result['qrnn_1_over_floor']:.2f}x, "
        f"QRNN(2 layers) {result['qrnn_2_over_floors']:.2f}x, "
        f"StreamingQRNN(2 layers) {result['streaming_qrnn_2_over_floors']:.2f}x"
    )
    run.print(
        f"   Stepper (state inside, one kernel call a step): QRNN(1 layer) "
        f"{result['stepper_1_over_floor']:.2f}x its floor, QRNN(2 layers) "
        f"{result['stepper_2_over_floors']:.2f}x the summed floors; nn.LSTMCell / Stepper(1 layer) = "
        f"{times(result['lstm_cell_1_over_stepper_1'])}, "
        f"2 nn.LSTMCells / Stepper(2 layers) = {times(result['lstm_cell_2_over_stepper_2'])}"
    )
    return result


# report key -> section, in the order they run and print
SECTIONS: dict[str, Callable[[Run], dict[str, Any] | None]] = {
    "figure4": figure4_grid,
    "ptb_training": ptb_training,
    "long_sequence": long_sequence_training,
    "streaming": streaming,
    "memory": training_memory,
    "bf16": bf16_autocast,
    "int8": int8_grid,
    "streaming_modules": streaming_modules,
}


def plot_figure4(report: dict[str, Any], path: str) -> None:
    """The Figure 4 grid as a PNG heatmap (log colour scale centred on 1x)."""
    from .heatmap import save_ratio_heatmap

    grid = report["figure4"]
    save_ratio_heatmap(
        [[grid["cells"][f"{b}x{t}"]["speedup"] for t in grid["lengths"]] for b in grid["batches"]],
        rows=[str(b) for b in grid["batches"]],
        columns=[str(t) for t in grid["lengths"]],
        path=path,
        title=f"QRNN layer inference speed-up over nn.LSTM ({report['device']})",
        xlabel="sequence length",
        ylabel="batch size",
        colorbar_label="nn.LSTM time / QRNN time",
    )


def parser() -> argparse.ArgumentParser:
    result = command_parser("layer", __doc__)
    result.add_argument("--quick", action="store_true", help="small shapes and few rounds: a smoke run")
    result.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda when available)")
    result.add_argument(
        "--rounds", type=positive_int, default=None, help="interleaved rounds per measurement"
    )
    result.add_argument(
        "--only",
        metavar="SECTION",
        action="append",
        choices=list(SECTIONS),
        help=f"run only this section (repeatable; one of {', '.join(SECTIONS)}; default: all)",
    )
    result.add_argument(
        "--load",
        metavar="N",
        type=int,
        default=0,
        help="run N busy processes (a spinning Python each) beside every measurement, as on a shared "
        "machine; the streaming_modules section then shows each step's median and p99 under that load",
    )
    result.add_argument("--json", metavar="PATH", help="write the results as JSON")
    result.add_argument(
        "--plot", metavar="PATH", help="write the Figure 4 grid as a PNG heatmap (matplotlib)"
    )
    return result


def main(argv: list[str] | None = None) -> int:
    args_parser = parser()
    args = args_parser.parse_args(argv)
    # every option is checked before the first measurement, so that a bad one fails at once
    device = check_device(args_parser, args.device)
    sections = args.only or list(SECTIONS)
    if args.plot:
        if "figure4" not in sections:
            args_parser.error("--plot draws the figure4 section, which --only leaves out")
        check_plotting(args_parser, "--plot")
        check_output_path(args_parser, "--plot", args.plot)
    if args.json:
        check_output_path(args_parser, "--json", args.json)
    if args.load < 0:
        args_parser.error(f"--load: expected a number of processes >= 0, got {args.load}")
    budget = Budget(rounds=2, min_seconds=0.002) if args.quick else Budget()
    if args.rounds:
        budget.rounds = args.rounds

    torch.manual_seed(0)
    run = Run(device, budget, args.quick, plan=sections)
    info = machine_info()
    run.print(f"# torchqrnn benchmark on {device}: {info['cpu']}, {info['torch_threads']} threads")
    run.print(f"# versions: {info['versions']}")
    run.print("# times: medians of interleaved rounds; ratios: medians of per-round ratios")
    report: dict[str, Any] = {"device": str(device), "machine": info, "quick": args.quick, "load": args.load}
    if args.load:
        run.print(f"# load: {args.load} busy processes beside every measurement")
    run.print(f"# {len(sections)} sections, about {duration(run.time_left())} on a quiet 2-core machine")
    report["sections"] = {}
    with busy_processes(args.load):
        for name in sections:
            run.begin(name)
            report[name] = SECTIONS[name](run)
            report["sections"][name] = run.end()
    run.print(f"\n# done in {duration(sum(run.seconds.values()))}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=2)
    if args.plot:
        plot_figure4(report, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
