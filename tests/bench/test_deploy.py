"""The deployment benchmark runs end to end on the runtimes that build in seconds (the ExecuTorch and
AOTInductor builds are tested in tests/export), prints its table and writes its JSON; bad options fail before
anything is measured."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys


def _deploy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "torchqrnn.bench", "deploy", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def test_deploy_benchmark_smoke_run(tmp_path: pathlib.Path) -> None:
    report_path = tmp_path / "deploy.json"
    result = _deploy(
        "--quick", "--models", "qrnn,gru", "--runtimes", "eager,onnx", "--json", str(report_path)
    )
    assert result.returncode == 0, result.stderr
    assert "Deployment runtimes on" in result.stdout
    report = json.loads(report_path.read_text())
    assert set(report["results"]) == {"qrnn/sequence", "qrnn/step", "gru/sequence", "gru/step"}
    for rows in report["results"].values():
        assert set(rows) == {"eager", "onnx"}
        assert rows["eager"]["median_us"] > 0
        assert rows["onnx"]["median_us"] > 0, rows["onnx"]  # it built and matched eager
    assert report["machine"]["cpu"]


def test_deploy_benchmark_refuses_unknown_runtimes() -> None:
    result = _deploy("--runtimes", "eager,tflite")
    assert result.returncode == 2
    assert "tflite" in result.stderr
    assert "Deployment runtimes on" not in result.stdout  # refused before measuring
