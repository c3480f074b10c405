"""ForgetMult on a GPU: the Triton kernels against the HBM floor and the reference loop.

    python benchmarks/gpu.py                     # the full table on a CUDA device
    python benchmarks/gpu.py --json out.json     # also write the results as JSON
    TRITON_INTERPRET=1 python benchmarks/gpu.py --interpret-smoke   # a tiny CPU run through the interpreter

For each (T, B, H) it times, interleaved in the same rounds (one sample per candidate per round, rotating
order, as torchqrnn.bench.timing does on CPU, but with the GPU synchronised around every sample and timed
with CUDA events): forward and forward+backward of the Triton sequential kernel, of the chunked scan (forced,
with the chunk the heuristic would use for that many columns), and of the heuristic's own choice; the
reference loop (``backend="reference"``); and a large device-to-device copy. The floor is the bytes that must
move (forward: read f, x, write h, 3 tensors of T*B*H; forward+backward: 9) over the copy's bandwidth in the
same round; ratios are medians of per-round ratios.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable

import torch

import torchqrnn
from torchqrnn.bench.timing import CopyBandwidth, Samples, machine_info, ratio

SHAPES = [(105, 20, 640), (1024, 1, 320), (64, 256, 320), (4096, 1, 1024)]
SMOKE_SHAPES = [(40, 1, 16)]
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
            kernels.choose_chunk = policy
            with torch.no_grad():
                torchqrnn.forget_mult(f, x, backend=backend)

        return run

    def forward_backward(backend: str, policy: Callable[[int, int, int], int] = heuristic):
        def run() -> None:
            kernels.choose_chunk = policy
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--interpret-smoke",
        action="store_true",
        help="run end to end on CPU tensors under TRITON_INTERPRET=1 with a tiny shape (no timing value)",
    )
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds per shape")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args()

    if args.interpret_smoke:
        if os.environ.get("TRITON_INTERPRET") != "1":
            parser.error("--interpret-smoke runs the kernels in Triton's interpreter: set TRITON_INTERPRET=1")
        device, shapes, rounds, min_seconds, megabytes = torch.device("cpu"), SMOKE_SHAPES, 2, 0.0, 1
    else:
        if not torch.cuda.is_available():
            parser.error("expected a CUDA device, got none (use --interpret-smoke for a CPU run)")
        device, shapes, rounds, min_seconds, megabytes = torch.device("cuda"), SHAPES, 15, 0.02, 512
    rounds = args.rounds or rounds
    dtype = DTYPES[args.dtype]
    clock, copy = Clock(device), DeviceCopy(megabytes, device)

    probe = torch.rand(2, 1, 1, device=device)
    torchqrnn.forget_mult(probe, probe, backend="triton")  # import Triton before recording versions
    info = machine_info()
    print(f"# ForgetMult, Triton kernels on {info['cuda'] or info['cpu']}; {args.dtype}; {info['versions']}")
    print(
        "# times: medians of interleaved rounds; x floor: median per-round ratio to the bytes that must move"
    )
    print(
        "# (fwd 3, f+b 9 tensors of T*B*H) at the bandwidth of a large device copy timed in the same rounds"
    )
    header = " | ".join(f"{title:>{width}}" for title, width, _, _ in COLUMNS)
    print(header)
    print("-" * len(header))
    results = {}
    for steps, batch, hidden in shapes:
        row = {
            "shape": f"{steps}, {batch}, {hidden}",
            **time_shape(
                steps,
                batch,
                hidden,
                dtype=dtype,
                device=device,
                copy=copy,
                clock=clock,
                rounds=rounds,
                min_seconds=min_seconds,
            ),
        }
        results[f"{steps}x{batch}x{hidden}"] = row
        print(" | ".join(f"{row[key]:>{width}{spec}}" for _, width, spec, key in COLUMNS))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(
                {
                    "machine": info,
                    "dtype": args.dtype,
                    "interpreted": args.interpret_smoke,
                    "shapes": results,
                },
                out,
                indent=2,
            )


if __name__ == "__main__":
    main()
