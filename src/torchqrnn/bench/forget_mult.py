"""``python -m torchqrnn.bench forget-mult``: the ForgetMult CPU kernels against their floor and the loops.

    python -m torchqrnn.bench forget-mult                 # the full table (about a minute)
    python -m torchqrnn.bench forget-mult --quick         # a smoke run for CI
    python -m torchqrnn.bench forget-mult --shape 512x8x256 --json out.json

For each (T, B, H) it times, interleaved in the same rounds (see torchqrnn.bench.timing), the kernel's
forward and its forward+backward against their floor, and then, in a second group of rounds, against the
reference loop (``backend="reference"``) and the seeds' loop (one ``unbind``, then a step per time, as
salesforce's CPU fallback).

The floor is the time to move the same bytes in the same cache state: a plain element-wise numba kernel, on
the same threads as the kernel (the same serial or parallel choice), that reads exactly the tensors the
kernel reads and writes freshly allocated tensors of exactly the sizes the kernel writes, timed in the same
rounds on the same input buffers. Forward: read f and x, write h (3 tensors of T*B*H); forward+backward adds
reading f, x, h and the incoming gradient and writing df and dx (9 in all). It does none of the recurrence's
work, so a kernel at 1.0x its floor is as fast as memory allows, and "x floor" below 1 can only be noise.
(A floor from a large copy's bandwidth would be the DRAM rate, which a working set that fits in the caches
beats.) "GB/s" is the floor's rate over those bytes.

Last, the first call in a fresh process, with a cold and with a warm kernel cache (``TORCHQRNN_CACHE_DIR``
pointed at an empty folder), next to numba's own start-up (import and first call of a trivial cached
function), which no kernel can go below.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import textwrap
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

import torchqrnn

from ..ops._cpu import JOBS_PER_THREAD, claim, run_jobs, schedule
from ..ops._numba_cache import njit
from .options import check_output_path, command_parser, positive_int
from .timing import interleaved, machine_info, ratio, run_fresh_python

SHAPES = [(105, 20, 640), (1024, 1, 320), (64, 256, 320)]
QUICK_SHAPES = [(33, 4, 65)]
# (title, width, format, result key) of the printed table
COLUMNS = [
    ("T, B, H", 13, "", "shape"),
    ("fwd ms", 7, ".3f", "kernel_fwd_ms"),
    ("floor", 7, ".3f", "floor_fwd_ms"),
    ("x floor", 7, ".2f", "fwd_over_floor"),
    ("f+b ms", 7, ".3f", "kernel_fb_ms"),
    ("floor", 7, ".3f", "floor_fb_ms"),
    ("x floor", 7, ".2f", "fb_over_floor"),
    ("GB/s", 5, ".1f", "floor_fb_gb_s"),
    ("ref f+b", 8, ".2f", "reference_fb_ms"),
    ("ref/kernel", 10, ".1f", "reference_over_kernel_fb"),
    ("seeds f+b", 9, ".2f", "seeds_fb_ms"),
    ("seeds/kernel", 12, ".1f", "seeds_over_kernel_fb"),
    ("ref/kernel fwd", 14, ".1f", "reference_over_kernel_fwd"),
]


# ---------------------------------------------------------------------------------------------------------
# The floor: element-wise passes over flat buffers, split in ``jobs`` equal ranges (run in parallel or not).


# Loops index slices from 0, as the kernels do: with ``f[lo + i]`` numba cannot prove the index non-negative
# and its wraparound checks block vectorisation, which would make the floor slower than the kernel.
@njit(cache=True, nogil=True, boundscheck=False)
def _read2_write1(f, x, h, lo, hi):  # pragma: no cover - numba
    f, x, h = f[lo:hi], x[lo:hi], h[lo:hi]
    for i in range(hi - lo):
        h[i] = f[i] * x[i]


@njit(cache=True, nogil=True, boundscheck=False)
def _read4_write2(f, x, h, g, df, dx, lo, hi):  # pragma: no cover - numba
    f, x, h, g, df, dx = f[lo:hi], x[lo:hi], h[lo:hi], g[lo:hi], df[lo:hi], dx[lo:hi]
    for i in range(hi - lo):
        df[i] = (x[i] - h[i]) * g[i]
        dx[i] = f[i] * g[i]


@njit(cache=True, nogil=True, boundscheck=False)
def _floor_forward_jobs(f, x, h, jobs, counter):  # pragma: no cover - numba
    per = (h.size + jobs - 1) // jobs
    while True:  # jobs claimed one at a time, as the kernels claim theirs (ops/_cpu.py: run_jobs)
        j = claim(counter)
        if j >= jobs:
            return
        _read2_write1(f, x, h, j * per, min(h.size, (j + 1) * per))


@njit(cache=True, nogil=True, boundscheck=False)
def _floor_backward_jobs(f, x, h, g, df, dx, jobs, counter):  # pragma: no cover - numba
    per = (h.size + jobs - 1) // jobs
    while True:
        j = claim(counter)
        if j >= jobs:
            return
        _read4_write2(f, x, h, g, df, dx, j * per, min(h.size, (j + 1) * per))


class Floor:
    """The floor's two passes for contiguous (T, B, H) tensors, on the kernel's own thread schedule: the
    same threads, the same number of jobs per thread, claimed the same way."""

    def __init__(self, steps: int, batch: int, hidden: int) -> None:
        # the kernel merges B into H for contiguous operands, then schedules (T, 1, B*H)
        self.threads, _ = schedule(steps, 1, batch * hidden)
        self.jobs = JOBS_PER_THREAD * self.threads

    def forward(self, f: np.ndarray, x: np.ndarray, h: np.ndarray) -> None:
        run_jobs(_floor_forward_jobs, (f, x, h, self.jobs), self.threads)

    def backward(self, *arrays: np.ndarray) -> None:
        run_jobs(_floor_backward_jobs, (*arrays, self.jobs), self.threads)


def _flat(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().reshape(-1)


# ---------------------------------------------------------------------------------------------------------


def seeds_loop(f: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """salesforce's CPU path: unbind over time, one element-wise step each."""
    h, outs = None, []
    for f_t, x_t in zip(f.unbind(0), x.unbind(0), strict=True):
        h = f_t * x_t if h is None else f_t * x_t + (1 - f_t) * h
        outs.append(h)
    return torch.stack(outs)


def time_shape(steps: int, batch: int, hidden: int, rounds: int) -> dict[str, float]:
    f = torch.rand(steps, batch, hidden, requires_grad=True)
    x = torch.randn(steps, batch, hidden, requires_grad=True)
    grad = torch.randn(steps, batch, hidden)
    floor = Floor(steps, batch, hidden)
    f_flat, x_flat, grad_flat = _flat(f), _flat(x), _flat(grad)

    def forward(backend: str) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                torchqrnn.forget_mult(f, x, backend=backend)

        return run

    def forward_backward(fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            f.grad = x.grad = None
            fn().backward(grad)

        return run

    def floor_forward() -> None:
        floor.forward(f_flat, x_flat, _flat(torch.empty_like(x)))

    def floor_forward_backward() -> None:
        h = _flat(torch.empty_like(x))
        floor.forward(f_flat, x_flat, h)
        floor.backward(f_flat, x_flat, h, grad_flat, _flat(torch.empty_like(f)), _flat(torch.empty_like(x)))

    kernel_fwd = forward("cpu")
    kernel_fb = forward_backward(lambda: torchqrnn.forget_mult(f, x, backend="cpu"))
    # Two groups of rounds. Against the floor, the kernel runs beside the floor alone: the reference loops
    # allocate thousands of small tensors, which leaves glibc returning and re-faulting the kernel's large
    # buffers, a cost of the neighbour rather than of the kernel. Against the loops, all run side by side.
    samples = interleaved(
        {
            "kernel_fwd": kernel_fwd,
            "floor_fwd": floor_forward,
            "kernel_fb": kernel_fb,
            "floor_fb": floor_forward_backward,
        },
        rounds=rounds,
    )
    loops = interleaved(
        {
            "kernel_fwd": kernel_fwd,
            "kernel_fb": kernel_fb,
            "reference_fwd": forward("reference"),
            "reference_fb": forward_backward(lambda: torchqrnn.forget_mult(f, x, backend="reference")),
            "seeds_fb": forward_backward(lambda: seeds_loop(f, x)),
        },
        rounds=rounds,
    )
    tensor_bytes = steps * batch * hidden * f.element_size()
    return {
        "kernel_fwd_ms": samples["kernel_fwd"].median * 1e3,
        "kernel_fb_ms": samples["kernel_fb"].median * 1e3,
        "floor_fwd_ms": samples["floor_fwd"].median * 1e3,
        "floor_fb_ms": samples["floor_fb"].median * 1e3,
        "floor_fb_gb_s": 9 * tensor_bytes / samples["floor_fb"].median / 1e9,
        "fwd_over_floor": ratio(samples["kernel_fwd"], samples["floor_fwd"]),
        "fb_over_floor": ratio(samples["kernel_fb"], samples["floor_fb"]),
        "reference_fwd_ms": loops["reference_fwd"].median * 1e3,
        "reference_fb_ms": loops["reference_fb"].median * 1e3,
        "seeds_fb_ms": loops["seeds_fb"].median * 1e3,
        "reference_over_kernel_fwd": ratio(loops["reference_fwd"], loops["kernel_fwd"]),
        "reference_over_kernel_fb": ratio(loops["reference_fb"], loops["kernel_fb"]),
        "seeds_over_kernel_fb": ratio(loops["seeds_fb"], loops["kernel_fb"]),
    }


_FIRST_CALL = textwrap.dedent(
    """
    import time, torch, torchqrnn
    f = torch.rand(105, 20, 640, requires_grad=True)
    x = torch.randn(105, 20, 640, requires_grad=True)
    start = time.perf_counter()
    out = torchqrnn.forget_mult(f, x)
    forward = time.perf_counter() - start
    out.sum().backward()
    print(forward, time.perf_counter() - start)
    """
)

_NUMBA_FLOOR = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {folder!r})
    import torch
    start = time.perf_counter()
    import numba, numpy, trivial
    trivial.first(numpy.zeros(3))
    print(time.perf_counter() - start)
    """
)


def first_calls() -> dict[str, float]:
    """Seconds of the first forward (and forward+backward) in fresh processes, cold and warm cache."""
    with tempfile.TemporaryDirectory() as cache:
        env = {"TORCHQRNN_CACHE_DIR": os.path.join(cache, "torchqrnn"), "NUMBA_CACHE_DIR": cache}
        cold = [float(v) for v in run_fresh_python(_FIRST_CALL, env).split()]
        warm = [float(v) for v in run_fresh_python(_FIRST_CALL, env).split()]
        with open(f"{cache}/trivial.py", "w") as module:
            module.write("from numba import njit\n@njit(cache=True)\ndef first(a):\n    return a[0] + 1.0\n")
        run_fresh_python(_NUMBA_FLOOR.format(folder=cache), env)
        numba_floor = float(run_fresh_python(_NUMBA_FLOOR.format(folder=cache), env))
    return {
        "cold_forward_s": cold[0],
        "cold_forward_backward_s": cold[1],
        "warm_forward_s": warm[0],
        "warm_forward_backward_s": warm[1],
        "numba_startup_floor_s": numba_floor,
    }


def _shape(text: str) -> tuple[int, int, int]:
    """argparse type: ``TxBxH``, three integers >= 1."""
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) >= 1 for p in parts):
        raise argparse.ArgumentTypeError(
            f"expected T x B x H as three integers >= 1 like 105x20x640, got {text!r}"
        )
    steps, batch, hidden = (int(p) for p in parts)
    return steps, batch, hidden


def parser() -> argparse.ArgumentParser:
    result = command_parser("forget-mult", __doc__)
    result.add_argument("--quick", action="store_true", help="one tiny shape, few rounds (CI smoke run)")
    result.add_argument(
        "--shape",
        type=_shape,
        action="append",
        metavar="TxBxH",
        help=f"a shape to time (repeatable; default: {', '.join('x'.join(map(str, s)) for s in SHAPES)})",
    )
    result.add_argument("--rounds", type=positive_int, default=None, help="interleaved rounds per shape")
    result.add_argument("--no-first-call", action="store_true", help="skip the fresh-process first-call runs")
    result.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    return result


def main(argv: list[str] | None = None) -> int:
    args_parser = parser()
    args = args_parser.parse_args(argv)
    if args.json:
        check_output_path(args_parser, "--json", args.json)
    shapes = args.shape or (QUICK_SHAPES if args.quick else SHAPES)
    rounds = args.rounds or (3 if args.quick else 15)

    torchqrnn.forget_mult(torch.rand(2, 1, 1), torch.rand(2, 1, 1))  # load the kernels before timing
    info = machine_info()
    print(f"# ForgetMult on {info['cpu']}, {info['torch_threads']} threads; versions {info['versions']}")
    print("# times: medians of interleaved rounds; ratios: medians of per-round ratios")
    print(
        "# floor: the same bytes moved by a plain element-wise kernel on the same threads and buffers, in the"
    )
    print("# same rounds: forward reads f, x and writes h (3 x T*B*H floats); forward+backward moves 9 (also")
    print("# reads f, x, h, dh and writes df, dx). 1.0x = as fast as memory allows; below 1 is noise.")
    header = " | ".join(f"{title:>{width}}" for title, width, _, _ in COLUMNS)
    print(header)
    print("-" * len(header), flush=True)
    results = {}
    for steps, batch, hidden in shapes:
        row: dict[str, Any] = {
            "shape": f"{steps}, {batch}, {hidden}",
            **time_shape(steps, batch, hidden, rounds),
        }
        results[f"{steps}x{batch}x{hidden}"] = row
        print(" | ".join(f"{row[key]:>{width}{spec}}" for _, width, spec, key in COLUMNS), flush=True)
    report: dict[str, Any] = {"machine": info, "shapes": results}
    if not args.no_first_call:
        print("first call in a fresh process (105x20x640): ", end="", flush=True)
        first = report["first_call"] = first_calls()
        print(
            f"cold cache {first['cold_forward_s']:.2f} s (fwd+bwd {first['cold_forward_backward_s']:.2f} s), "
            f"warm cache {first['warm_forward_s']:.2f} s (fwd+bwd {first['warm_forward_backward_s']:.2f} s); "
            f"numba's own start-up floor {first['numba_startup_floor_s']:.2f} s"
        )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
