"""examples/mingru: the three scans agree (values and gradients), the character model trains, the speed and
gradient-error measurements run and say what they should at short lengths."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples" / "mingru"))

import mingru  # noqa: E402


@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("T", [1, 37])
def test_scans_agree_in_values_and_gradients(T: int, with_h0: bool) -> None:
    k = torch.randn(T, 3, 5, dtype=torch.float64) * 2
    c = torch.randn(T, 3, 5, dtype=torch.float64) * 2
    h0 = torch.rand(3, 5, dtype=torch.float64) + 0.1 if with_h0 else None  # the log scan needs h0 > 0
    weight = torch.randn(T, 3, 5, dtype=torch.float64)
    results: dict[str, list[torch.Tensor]] = {}
    for name, scan in mingru.SCAN_FUNCTIONS.items():
        inputs = [t.clone().requires_grad_() for t in (k, c) + ((h0,) if h0 is not None else ())]
        h = scan(inputs[0], inputs[1], inputs[2] if h0 is not None else None)
        (h * weight).sum().backward()
        results[name] = [h.detach(), *(t.grad for t in inputs if t.grad is not None)]
    # the loop is the recurrence as written: check it against the equation at one step
    z, candidate = torch.sigmoid(k), mingru.g(c)
    start = torch.zeros(3, 5, dtype=torch.float64) if h0 is None else h0
    torch.testing.assert_close(results["loop"][0][0], (1 - z[0]) * start + z[0] * candidate[0])
    for name in ("forget_mult", "log_scan"):
        for got, expected in zip(results[name], results["loop"], strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-10)


def test_g_and_log_g() -> None:
    x = torch.linspace(-30, 30, 601, dtype=torch.float64)
    assert (mingru.g(x) > 0).all()
    torch.testing.assert_close(mingru.log_g(x), torch.log(mingru.g(x)))


def test_module_runs_each_scan_alike() -> None:
    layer = mingru.MinGRU(6, 8)
    x = torch.randn(20, 2, 6)
    outputs = []
    for scan in mingru.SCANS:
        layer.scan = scan
        outputs.append(layer(x)[0])
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(outputs[2], outputs[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="scan"):
        mingru.MinGRU(6, 8, scan="cuda")


def write_chars(folder: Path) -> Path:
    """A tiny corpus in pennchar's format: space-separated characters, ``_`` between words."""
    folder.mkdir(parents=True, exist_ok=True)
    words = ["the", "cat", "sat", "on", "a", "mat"]
    for split, lines in (("train", 200), ("valid", 20), ("test", 20)):
        text = [" ".join("_".join(words[(i + j) % 6] for j in range(4))) for i in range(lines)]
        (folder / f"{split}.txt").write_text("\n".join(text) + "\n", encoding="utf-8")
    return folder


def test_corpus_reading(tmp_path: Path) -> None:
    symbols, splits = mingru.read_chars(write_chars(tmp_path))
    assert "_" in symbols and "\n" in symbols and " " not in symbols
    assert "".join(symbols[i] for i in splits["train"][:8].tolist()) == "the_cat_"
    with pytest.raises(FileNotFoundError, match="pennchar"):
        mingru.read_chars(tmp_path / "missing")
    assert mingru.PENNCHAR == ROOT.parent / "shared" / "data" / "pennchar"  # ../shared/data, not a copy


def test_training_learns(tmp_path: Path) -> None:
    data = write_chars(tmp_path)
    summary = mingru.main(
        [
            "train",
            "--data",
            str(data),
            "--steps",
            "30",
            "--size",
            "32",
            "--layers",
            "2",
            "--batch-size",
            "4",
            "--bptt",
            "32",
            "--lr",
            "1e-2",
            "--log-interval",
            "10",
        ]
    )
    assert summary["steps"] == 30
    chance = math.log2(9)  # 8 symbols in the corpus and the end of line
    assert summary["train_bpc_first"] > 0.8 * chance
    assert summary["train_bpc_last"] < 0.5 * summary["train_bpc_first"]
    assert 0 < summary["valid_bpc"] < 0.5 * chance and 0 < summary["test_bpc"] < 0.5 * chance


def test_speed_measures_every_scan() -> None:
    summary = mingru.main(["speed", "--shapes", "16x2x8", "--rounds", "2", "--min-seconds", "0.001"])
    (training, inference) = summary["rows"]
    for row in (training, inference):
        for name in mingru.SCANS:
            assert row[f"{name}_ms"] > 0
        assert row["log_scan_over_forget_mult"] > 0 and row["loop_over_forget_mult"] > 0
    assert (training["mode"], inference["mode"]) == ("training", "inference")
    with pytest.raises(SystemExit):
        mingru.main(["speed", "--shapes", "16x2"])


def test_gradient_errors_by_length() -> None:
    short, long = mingru.gradient_errors([32, 2048], batch=2, hidden=8)
    for row in (short, long):
        for part in ("h", "dk", "dc"):
            assert row[f"forget_mult_{part}"] < 1e-6, (part, row)  # float32 rounding, whatever T
    # the log-space scan: fine when short, its gate gradient far off when long (the claim of the docs page)
    assert short["log_scan_h"] < 1e-4 and short["log_scan_dk"] < 1e-3
    assert (
        long["log_scan_dk"] > 10 * short["log_scan_dk"]
        and long["log_scan_dk"] > 1000 * long["forget_mult_dk"]
    )
    assert (
        mingru.relative_error(torch.tensor([math.nan]), torch.tensor([1.0], dtype=torch.float64)) == math.inf
    )
