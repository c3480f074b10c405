"""Plot validation perplexity against wall-clock time for one or more ``train.py --log`` files.

From the repository's root::

    python examples/language_model/plot.py qrnn.jsonl lstm.jsonl --out val_ppl.png
"""

from __future__ import annotations

import argparse
import json


def read_log(path: str) -> tuple[str, list[float], list[float]]:
    """The run's label, and its evaluations' wall-clock minutes and validation perplexities."""
    label, minutes, ppl = path, [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            if record["event"] == "start" and label == path:
                label = f"{record['model']} ({record['params'] / 1e6:.1f}M params)"
            elif record["event"] == "eval":
                minutes.append(record["seconds"] / 60)
                ppl.append(record["val_ppl"])
    return label, minutes, ppl


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logs", nargs="+", help="JSON-lines logs written by train.py --log")
    parser.add_argument("--out", default="val_ppl.png", help="PNG file to write")
    parser.add_argument("--title", default="validation perplexity against wall-clock time")
    parser.add_argument("--labels", nargs="+", help="one legend entry per log (default: model and size)")
    args = parser.parse_args(argv)
    if args.labels and len(args.labels) != len(args.logs):
        parser.error(f"--labels: expected one per log ({len(args.logs)}), got {len(args.labels)}")

    import matplotlib  # the `examples` extra; imported here so that --help works without it

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, path in enumerate(args.logs):
        label, minutes, ppl = read_log(path)
        ax.plot(minutes, ppl, marker="o", markersize=3, label=args.labels[i] if args.labels else label)
    ax.set_xlabel("wall-clock minutes (training and evaluation)")
    ax.set_ylabel("validation perplexity")
    ax.set_yscale("log")
    ax.set_title(args.title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    plt.close(fig)
    print(args.out)
    return args.out


if __name__ == "__main__":
    main()
