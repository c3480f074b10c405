"""Sample text from a ``train.py`` checkpoint, one word at a time.

From the repository's root::

    python examples/language_model/generate.py --checkpoint runs/qrnn.pt --words 200 --prompt "the company"
"""

from __future__ import annotations

import argparse

import torch
from torch.nn import functional as F

# isort: split
from data import EOS
from model import RNNModel


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True, help="a checkpoint written by train.py --save")
    parser.add_argument("--words", type=int, default=100, help="how many words to generate")
    parser.add_argument("--temperature", type=float, default=1.0, help="below 1: likelier words")
    parser.add_argument("--prompt", default="", help="words to start from ('': a sentence start)")
    parser.add_argument("--seed", type=int, default=1111, help="random seed of the sampling")
    args = parser.parse_args(argv)
    if args.temperature < 1e-3:
        parser.error("--temperature: expected at least 1e-3")

    checkpoint = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    cfg, vocab = checkpoint["config"], checkpoint["vocab"]
    index = {word: i for i, word in enumerate(vocab)}
    model = RNNModel(cfg["model"], len(vocab), cfg["emsize"], cfg["nhid"], cfg["nlayers"])
    model.load_state_dict(checkpoint["averaged"] or checkpoint["model"])  # ASGD's average when there is one
    model.eval()

    prompt = args.prompt.split() or [EOS]
    unknown = [word for word in prompt if word not in index]
    if unknown:
        parser.error(f"--prompt: words not in the vocabulary: {unknown}")
    torch.manual_seed(args.seed)
    words: list[str] = []
    with torch.no_grad():
        state = model.init_state(1)
        x = torch.tensor([index[word] for word in prompt]).unsqueeze(1)  # (T, 1): the prompt, then 1 word
        for _ in range(args.words):
            logits, state, _, _ = model(x, state)
            probs = F.softmax(logits[-1, 0] / args.temperature, dim=-1)  # (V,): the next word
            word = int(torch.multinomial(probs, 1))
            words.append(vocab[word])
            x = torch.tensor([[word]])
    text = " ".join(args.prompt.split() + words).replace(f" {EOS} ", "\n").replace(EOS, "\n")
    print(text)
    return text


if __name__ == "__main__":
    main()
