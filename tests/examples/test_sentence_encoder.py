"""examples/sentence_encoder: padding never changes a sentence's vector (each sentence encoded alone equals
it encoded in a padded batch), the directions are what they claim, and the classifier learns word order."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples" / "sentence_encoder"))

import encoder  # noqa: E402


def test_padding_never_changes_a_sentence() -> None:
    model = encoder.BiFPoolEncoder(vocab=20, embedding=6, hidden=5).double()
    lengths = torch.tensor([7, 3, 1, 5])
    tokens = torch.zeros(4, 7, dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        tokens[i, :n] = torch.randint(1, 20, (n,))
    batched = model(tokens, lengths)
    for i, n in enumerate(lengths.tolist()):
        alone = model(tokens[i : i + 1, :n], lengths[i : i + 1])
        torch.testing.assert_close(batched[i : i + 1], alone)


def test_directions_against_a_loop() -> None:
    model = encoder.BiFPoolEncoder(vocab=10, embedding=4, hidden=3).double()
    tokens, lengths = torch.randint(1, 10, (1, 6)), torch.tensor([6])
    z_f, f_f, z_b, f_b = model.gates(model.embed(tokens))[0].chunk(4, dim=-1)  # (T, H) each

    def run(z: torch.Tensor, f: torch.Tensor, steps: range) -> list[torch.Tensor]:
        h, out = torch.zeros(3, dtype=torch.float64), []
        for t in steps:
            h = torch.sigmoid(f[t]) * torch.tanh(z[t]) + (1 - torch.sigmoid(f[t])) * h
            out.append(h)
        return out

    forward, backward = run(z_f, f_f, range(6)), run(z_b, f_b, range(5, -1, -1))
    pooled = torch.cat([torch.stack(forward).amax(0), torch.stack(backward).amax(0)])
    expected = torch.cat([forward[-1], backward[-1], pooled])
    torch.testing.assert_close(model(tokens, lengths)[0], expected)


def test_batches_mix_originals_and_shuffles() -> None:
    sentences = [[1, 2, 3, 4], [5, 6, 7], [2, 2, 3], [8, 9]]
    tokens, lengths, labels = encoder.batch_of(sentences, random.Random(0))
    assert lengths.tolist() == [4, 3, 3, 2] and labels.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert tokens[0].tolist() == [1, 2, 3, 4] and tokens[2].tolist() == [2, 2, 3, 0]
    assert sorted(tokens[3, :2].tolist()) == [8, 9] and tokens[3, 2:].tolist() == [0, 0]
    assert sorted(tokens[1, :3].tolist()) == [5, 6, 7] and tokens[1, :3].tolist() != [5, 6, 7]
    assert tokens[1, 3].item() == 0  # padding


def test_training_reads_word_order(tmp_path: Path) -> None:
    rng = random.Random(0)
    # "a b c d e" sentences in a fixed grammar: the order tells originals from shuffles
    words = [f"w{i}" for i in range(12)]
    lines = [
        " ".join(words[(start + j) % 12] for j in range(6))
        for start in (rng.randrange(12) for _ in range(400))
    ]
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "valid.txt").write_text("\n".join(lines[:100]) + "\n", encoding="utf-8")
    summary = encoder.main(
        [
            "--data",
            str(tmp_path),
            "--steps",
            "150",
            "--batch-size",
            "16",
            "--embedding",
            "8",
            "--hidden",
            "16",
            "--lr",
            "1e-2",
            "--valid-sentences",
            "100",
        ]
    )
    assert summary["steps"] == 150
    assert summary["valid_accuracy"] > 0.9  # a bag of words cannot beat 0.5 here
    with pytest.raises(FileNotFoundError, match="corpus"):
        encoder.main(["--data", str(tmp_path / "missing"), "--steps", "1"])
    assert encoder.PENN == ROOT.parent / "shared" / "data" / "penn"
