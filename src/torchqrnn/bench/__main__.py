"""``python -m torchqrnn.bench [COMMAND] [OPTIONS]``: torchqrnn's benchmarks, one entry point.

Without a command it runs ``layer``, so ``python -m torchqrnn.bench`` is the main benchmark. Each command
has its own options: ``python -m torchqrnn.bench COMMAND --help``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import textwrap
from typing import NamedTuple

# The names the GPU benchmark reads from here (the Figure 4 grid it shares with the layer benchmark).
from .layer import BATCHES, LENGTHS, PAPER_GRID

__all__ = ["BATCHES", "COMMANDS", "LENGTHS", "PAPER_GRID", "main"]


class Command(NamedTuple):
    module: str  # a module of torchqrnn.bench with main(argv: list[str] | None) -> int
    summary: str


COMMANDS = {
    "layer": Command(
        "layer",
        "QRNN vs nn.LSTM / nn.GRU on this machine: the paper's Figure 4 grid, a PTB training step, a long "
        "sequence, streaming latency, peak memory (the default; about four minutes)",
    ),
    "forget-mult": Command(
        "forget_mult",
        "the ForgetMult CPU kernels against the reference loop and a floor measured on the same bytes, "
        "and the first call's compile and cache-load time",
    ),
    "deploy": Command(
        "deploy",
        "a QRNN and nn.LSTM / nn.GRU through eager, ExecuTorch, an AOTInductor package and ONNX Runtime: "
        "a sequence and a streaming step at batch 1",
    ),
    "gpu": Command("gpu", "the Triton kernels and a QRNN layer against cuDNN's LSTM on a CUDA device"),
    "acceptance": Command("acceptance", "the acceptance checks of the GPU path on a CUDA device"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m torchqrnn.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n"
        + "".join(
            textwrap.fill(command.summary, 100, initial_indent=f"  {name:<13}", subsequent_indent=" " * 15)
            + "\n"
            for name, command in COMMANDS.items()
        ),
    )
    parser.add_argument(
        "command", nargs="?", default="layer", help="one of the commands below (default: layer)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("-h", "--help"):
        _parser().print_help()
        return 0
    if argv and argv[0] in COMMANDS:
        name, rest = argv[0], argv[1:]
    elif argv and not argv[0].startswith("-"):
        _parser().error(f"unknown command {argv[0]!r}; expected one of {', '.join(COMMANDS)}")
    else:
        name, rest = "layer", argv  # options without a command are the layer benchmark's
    path = f"torchqrnn.bench.{COMMANDS[name].module}"
    try:
        module = importlib.import_module(path)
    except ModuleNotFoundError as error:
        if error.name != path:
            raise  # a package the command needs: its own message says which
        _parser().error(f"the {name!r} command is not part of this installation ({path} is missing)")
    return int(module.main(rest))


if __name__ == "__main__":
    raise SystemExit(main())
