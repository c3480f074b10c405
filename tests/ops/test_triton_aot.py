"""The Triton kernels compile for A100 (sm_80) and H100 / H200 (sm_90), ahead of time, without a GPU.

``triton_launches.py`` records the specializations the launchers really make (the ops run on CPU tensors
with their kernel launches intercepted) over a covering set of every kernel, dtype, direction and option,
and compiles each with Triton's compiler for an explicit ``GPUTarget`` and the ptxas bundled in the triton
wheel. This test runs that in two processes without ``TRITON_INTERPRET`` (one per architecture, side by
side), fails on any compile error, and prints registers and spills per kernel (``pytest -s`` shows them).
Select it with ``-m aot``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="the Triton kernels need the triton package (pip install triton)")

from .triton_launches import KERNELS

REPO = Path(__file__).resolve().parents[2]
ARCHES = (80, 90)
DTYPES = {"float32", "float64", "bfloat16", "float16"}


@pytest.mark.aot
def test_kernels_compile_for_sm80_and_sm90(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO), env.get("PYTHONPATH", "")])
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")
    runs = {
        arch: subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.ops.triton_launches",
                "--arch",
                str(arch),
                "--json",
                str(tmp_path / f"{arch}.json"),
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for arch in ARCHES
    }
    results = []
    for arch, run in runs.items():
        stdout, stderr = run.communicate(timeout=600)
        assert run.returncode == 0, f"sm_{arch}: compilation failed\n{stdout}\n{stderr}"
        results += json.loads((tmp_path / f"{arch}.json").read_text())
    print_table(results)

    for arch in ARCHES:
        compiled = [r for r in results if r["arch"] == arch]
        for kernel in KERNELS:
            labels = [r["label"] for r in compiled if r["kernel"] == kernel]
            assert {label.split()[0] for label in labels} == DTYPES, (arch, kernel, labels)
            assert all(any(direction in label for label in labels) for direction in ("forward", "reverse"))
        # The software-pipelined loads (copies into shared memory) stay for every H a thread can copy in
        # 4-byte pieces: all but float16 at an odd H (see "Specialization" in forget_mult/triton.py).
        for r in compiled:
            aligned = r["label"].startswith(
                ("float32 H=640", "float64 H=33", "bfloat16 H=320", "float16 H=20")
            )
            if aligned and r["kernel"] != "forget_mult._combine_chunks_kernel":
                assert r["shared_bytes"] > 0, r


def print_table(results: list[dict[str, object]]) -> None:
    """One row per specialization: registers, spill stores / loads (bytes) and shared memory per target."""
    rows: dict[tuple[object, object], dict[object, dict[str, object]]] = {}
    for r in results:
        rows.setdefault((r["kernel"], r["label"]), {})[r["arch"]] = r
    cells = "".join(f" | sm_{arch} regs spill smem" for arch in ARCHES)
    print(f"\n{'kernel':<36} | {'specialization':<70}{cells}")
    for (kernel, label), by_arch in rows.items():
        line = f"{kernel!s:<36} | {label!s:<70}"
        for arch in ARCHES:
            r = by_arch[arch]
            spill = f"{r['spill_stores']}/{r['spill_loads']}"
            line += f" | {r['registers']!s:>12} {spill:>5} {r['shared_bytes']!s:>4}"
        print(line)
    spilling = sum(1 for r in results if r["spill_stores"] or r["spill_loads"])
    seconds = sum(float(r["seconds"]) for r in results)  # type: ignore[arg-type]
    print(
        f"{len(results)} compiled ({len(rows)} specializations x {len(ARCHES)} targets) in {seconds:.0f} s,"
    )
    print(f"{spilling} with spills")
