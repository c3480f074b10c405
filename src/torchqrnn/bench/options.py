"""Checks of the benchmarks' command-line options, run before the first measurement so that a bad option
fails at once (``parser.error``: usage, the message, exit status 2), not after minutes of timing."""

from __future__ import annotations

import argparse
import os

import torch


def command_parser(command: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser of ``python -m torchqrnn.bench COMMAND``, its module docstring as the description."""
    return argparse.ArgumentParser(
        prog=f"python -m torchqrnn.bench {command}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def check_device(parser: argparse.ArgumentParser, text: str | None, option: str = "--device") -> torch.device:
    """The device named by ``text`` (default: cuda when available, else cpu), which must exist here."""
    if text is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        parser.error(f"{option}: expected cpu, cuda or cuda:N, got {text!r}")
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        parser.error(f"{option}: expected cpu, cuda or cuda:N, got {text!r}")
    if not torch.cuda.is_available():
        built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        parser.error(f"{option} {text}: no CUDA device here (torch {torch.__version__}, {built})")
    if device.index is not None and device.index >= torch.cuda.device_count():
        parser.error(
            f"{option} {text}: expected an index below {torch.cuda.device_count()}, got {device.index}"
        )
    return device


def check_plotting(parser: argparse.ArgumentParser, option: str) -> None:
    """``option`` draws with matplotlib, which must be installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        parser.error(
            f"{option} needs matplotlib, which does not import ({error}): pip install 'torchqrnn[bench]'"
        )


def check_output_path(parser: argparse.ArgumentParser, option: str, path: str) -> None:
    """``path`` can be written: its folder exists and is writable, and it is not itself a folder."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        parser.error(f"{option}: expected a file name, got the folder {path!r}")
    if not os.path.isdir(folder):
        parser.error(f"{option}: the folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK):
        parser.error(f"{option}: the folder {folder!r} is not writable")
