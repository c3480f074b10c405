"""``python -m torchqrnn.bench.acceptance``: the GPU acceptance run, one command, JSON and markdown reports.

For the day a CUDA machine is at hand (sized for an 8-minute budget on one A100 / H100; never run on one yet):

1. ``tests``: the ``gpu``-marked tests of the repository (``pytest -m gpu``: the compiled Triton kernels
   against the reference on awkward shapes, every dtype, direction and pooling option, and the launchers
   captured in a CUDA graph), in a fresh process;
2. ``cuda_graph``: a 2-layer QRNN captured in a CUDA graph, inference (``torch.cuda.graph``, replayed on new
   inputs written in place) and training (``torch.cuda.make_graphed_callables``: forward and backward),
   against eager runs: outputs, final states and every gradient;
3. ``autocast``: the QRNN under ``torch.autocast`` (bfloat16 and float16), forward and backward over two
   calls with the state carried from one to the next, against float32;
4. ``benchmark``: ``torchqrnn.bench.gpu`` (ForgetMult and the fused pooling against the HBM floor, the
   fused layer pass against its floor, the QRNN paper's Figure 4 grid against cuDNN ``nn.LSTM``, a
   2 x 640 PTB training step against cuDNN ``nn.LSTM`` / ``nn.GRU``).

Writes ``acceptance.json`` and ``acceptance.md`` into ``--out`` (default ``acceptance-report``) and exits
with 0 when every step passed. ``--cpu-smoke`` runs each step in its CPU form, so that the command itself is
checked on machines without a GPU: the kernels in Triton's interpreter (``TRITON_INTERPRET=1``, set here),
tiny shapes, the gpu-marked tests collected (they skip without CUDA), the CUDA-graph capture emulated (the
"replay" re-runs the captured function; nothing is captured), autocast on the CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

BUDGET_SECONDS = 480  # the whole run on one GPU


@dataclass
class Setup:
    device: torch.device
    smoke: bool
    out: Path
    tests: list[str]


class StepFailed(Exception):
    """A check of a step did not hold (the message says which, with the measured values)."""


# ---------------------------------------------------------------------------------------------------------
# 1. The gpu-marked tests.


def _repository_tests() -> Path | None:
    """The repository's tests folder beside the package (an install from a clone, editable or not)."""
    import torchqrnn

    tests = Path(torchqrnn.__file__).resolve().parents[2] / "tests"
    return tests if (tests / "conftest.py").exists() else None


def gpu_tests(setup: Setup) -> dict[str, Any]:
    paths = setup.tests or [str(path) for path in [_repository_tests()] if path is not None]
    if not paths:
        raise StepFailed("no tests folder beside the package: run from a clone (pip install -e '.[test]')")
    report = setup.out / "gpu-tests.xml"
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"]
    command += [f"--junitxml={report}", *paths]
    run = subprocess.run(command, capture_output=True, text=True, timeout=BUDGET_SECONDS)
    if not report.exists():
        raise StepFailed(
            f"pytest wrote no report (exit {run.returncode}):\n{run.stdout[-3000:]}{run.stderr[-3000:]}"
        )
    suite = ElementTree.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")  # type: ignore[assignment]
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    result = {**counts, "command": " ".join(command), "exit_code": run.returncode, "tail": run.stdout[-2000:]}
    if counts["failures"] or counts["errors"] or run.returncode not in (0, 5):
        raise StepFailed(f"gpu-marked tests failed: {counts}\n{run.stdout[-4000:]}")
    if counts["tests"] == 0:
        raise StepFailed("no gpu-marked test was collected")
    if setup.device.type == "cuda" and counts["skipped"]:
        raise StepFailed(f"gpu-marked tests skipped on a CUDA machine: {counts}\n{run.stdout[-4000:]}")
    return result


# ---------------------------------------------------------------------------------------------------------
# 2. CUDA-graph capture.


class Capture:
    """A CUDA graph of ``fn``'s launches; replay reruns them on the tensors captured. On the CPU (the
    smoke form) nothing is captured: replay calls ``fn`` again and copies its results into the outputs."""

    def __init__(self, fn: Callable[[], tuple[torch.Tensor, ...]], device: torch.device) -> None:
        self.fn, self.cuda = fn, device.type == "cuda"
        if self.cuda:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # warm-up outside the capture: compilation, allocations
                for _ in range(2):
                    fn()
            torch.cuda.current_stream().wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.outputs = fn()
        else:
            self.outputs = tuple(t.clone() for t in fn())

    def replay(self) -> tuple[torch.Tensor, ...]:
        if self.cuda:
            self.graph.replay()
            torch.cuda.synchronize()
        else:
            for static, fresh in zip(self.outputs, self.fn(), strict=True):
                static.copy_(fresh)
        return self.outputs


def _max_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    difference = got.detach().double() - expected.detach().double()
    return float(difference.abs().max()) if got.numel() else 0.0


def cuda_graph(setup: Setup) -> dict[str, Any]:
    from torchqrnn import QRNN

    device = setup.device
    steps, batch, inputs, hidden = (6, 2, 4, 8) if setup.smoke else (50, 8, 128, 256)
    torch.manual_seed(0)
    qrnn = QRNN(inputs, hidden, num_layers=2, window=[2, 1], backend="triton", device=device)
    errors: dict[str, float] = {}

    # Inference: capture once, then new values written into the captured inputs, replayed.
    qrnn.eval()
    x = torch.randn(steps, batch, inputs, device=device)
    h0 = torch.randn(2, batch, hidden, device=device)

    def infer() -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            return qrnn(x, h0)

    capture = Capture(infer, device)
    for replay in range(2):
        x.copy_(torch.randn_like(x))
        h0.copy_(torch.randn_like(h0))
        got = capture.replay()
        with torch.no_grad():
            expected = qrnn(x, h0)
        for name, g, e in zip(("output", "h_n"), got, expected, strict=True):
            errors[f"inference replay {replay} {name}"] = _max_error(g, e)

    # Training: forward and backward as graphs (make_graphed_callables), gradients against eager.
    qrnn.train()
    x_train = torch.randn(steps, batch, inputs, device=device, requires_grad=True)
    graphed: Callable[..., Any] = (
        torch.cuda.make_graphed_callables(qrnn, (x_train,)) if device.type == "cuda" else qrnn
    )
    for call in range(2):
        x_call = torch.randn(steps, batch, inputs, device=device, requires_grad=True)
        results = []
        for module in (graphed, qrnn):
            qrnn.zero_grad(set_to_none=True)
            x_call.grad = None
            output, h_n = module(x_call)
            (output.square().sum() + h_n.sum()).backward()
            grads = [x_call.grad, *(p.grad for p in qrnn.parameters())]
            results.append([output.detach(), h_n.detach(), *(g.clone() for g in grads if g is not None)])
        for k, (g, e) in enumerate(zip(*results, strict=True)):
            errors[f"training call {call} tensor {k}"] = _max_error(g, e)
    worst = max(errors.values())
    if worst > 1e-4:
        raise StepFailed(f"captured and eager runs differ by up to {worst:.3g}: {errors}")
    return {
        "shape": {"steps": steps, "batch": batch, "inputs": inputs, "hidden": hidden, "layers": 2},
        "captured": device.type == "cuda",
        "max_abs_error": worst,
    }


# ---------------------------------------------------------------------------------------------------------
# 3. Autocast.


def autocast(setup: Setup) -> dict[str, Any]:
    from torchqrnn import QRNN

    device = setup.device
    steps, batch, inputs, hidden = (5, 2, 4, 8) if setup.smoke else (64, 16, 256, 512)
    torch.manual_seed(0)
    qrnn = QRNN(inputs, hidden, num_layers=2, window=[2, 1], backend="triton", device=device)
    chunks = torch.randn(2, steps, batch, inputs, device=device).unbind(0)
    h0 = torch.randn(2, batch, hidden, device=device)

    def run(dtype: torch.dtype | None) -> list[torch.Tensor]:
        """Two calls, the state of the first carried into the second; outputs, state and gradients."""
        qrnn.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            first, h = qrnn(chunks[0], h0)
            second, h = qrnn(chunks[1], h)
        if dtype is not None and not (first.dtype == second.dtype == h.dtype == dtype):
            raise StepFailed(
                f"expected autocast outputs in {dtype}, got {first.dtype}, {second.dtype}, {h.dtype}"
            )
        (first.float().square().mean() + second.float().square().mean() + h.float().mean()).backward()
        grads = [p.grad for p in qrnn.parameters()]
        if any(g is None or g.dtype != torch.float32 for g in grads):
            raise StepFailed("expected float32 gradients for the float32 parameters under autocast")
        outputs = [t.detach().float() for t in (first, second, h)]
        return [*outputs, *(g.clone() for g in grads if g is not None)]

    expected = run(None)
    report: dict[str, Any] = {}
    for dtype in (torch.bfloat16, torch.float16):
        got = run(dtype)
        # relative to each tensor's largest value: the projection rounds to 8 (bfloat16) or 11 bits
        errors = [
            _max_error(g, e) / max(float(e.abs().max()), 1e-12) for g, e in zip(got, expected, strict=True)
        ]
        report[str(dtype).removeprefix("torch.")] = {"max_relative_error": max(errors)}
        if max(errors) > 0.05:
            raise StepFailed(f"{dtype} autocast differs from float32 by up to {max(errors):.3g} (relative)")
    return {"shape": {"steps": steps, "batch": batch, "inputs": inputs, "hidden": hidden}, **report}


# ---------------------------------------------------------------------------------------------------------
# 4. The GPU benchmark.


@contextlib.contextmanager
def _tee() -> Iterator[io.StringIO]:
    """Printed output both shown and kept (for the markdown report)."""
    kept, shown = io.StringIO(), sys.stdout

    class Tee(io.TextIOBase):
        def write(self, text: str) -> int:
            shown.write(text)
            return kept.write(text)

    with contextlib.redirect_stdout(Tee()):
        yield kept


def benchmark(setup: Setup) -> dict[str, Any]:
    from . import gpu

    path = setup.out / "gpu-benchmark.json"
    with _tee() as printed:
        code = gpu.main(["--json", str(path), *(["--cpu-smoke"] if setup.smoke else [])])
    if code != 0:
        raise StepFailed(f"the GPU benchmark exited with {code}")
    results = json.loads(path.read_text())
    return {"results": results, "printed": printed.getvalue()}


# ---------------------------------------------------------------------------------------------------------
# The run and its reports.

STEPS: dict[str, Callable[[Setup], dict[str, Any]]] = {
    "tests": gpu_tests,
    "cuda_graph": cuda_graph,
    "autocast": autocast,
    "benchmark": benchmark,
}


def _machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "device": str(device),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def _summary(name: str, result: dict[str, Any]) -> str:
    if name == "tests":
        return f"{result['tests']} tests, {result['failures']} failures, {result['skipped']} skipped"
    if name == "cuda_graph":
        how = "captured" if result["captured"] else "emulated (CPU)"
        return f"{how}; largest difference from eager {result['max_abs_error']:.2g}"
    if name == "autocast":
        return ", ".join(f"{k} {v['max_relative_error']:.2g}" for k, v in result.items() if k != "shape")
    bench = result["results"]
    ptb = bench["ptb_training"]
    grid = bench["figure4"]["lstm_time_over_qrnn_time"].values()
    return (
        f"Figure 4 grid {min(grid):.2f}-{max(grid):.2f}x over nn.LSTM; PTB step nn.LSTM / QRNN "
        f"{ptb['lstm_over_qrnn']:.2f}x; one layer {ptb['layer_over_gemm']:.2f}x its GEMMs"
    )


def write_reports(report: dict[str, Any], out: Path) -> None:
    (out / "acceptance.json").write_text(json.dumps(report, indent=2, default=str))
    lines = [
        "# torchqrnn GPU acceptance run" + (" (CPU smoke form)" if report["cpu_smoke"] else ""),
        "",
        f"- machine: {', '.join(f'{k} {v}' for k, v in report['machine'].items())}",
        f"- result: **{'passed' if report['passed'] else 'FAILED'}**, {report['seconds']:.0f} s "
        f"(budget {BUDGET_SECONDS} s: {'within' if report['within_budget'] else 'OVER'})",
        "",
        "| step | status | seconds | summary |",
        "|---|---|---|---|",
    ]
    for name, step in report["steps"].items():
        summary = _summary(name, step["result"]) if step["passed"] else step["error"].splitlines()[0]
        status = "passed" if step["passed"] else "FAILED"
        lines.append(f"| {name} | {status} | {step['seconds']:.1f} | {summary} |")
    for name, step in report["steps"].items():
        if not step["passed"]:
            lines += ["", f"## {name}: failure", "", "```", step["error"], "```"]
    bench = report["steps"].get("benchmark", {})
    if bench.get("passed"):
        lines += ["", "## benchmark output", "", "```", bench["result"]["printed"].rstrip(), "```"]
    (out / "acceptance.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m torchqrnn.bench.acceptance",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="acceptance-report", help="folder for acceptance.json / .md")
    parser.add_argument(
        "--cpu-smoke", action="store_true", help="each step in its CPU form (interpreter, tiny shapes)"
    )
    parser.add_argument("--steps", nargs="+", choices=list(STEPS), default=list(STEPS), help="steps to run")
    parser.add_argument(
        "--tests",
        nargs="+",
        default=[],
        metavar="PATH",
        help="where pytest looks (default: the repository's)",
    )
    args = parser.parse_args(argv)
    if args.cpu_smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernels' first import: they run interpreted
        device = torch.device("cpu")
    else:
        if not torch.cuda.is_available():
            parser.error("expected a CUDA device, got none (--cpu-smoke runs the CPU form)")
        if os.environ.get("TRITON_INTERPRET") == "1":
            parser.error("TRITON_INTERPRET=1 would run the kernels interpreted: unset it on a GPU")
        device = torch.device("cuda")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    setup = Setup(device, args.cpu_smoke, out, args.tests)

    start = time.perf_counter()
    steps: dict[str, Any] = {}
    for name in args.steps:
        print(f"# acceptance: {name}", flush=True)
        began = time.perf_counter()
        try:
            steps[name] = {"passed": True, "result": STEPS[name](setup)}
        except Exception as error:  # a failed step is reported, and the next one still runs
            steps[name] = {"passed": False, "error": f"{type(error).__name__}: {error}"}
            if not isinstance(error, StepFailed):
                steps[name]["error"] += "\n\n" + traceback.format_exc()
        steps[name]["seconds"] = time.perf_counter() - began
        print(f"# acceptance: {name} {'passed' if steps[name]['passed'] else 'FAILED'}", flush=True)
    seconds = time.perf_counter() - start
    report = {
        "cpu_smoke": args.cpu_smoke,
        "machine": _machine(device),
        "passed": all(step["passed"] for step in steps.values()),
        "seconds": seconds,
        "within_budget": seconds <= BUDGET_SECONDS,
        "steps": steps,
    }
    write_reports(report, out)
    print((out / "acceptance.md").read_text())
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
