"""ForgetMult on CPU: the numba kernel against the reference loop and the memory-bandwidth floor.

    python benchmarks/forget_mult.py            # the full table (about a minute)
    python benchmarks/forget_mult.py --quick    # a smoke run for CI
    python benchmarks/forget_mult.py --json out.json

For each (T, B, H) it times, interleaved in the same rounds (see torchqrnn.bench.timing): the kernel's
forward, its forward+backward, and the same for the reference loop (``backend="reference"``) and for the
seeds' loop (one ``unbind``, then a step per time, as salesforce's CPU fallback). The floor is the bytes
that must move (forward: read f, x, write h; forward+backward: 9 tensors of T*B*H) over this machine's
copy bandwidth, measured on buffers written beforehand. It also measures the first call in a fresh process,
with a cold and with a warm numba cache, next to numba's own start-up (import + first call of a trivial
cached function), which no kernel can go below.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import textwrap

import torch

import torchqrnn
from torchqrnn.bench.timing import CopyBandwidth, interleaved, machine_info, ratio, run_fresh_python

SHAPES = [(105, 20, 640), (1024, 1, 320), (64, 256, 320)]
# (title, width, format, result key) of the printed table
COLUMNS = [
    ("T, B, H", 13, "", "shape"),
    ("GB/s", 5, ".1f", "bandwidth_gb_s"),
    ("fwd ms", 6, ".3f", "kernel_fwd_ms"),
    ("floor", 6, ".3f", "floor_fwd_ms"),
    ("x floor", 7, ".2f", "fwd_over_floor"),
    ("f+b ms", 6, ".3f", "kernel_fb_ms"),
    ("floor", 6, ".3f", "floor_fb_ms"),
    ("x floor", 7, ".2f", "fb_over_floor"),
    ("ref f+b", 7, ".2f", "reference_fb_ms"),
    ("ref/kernel", 10, ".1f", "reference_over_kernel_fb"),
    ("seeds f+b", 9, ".2f", "seeds_fb_ms"),
    ("seeds/kernel", 12, ".1f", "seeds_over_kernel_fb"),
    ("ref/kernel fwd", 14, ".1f", "reference_over_kernel_fwd"),
]
QUICK_SHAPES = [(33, 4, 65)]


def seeds_loop(f: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """salesforce's CPU path: unbind over time, one element-wise step each."""
    h, outs = None, []
    for f_t, x_t in zip(f.unbind(0), x.unbind(0), strict=True):
        h = f_t * x_t if h is None else f_t * x_t + (1 - f_t) * h
        outs.append(h)
    return torch.stack(outs)


def time_shape(steps: int, batch: int, hidden: int, copy: CopyBandwidth, rounds: int) -> dict[str, float]:
    f = torch.rand(steps, batch, hidden, requires_grad=True)
    x = torch.randn(steps, batch, hidden, requires_grad=True)
    grad = torch.randn(steps, batch, hidden)

    def forward(backend: str):
        def run() -> None:
            with torch.no_grad():
                torchqrnn.forget_mult(f, x, backend=backend)

        return run

    def forward_backward(fn):
        def run() -> None:
            f.grad = x.grad = None
            fn().backward(grad)

        return run

    kernel_fwd, kernel_fb = (
        forward("cpu"),
        forward_backward(lambda: torchqrnn.forget_mult(f, x, backend="cpu")),
    )
    # Two groups of rounds. Against the floor, the kernel runs beside the copy alone: the reference loops
    # allocate thousands of small tensors, which leaves glibc returning and re-faulting the kernel's large
    # buffers, a cost of the neighbour rather than of the kernel. Against the loops, all run side by side.
    samples = interleaved({"kernel_fwd": kernel_fwd, "kernel_fb": kernel_fb, "copy": copy}, rounds=rounds)
    samples |= {
        f"{name}_vs_loops": s
        for name, s in interleaved(
            {
                "kernel_fwd": kernel_fwd,
                "kernel_fb": kernel_fb,
                "reference_fwd": forward("reference"),
                "reference_fb": forward_backward(lambda: torchqrnn.forget_mult(f, x, backend="reference")),
                "seeds_fb": forward_backward(lambda: seeds_loop(f, x)),
            },
            rounds=rounds,
        ).items()
    }
    tensor_bytes = steps * batch * hidden * 4
    bandwidth = copy.bytes_moved / samples["copy"].median
    floor_fwd, floor_fb = 3 * tensor_bytes / bandwidth, 9 * tensor_bytes / bandwidth
    return {
        "bandwidth_gb_s": bandwidth / 1e9,
        "kernel_fwd_ms": samples["kernel_fwd"].median * 1e3,
        "kernel_fb_ms": samples["kernel_fb"].median * 1e3,
        "reference_fwd_ms": samples["reference_fwd_vs_loops"].median * 1e3,
        "reference_fb_ms": samples["reference_fb_vs_loops"].median * 1e3,
        "seeds_fb_ms": samples["seeds_fb_vs_loops"].median * 1e3,
        "floor_fwd_ms": floor_fwd * 1e3,
        "floor_fb_ms": floor_fb * 1e3,
        "fwd_over_floor": copy.floor_ratio(samples["kernel_fwd"], samples["copy"], 3 * tensor_bytes),
        "fb_over_floor": copy.floor_ratio(samples["kernel_fb"], samples["copy"], 9 * tensor_bytes),
        "reference_over_kernel_fwd": ratio(samples["reference_fwd_vs_loops"], samples["kernel_fwd_vs_loops"]),
        "reference_over_kernel_fb": ratio(samples["reference_fb_vs_loops"], samples["kernel_fb_vs_loops"]),
        "seeds_over_kernel_fb": ratio(samples["seeds_fb_vs_loops"], samples["kernel_fb_vs_loops"]),
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
        env = {"NUMBA_CACHE_DIR": cache}
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="one tiny shape, few rounds (CI smoke run)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds per shape")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args()
    shapes = QUICK_SHAPES if args.quick else SHAPES
    rounds = args.rounds or (3 if args.quick else 15)

    torchqrnn.forget_mult(torch.rand(2, 1, 1), torch.rand(2, 1, 1))  # load the kernels before timing
    info = machine_info()
    copy = CopyBandwidth(16 if args.quick else 128)
    print(f"# ForgetMult on {info['cpu']}, {info['torch_threads']} threads; versions {info['versions']}")
    print(
        "# times: medians of interleaved rounds; ratios: medians of per-round ratios. floor: the bytes that"
    )
    print(
        "# must move over the bandwidth of a large copy between pre-written buffers, timed in the same rounds"
    )
    header = " | ".join(f"{title:>{width}}" for title, width, _, _ in COLUMNS)
    print(header)
    print("-" * len(header))
    results = {}
    for steps, batch, hidden in shapes:
        row = {"shape": f"{steps}, {batch}, {hidden}", **time_shape(steps, batch, hidden, copy, rounds)}
        results[f"{steps}x{batch}x{hidden}"] = row
        print(" | ".join(f"{row[key]:>{width}{spec}}" for _, width, spec, key in COLUMNS))
    first = first_calls()
    print(
        f"first call in a fresh process (105x20x640): cold cache {first['cold_forward_s']:.2f} s "
        f"(fwd+bwd {first['cold_forward_backward_s']:.2f} s), warm cache {first['warm_forward_s']:.2f} s "
        f"(fwd+bwd {first['warm_forward_backward_s']:.2f} s); numba's own start-up floor "
        f"{first['numba_startup_floor_s']:.2f} s"
    )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(
                {"machine": info, "shapes": results, "first_call": first},
                out,
                indent=2,
            )


if __name__ == "__main__":
    main()
