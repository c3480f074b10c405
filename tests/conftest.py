"""Shared test setup: fresh buffers are poisoned with NaN, so an output a kernel forgets to write fails; the
documentation is built once for the tests that read the build (tests/docs) or package beside it
(tests/packaging); the Triton kernels run in Triton's interpreter."""

from __future__ import annotations

import os

# Before anything imports triton (torch._inductor, torchao and ExecuTorch do, while their tests are
# collected): Triton builds its kernels for the interpreter only if this is set when it is first imported.
# The Triton kernels' test modules set it too, but a subset of the suite may import triton before them.
os.environ.setdefault("TRITON_INTERPRET", "1")

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# The README's documentation build, run from the repository's root
DOCS_BUILD = ["-m", "sphinx", "-W", "-b", "html", "docs", "docs/_build/html"]
# What a checkout may hold that is no source: never copied into the tree the tests build in
NOT_SOURCE = shutil.ignore_patterns(
    ".git", "__pycache__", "*.egg-info", "build", "dist", "_build", "runs", ".*_cache", ".venv", "venv*"
)


class DocsBuild(NamedTuple):
    tree: Path  # a copy of the source tree, with the built site in docs/_build/html
    result: subprocess.CompletedProcess[str]  # the build's exit status and output


@pytest.fixture(scope="session")
def docs_build(tmp_path_factory: pytest.TempPathFactory) -> DocsBuild:
    """The README's documentation build (``python -m sphinx -W -b html docs docs/_build/html``), run in a copy
    of the source tree, so that ``docs/_build`` holds what it holds in a checkout after that command (the
    pages, Sphinx's pickled doctrees): tests/docs checks the site, tests/packaging builds the sdist of this
    tree and checks that none of it goes in. One Sphinx run for both."""
    pytest.importorskip("sphinx", reason="the documentation build needs the `docs` extra (sphinx, furo)")
    pytest.importorskip("furo", reason="the documentation build needs the `docs` extra (sphinx, furo)")
    tree = tmp_path_factory.mktemp("checkout") / "torchqrnn"
    shutil.copytree(ROOT, tree, ignore=NOT_SOURCE)
    command = [sys.executable, *DOCS_BUILD, "--keep-going"]  # (every warning listed, not the first alone)
    result = subprocess.run(command, capture_output=True, text=True, cwd=tree)
    return DocsBuild(tree, result)


@pytest.fixture(autouse=True)
def poison_empty(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("empty", "empty_like", "empty_strided"):
        original = getattr(torch, name)

        def poisoned(*args, _original=original, **kwargs):
            t = _original(*args, **kwargs)
            if t.is_floating_point() and t.device.type not in ("meta",) and t.numel():
                with torch.no_grad():
                    t.fill_(float("nan"))
            return t

        monkeypatch.setattr(torch, name, poisoned)
    yield


@pytest.fixture(autouse=True)
def seeded() -> None:
    torch.manual_seed(0)
