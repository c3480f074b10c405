"""The benchmarks run end to end (smoke runs: their figures are not checked, timing is not a test)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_main_benchmark_quick_writes_json_and_plot(tmp_path: pathlib.Path) -> None:
    report_path, plot_path = tmp_path / "bench.json", tmp_path / "grid.png"
    command = ["-m", "torchqrnn.bench", "--quick", "--json", str(report_path), "--plot", str(plot_path)]
    result = subprocess.run(
        [sys.executable, *command],
        check=True,
        capture_output=True,
        text=True,
    )
    assert "Inference speed-up of a 320-unit QRNN layer over nn.LSTM" in result.stdout
    report = json.loads(report_path.read_text())
    assert set(report) >= {"figure4", "ptb_training", "long_sequence", "streaming", "memory", "machine"}
    assert set(report["figure4"]["cells"]) == {"8x32", "8x64", "16x32", "16x64"}
    assert all(cell["speedup"] > 0 for cell in report["figure4"]["cells"].values())
    assert report["ptb_training"]["layer_over_gemm"] > 0
    assert report["machine"]["torch_threads"] >= 1
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_forget_mult_benchmark_quick(tmp_path: pathlib.Path) -> None:
    report_path = tmp_path / "forget_mult.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "forget_mult.py"), "--quick", "--json", str(report_path)],
        check=True,
        capture_output=True,
        text=True,
    )
    assert "first call in a fresh process" in result.stdout
    report = json.loads(report_path.read_text())
    shape = report["shapes"]["33x4x65"]
    assert shape["reference_over_kernel_fb"] > 0 and shape["fb_over_floor"] > 0
    assert report["first_call"]["warm_forward_s"] > 0
