"""The GPU acceptance command in its CPU form: every step runs, both reports are written (smoke runs: timings
are not checked; the real run needs a CUDA machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# Before anything imports triton: the kernels are built for the interpreter when their module is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

pytest.importorskip("triton", reason="the Triton kernels need the triton package (pip install triton)")

from torchqrnn.bench import acceptance


def test_acceptance_cpu_form_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = subprocess.run(
        [sys.executable, "-m", "torchqrnn.bench.acceptance", "--cpu-smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    report = json.loads((out / "acceptance.json").read_text())
    assert result.returncode == (0 if report["passed"] else 1), result.stderr[-3000:]
    assert report["cpu_smoke"] and list(report["steps"]) == list(acceptance.STEPS)
    markdown = (out / "acceptance.md").read_text()
    assert all(f"| {name} |" in markdown for name in acceptance.STEPS)
    steps = report["steps"]
    for name in acceptance.STEPS:
        assert steps[name]["passed"], steps[name].get("error")
    assert report["passed"] and result.returncode == 0

    tests = steps["tests"]["result"]  # collected, and skipped without CUDA
    assert tests["tests"] > 0 and tests["skipped"] == tests["tests"] and tests["failures"] == 0
    assert steps["cuda_graph"]["result"]["max_abs_error"] <= 1e-4

    bench = steps["benchmark"]["result"]["results"]
    assert bench["interpreted"] and "x floor" in steps["benchmark"]["result"]["printed"]
    for row in bench["shapes"].values():  # ForgetMult: each schedule against the floor and the reference
        for kernel in ("sequential", "chunked", "auto"):
            assert row[f"{kernel}_fwd_ms"] > 0 and row[f"{kernel}_fb_over_floor"] > 0
    assert bench["qrnn_pool"]
    for row in bench["qrnn_pool"].values():  # the fused pooling against its floor and the unfused layer
        for stage in ("fwd", "fb"):
            assert row[f"fused_{stage}_over_floor"] > 0 and row[f"unfused_over_fused_{stage}"] > 0
    speedups = bench["figure4"]["lstm_time_over_qrnn_time"]
    assert len(speedups) == 2 and all(value > 0 for value in speedups.values())
    ptb = bench["ptb_training"]  # the 2-layer PTB step against nn.LSTM and nn.GRU, one layer vs its GEMMs
    assert ptb["lstm_over_qrnn"] > 0 and ptb["gru_over_qrnn"] > 0 and ptb["layer_over_gemm"] > 0


def test_autocast_carries_the_state(tmp_path: Path) -> None:
    """The autocast step on its own: the state returned under autocast (in the autocast dtype) feeds the
    next call, as SPEC 6 asks."""
    report = acceptance.autocast(acceptance.Setup(torch.device("cpu"), True, tmp_path, []))
    assert report["bfloat16"]["max_relative_error"] <= 0.05
    assert report["float16"]["max_relative_error"] <= 0.05
