"""A bidirectional f-pooling sentence encoder on torchqrnn's ForgetMult, for padded batches.

For each direction the encoder computes, from the word embeddings ``e_t``,

    z_t = tanh(W_z e_t + b_z),   f_t = sigmoid(W_f e_t + b_f) * m_t,   h_t = f_t * z_t + (1 - f_t) * h_{t-1}

with ``m_t`` = 1 on words and 0 on padding: ``f = 0`` holds the state, so padding never changes it. The
forward pass (``forget_mult(f, z)``) ends every sentence's state at the batch's last step whatever the
sentence's length, and the backward pass (``forget_mult(f, z, reverse=True)``) reads the padding first, with
the state still at zero, and so starts each sentence at its own last word. The sentence's vector is both
final states and a max over its words, so no ``PackedSequence`` and no per-sentence loop are needed.

The demonstration (from the repository's root; the corpus is ``../shared/data/penn``):

    python examples/sentence_encoder/encoder.py --minutes 1

trains it to tell a Penn Treebank sentence from the same words in a random order: a bag of words scores
50% on this, so whatever the encoder gains over that it reads from word order. It prints the validation
accuracy and, last, a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import torchqrnn

PENN = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "penn"


class BiFPoolEncoder(nn.Module):
    """``forward(tokens (B, T) padded with 0, lengths (B,)) -> (B, 4 * hidden)`` sentence vectors.

    Token 0 is padding. The vector is ``[h_fwd at the last word; h_bwd at the first word; max over the
    words of h_fwd; of h_bwd]``.
    """

    def __init__(self, vocab: int, embedding: int, hidden: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embedding, padding_idx=0)
        self.gates = nn.Linear(embedding, 4 * hidden)  # rows [Z_fwd; F_fwd; Z_bwd; F_bwd]

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        steps = torch.arange(tokens.shape[1], device=tokens.device)
        words = (steps < lengths.unsqueeze(1)).unsqueeze(2)  # (B, T, 1): True on words, False on padding
        z_fwd, f_fwd, z_bwd, f_bwd = self.gates(self.embed(tokens)).chunk(4, dim=-1)  # (B, T, H) each
        h_fwd = torchqrnn.forget_mult(torch.sigmoid(f_fwd) * words, torch.tanh(z_fwd), batch_first=True)
        h_bwd = torchqrnn.forget_mult(
            torch.sigmoid(f_bwd) * words, torch.tanh(z_bwd), batch_first=True, reverse=True
        )
        hidden = torch.cat([h_fwd, h_bwd], dim=-1)  # (B, T, 2H)
        pooled = hidden.masked_fill(~words, float("-inf")).amax(dim=1)  # the max over each sentence's words
        return torch.cat([h_fwd[:, -1], h_bwd[:, 0], pooled], dim=-1)


class OrderClassifier(nn.Module):
    """The encoder and a small MLP: the logit that a sentence is in its original order."""

    def __init__(self, vocab: int, embedding: int = 64, hidden: int = 128) -> None:
        super().__init__()
        self.encoder = BiFPoolEncoder(vocab, embedding, hidden)
        self.head = nn.Sequential(nn.Linear(4 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        return self.head(self.encoder(tokens, lengths)).squeeze(-1)


def read_sentences(
    path: Path, index: dict[str, int], grow: bool, min_words: int, max_words: int
) -> list[list[int]]:
    """Each line's word ids (new words join ``index`` when ``grow``, else map to ``<unk>``), keeping lines of
    ``min_words`` to ``max_words`` words."""
    if not path.is_file():
        raise FileNotFoundError(f"expected a corpus file at {path} (a folder with train.txt and valid.txt)")
    sentences = []
    for line in path.read_text(encoding="utf-8").splitlines():
        words = line.split()
        if not min_words <= len(words) <= max_words:
            continue
        if grow:
            for word in words:
                index.setdefault(word, len(index))
        sentences.append([index.get(word, index["<unk>"]) for word in words])
    return sentences


def batch_of(sentences: list[list[int]], rng: random.Random) -> tuple[Tensor, Tensor, Tensor]:
    """Even-numbered sentences as they are (label 1), the others shuffled (label 0).

    Returns ``(tokens (B, T) padded with 0, lengths (B,), labels (B,))``."""
    rows, labels = [], []
    for i, sentence in enumerate(sentences):
        if i % 2:
            shuffled = sentence[:]
            while shuffled == sentence:  # a sentence of repeated words could shuffle into itself
                rng.shuffle(shuffled)
            rows.append(shuffled)
        else:
            rows.append(sentence)
        labels.append(1.0 - i % 2)
    lengths = torch.tensor([len(row) for row in rows])
    tokens = torch.zeros(len(rows), int(lengths.max()), dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = torch.tensor(row)
    return tokens, lengths, torch.tensor(labels)


@torch.no_grad()
def accuracy(model: OrderClassifier, sentences: list[list[int]], batch: int, seed: int) -> float:
    model.eval()
    rng, correct, total = random.Random(seed), 0, 0
    for i in range(0, len(sentences), batch):
        tokens, lengths, labels = batch_of(sentences[i : i + batch], rng)
        correct += ((model(tokens, lengths) > 0).float() == labels).sum().item()
        total += len(labels)
    model.train()
    return correct / total


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", default=str(PENN), help="folder with train.txt, valid.txt (default: %(default)s)"
    )
    parser.add_argument(
        "--minutes", type=float, default=1.0, help="training time budget (default: %(default)s)"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="stop after this many steps (default: no limit)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=64, help="sentences per step (default: %(default)s)"
    )
    parser.add_argument("--embedding", type=int, default=64, help="embedding size (default: %(default)s)")
    parser.add_argument(
        "--hidden", type=int, default=128, help="state size per direction (default: %(default)s)"
    )
    parser.add_argument("--lr", type=float, default=2e-3, help="Adam's learning rate (default: %(default)s)")
    parser.add_argument(
        "--min-words", type=int, default=5, help="shortest sentence kept (default: %(default)s)"
    )
    parser.add_argument(
        "--max-words", type=int, default=40, help="longest sentence kept (default: %(default)s)"
    )
    parser.add_argument(
        "--valid-sentences", type=int, default=2000, help="validation sentences (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    index = {"<pad>": 0, "<unk>": 1}
    folder = Path(args.data)
    train = read_sentences(folder / "train.txt", index, True, args.min_words, args.max_words)
    valid = read_sentences(folder / "valid.txt", index, False, args.min_words, args.max_words)
    valid = valid[: args.valid_sentences]
    model = OrderClassifier(len(index), args.embedding, args.hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    print(f"{len(train)} training and {len(valid)} validation sentences, {len(index)} words; chance is 50%")

    start, step, losses = time.perf_counter(), 0, []
    while time.perf_counter() - start < args.minutes * 60 and (args.steps is None or step < args.steps):
        tokens, lengths, labels = batch_of(rng.sample(train, args.batch_size), rng)
        loss = F.binary_cross_entropy_with_logits(model(tokens, lengths), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        step += 1
        if step % 100 == 0:
            print(
                f"step {step:5d}  {time.perf_counter() - start:6.1f} s  loss {sum(losses[-100:]) / 100:.3f}",
                flush=True,
            )
    seconds = time.perf_counter() - start
    valid_accuracy = accuracy(model, valid, 256, args.seed + 1)
    print(f"after {seconds:.0f} s ({step} steps): validation accuracy {100 * valid_accuracy:.1f}%")
    summary = {
        "seconds": round(seconds, 1),
        "steps": step,
        "valid_accuracy": valid_accuracy,
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
