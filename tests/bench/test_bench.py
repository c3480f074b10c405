"""The benchmarks run end to end (smoke runs: their figures are not checked, timing is not a test), print as
they measure, and refuse bad options before measuring anything."""

from __future__ import annotations

import json
import math
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from torchqrnn.bench import __main__ as entry
from torchqrnn.bench import heatmap, layer


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "torchqrnn.bench", *args], check=True, capture_output=True, text=True
    )


def test_layer_benchmark_is_the_default_and_prints_as_it_measures(tmp_path: pathlib.Path) -> None:
    report_path, plot_path = tmp_path / "bench.json", tmp_path / "grid.png"
    command = [sys.executable, "-m", "torchqrnn.bench", "--quick", "--json", str(report_path)]
    with subprocess.Popen([*command, "--plot", str(plot_path)], stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line.startswith("1. Inference speed-up of a 320-unit QRNN layer over nn.LSTM"):
                # the first section's title arrives while the benchmark still has every figure to measure
                assert process.poll() is None
                break
        lines += process.stdout.readlines()
    assert process.returncode == 0
    output = "".join(lines)
    for title in (
        "2. Training step", "3. Long sequence", "4. Streaming", "5. Peak memory", "6. bfloat16 autocast",
        "7. int8 inference (quantize_dynamic; quantize_int8", "8. Streaming through the modules",
    ):  # fmt: skip
        assert title in output
    # each heading counts the sections and estimates the time left; the end says how long it all took
    assert re.search(r"^# 8 sections, about \d+ (s|min \d\d s) on a quiet 2-core machine$", output, re.M)
    numbered = re.findall(r"^(\d)\. .* \((\d) of 8, about \d+ (?:s|min \d\d s) left\)$", output, re.M)
    assert numbered == [(str(n), str(n)) for n in range(1, 9)]
    assert re.search(r"^# done in \d+ (s|min \d\d s)$", output, re.M)
    report = json.loads(report_path.read_text())
    assert list(report["sections"]) == list(layer.SECTIONS)
    assert all(s["seconds"] > 0 and s["largest_spread"] >= 1 for s in report["sections"].values())
    assert report["memory"]["mb"]["qrnn"] > 0.1 and report["memory"]["mb"]["lstm"] > 0.1  # (was 0.0 MB)
    assert set(report) >= {"figure4", "ptb_training", "long_sequence", "streaming", "memory", "machine"}
    assert report["bf16"]["training"]["qrnn_fp32_over_bf16"] > 0
    assert report["int8"]["cells"]["8x32"]["relative_error"] < 0.03  # quantize_int8 (PT2E)
    assert report["int8"]["cells"]["8x32"]["relative_error_dynamic"] < 0.03  # quantize_dynamic
    assert report["int8"]["cells"]["16x64"]["pt2e_over_floor"] > 0 and report["int8"]["cpu"]
    assert report["streaming_modules"]["p99_us"]["qrnn_2"] > 0
    assert set(report["figure4"]["cells"]) == {"8x32", "8x64", "16x32", "16x64"}
    assert all(cell["speedup"] > 0 for cell in report["figure4"]["cells"].values())
    assert report["ptb_training"]["layer_over_gemm"] > 0
    assert report["machine"]["torch_threads"] >= 1
    assert {"torch", "numba", "torchqrnn"} <= set(report["machine"]["versions"])
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_layer_benchmark_runs_one_section(tmp_path: pathlib.Path) -> None:
    report_path = tmp_path / "bench.json"
    result = _bench("layer", "--quick", "--only", "streaming", "--json", str(report_path))
    assert "1. Streaming, batch 1" in result.stdout and "Inference speed-up" not in result.stdout
    report_keys = {"device", "machine", "quick", "load", "sections", "streaming"}
    assert set(json.loads(report_path.read_text())) == report_keys


def test_layer_benchmark_under_load(tmp_path: pathlib.Path) -> None:
    """``--load N`` runs N busy processes beside the measurements, and stops them afterwards."""
    report_path = tmp_path / "bench.json"
    result = _bench("--quick", "--load", "2", "--only", "streaming_modules", "--json", str(report_path))
    assert "# load: 2 busy processes" in result.stdout and "p50 / p99" in result.stdout
    report = json.loads(report_path.read_text())
    assert report["load"] == 2
    figures = report["streaming_modules"]
    assert set(figures["p99_us"]) == set(figures["us"]) >= {"qrnn_1", "qrnn_2", "lstm_cell_1", "lstm_cell_2"}
    assert all(figures["p99_us"][name] >= figures["p50_us"][name] for name in figures["p99_us"])


def test_forget_mult_benchmark_quick(tmp_path: pathlib.Path) -> None:
    report_path = tmp_path / "forget_mult.json"
    result = _bench("forget-mult", "--quick", "--json", str(report_path))
    assert "floor: the same bytes" in result.stdout and "first call in a fresh process" in result.stdout
    report = json.loads(report_path.read_text())
    shape = report["shapes"]["33x4x65"]
    assert shape["reference_over_kernel_fb"] > 0 and shape["fb_over_floor"] > 0
    assert shape["floor_fb_ms"] > 0 and shape["floor_fwd_ms"] > 0
    assert report["first_call"]["warm_forward_s"] > 0


def test_help_lists_every_command() -> None:
    result = _bench("--help")
    for command in ("layer", "forget-mult", "deploy", "gpu", "acceptance"):
        assert f"\n  {command} " in result.stdout
    assert set(entry.COMMANDS) == {"layer", "forget-mult", "deploy", "gpu", "acceptance"}


def _refuses(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        entry.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.fixture
def no_measuring(monkeypatch: pytest.MonkeyPatch) -> None:
    def measure(run: layer.Run) -> None:
        raise AssertionError("a section ran before the options were checked")

    monkeypatch.setattr(layer, "SECTIONS", dict.fromkeys(layer.SECTIONS, measure))


@pytest.mark.usefixtures("no_measuring")
def test_bad_options_fail_before_measuring(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _refuses(["--device", "tpu"], "--device: expected cpu, cuda or cuda:N, got 'tpu'", capsys)
    _refuses(["--device", "banana"], "--device: expected cpu, cuda or cuda:N, got 'banana'", capsys)
    if not layer.torch.cuda.is_available():
        _refuses(["--device", "cuda"], "--device cuda: no CUDA device here", capsys)
    _refuses(["--rounds", "0"], "expected an integer >= 1, got '0'", capsys)
    _refuses(["--load", "-1"], "--load: expected a number of processes >= 0, got -1", capsys)
    _refuses(["--json", str(tmp_path / "missing" / "out.json")], "does not exist", capsys)
    _refuses(["--json", str(tmp_path)], "expected a file name", capsys)
    _refuses(["--only", "streaming", "--plot", str(tmp_path / "p.png")], "--only leaves out", capsys)
    _refuses(["frobnicate"], "unknown command 'frobnicate'", capsys)
    _refuses(["forget-mult", "--shape", "3x4"], "expected T x B x H", capsys)

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed: its import fails
    _refuses(["layer", "--plot", str(tmp_path / "p.png")], "--plot needs matplotlib", capsys)


def test_heatmap_colour_scale_is_logarithmic_and_centred_on_one() -> None:
    values = [[0.5, 1.0, 2.0], [0.25, 4.0, 40.0]]
    figure = heatmap.ratio_heatmap(
        values,
        rows=["a", "b"],
        columns=["x", "y", "z"],
        title="t",
        xlabel="x",
        ylabel="y",
        colorbar_label="c",
    )
    image = figure.axes[0].images[0]
    norm = image.norm
    assert norm(0.0) == pytest.approx(0.5)  # 1x is the centre of the diverging colormap
    assert norm(math.log2(2.0)) - 0.5 == pytest.approx(0.5 - norm(math.log2(0.5)))  # 2x and 1/2x: mirrored
    np.testing.assert_allclose(image.get_array(), np.log2(values))


def test_heatmap_text_is_readable_on_every_cell() -> None:
    # ratios from deep red through white to deep blue: every text colour must keep WCAG's 4.5:1 contrast
    values = [[2.0**k for k in np.linspace(-5, 5, 11)]]
    figure = heatmap.ratio_heatmap(
        values,
        rows=["r"],
        columns=[str(k) for k in range(11)],
        title="",
        xlabel="",
        ylabel="",
        colorbar_label="",
    )
    axis = figure.axes[0]
    image = axis.images[0]
    texts = axis.texts
    assert len(texts) == 11
    colours = set()
    for j, text in enumerate(texts):
        background = image.cmap(image.norm(image.get_array()[0, j]))
        colour = text.get_color()
        colours.add(tuple(colour))
        assert heatmap.contrast_ratio(colour, background) >= 4.5, (j, colour, background)
    assert len(colours) == 2  # black on the pale middle, white on the dark ends
    assert heatmap.text_colour((1.0, 1.0, 0.0)) == (0.0, 0.0, 0.0)  # yellow gets black text


def test_heatmap_refuses_non_positive_ratios() -> None:
    with pytest.raises(ValueError, match="values: expected positive ratios"):
        heatmap.ratio_heatmap(
            [[1.0, 0.0]], rows=["r"], columns=["a", "b"], title="", xlabel="", ylabel="", colorbar_label=""
        )


def test_forget_mult_floor_moves_the_bytes_it_claims() -> None:
    from torchqrnn.bench import forget_mult

    rng = np.random.default_rng(0)
    f, x, h, g = (rng.random(1000, dtype=np.float32) for _ in range(4))
    out, df, dx = (np.full(1000, np.nan, np.float32) for _ in range(3))
    for parallel in (False, True):
        floor = forget_mult.Floor(10, 10, 10)
        floor.parallel = parallel
        floor.forward(f, x, out)
        floor.backward(f, x, h, g, df, dx)
        np.testing.assert_array_equal(out, f * x)
        np.testing.assert_array_equal(df, (x - h) * g)
        np.testing.assert_array_equal(dx, f * g)


def test_the_int8_section_without_torchao_is_skipped_with_its_reason() -> None:
    """torchao is an extra (``torchqrnn[quantization]``): without it the main job's int8 section says what it
    needs and the run goes on, rather than dying after the sections before it."""
    script = (
        "import sys; sys.modules['torchao'] = None\n"  # (an import of it now raises ImportError)
        "from torchqrnn.bench.__main__ import main\n"
        "sys.exit(main(['--quick', '--only', 'int8', '--only', 'long_sequence']))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "skipped: quantize_int8 needs torchao" in done.stdout
    assert "pip install torchqrnn[quantization]" in done.stdout
    assert "Long sequence, training" in done.stdout  # (the other section ran)
