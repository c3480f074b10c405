"""Plot validation perplexity against wall-clock time for one or more ``train.py --log`` files.

From the repository's root::

    python examples/language_model/plot.py runs/qrnn.jsonl runs/lstm.jsonl --out runs/val_ppl.png
"""

from __future__ import annotations

import argparse
import json
import os


def read_log(path: str) -> list[tuple[str, list[float], list[float]]]:
    """Each run in the log: its label, and its evaluations' wall-clock minutes and validation perplexities.

    A log holds one run and the runs resumed from it; an older train.py appended every run to the same file,
    so a ``start`` record at step 0 begins another run, drawn as a line of its own."""
    runs: list[tuple[str, list[float], list[float]]] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            if record["event"] == "start" and (record.get("step", 0) == 0 or not runs):
                runs.append((f"{record['model']} ({record['params'] / 1e6:.1f}M params)", [], []))
            elif record["event"] == "eval":
                if not runs:
                    runs.append((path, [], []))
                runs[-1][1].append(record["seconds"] / 60)
                runs[-1][2].append(record["val_ppl"])
    if len(runs) > 1:
        runs = [(f"{label}, run {i + 1}", minutes, ppl) for i, (label, minutes, ppl) in enumerate(runs)]
    return runs


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("logs", nargs="+", help="JSON-lines logs written by train.py --log")
    parser.add_argument("--out", default="runs/val_ppl.png", help="PNG file to write (its folder is created)")
    parser.add_argument("--title", default="validation perplexity against wall-clock time", help="the title")
    parser.add_argument("--labels", nargs="+", help="one legend entry per log (default: model and size)")
    args = parser.parse_args(argv)
    if args.labels and len(args.labels) != len(args.logs):
        parser.error(f"--labels: expected one per log ({len(args.logs)}), got {len(args.labels)}")

    import matplotlib  # the `examples` extra; imported here so that --help works without it

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, path in enumerate(args.logs):
        for label, minutes, ppl in read_log(path):
            ax.plot(minutes, ppl, marker="o", markersize=3, label=args.labels[i] if args.labels else label)
    ax.set_xlabel("wall-clock minutes (training and evaluation)")
    ax.set_ylabel("validation perplexity")
    ax.set_yscale("log")
    ax.set_title(args.title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=120)
    plt.close(fig)
    print(args.out)
    return args.out


if __name__ == "__main__":
    main()
