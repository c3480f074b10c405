"""Word-level corpora in awd-lstm-lm's format, and the batching that feeds truncated BPTT.

A corpus is a folder holding ``train.txt``, ``valid.txt`` and ``test.txt``. Every line is split on whitespace
and closed with ``<eos>``; the vocabulary is built over the three files in order of first appearance, so word
ids are the same as awd-lstm-lm's and pytorch/examples' for the same files.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

EOS = "<eos>"


class Corpus:
    """The three splits of a corpus as 1-D tensors of word ids, and the vocabulary (``words``, ``index``)."""

    def __init__(self, path: str) -> None:
        self.words: list[str] = []  # id -> word
        self.index: dict[str, int] = {}  # word -> id
        self.train = self.tokenize(os.path.join(path, "train.txt"))
        self.valid = self.tokenize(os.path.join(path, "valid.txt"))
        self.test = self.tokenize(os.path.join(path, "test.txt"))

    def __len__(self) -> int:
        return len(self.words)

    def tokenize(self, filename: str) -> Tensor:
        """The file's word ids, ``<eos>`` after every line; new words join the vocabulary."""
        if not os.path.isfile(filename):
            raise FileNotFoundError(
                f"expected a corpus file at {filename!r} (train.txt, valid.txt, test.txt)"
            )
        ids: list[int] = []
        with open(filename, encoding="utf-8") as f:
            for line in f:  # text mode, line by line: the counts of awd-lstm-lm's data.py
                for word in [*line.split(), EOS]:
                    if word not in self.index:
                        self.index[word] = len(self.words)
                        self.words.append(word)
                    ids.append(self.index[word])
        return torch.tensor(ids, dtype=torch.long)


def batchify(ids: Tensor, batch_size: int) -> Tensor:
    """Cut the token stream into ``batch_size`` contiguous columns, dropping the remainder.

    Column ``b`` holds tokens ``[b * rows, (b + 1) * rows)``; a model reads all columns in parallel, row by
    row, carrying each column's recurrent state from one BPTT segment to the next.
    """
    rows = ids.numel() // batch_size
    return ids[: rows * batch_size].view(batch_size, rows).t().contiguous()  # (rows, batch_size)


def get_batch(source: Tensor, i: int, seq_len: int) -> tuple[Tensor, Tensor]:
    """Rows ``[i, i + seq_len)`` as inputs and the rows one step later as targets, both ``(seq_len, B)``."""
    seq_len = min(seq_len, source.shape[0] - 1 - i)
    return source[i : i + seq_len], source[i + 1 : i + 1 + seq_len]
