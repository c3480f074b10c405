"""The source distribution carries the test suite and no build output, the package metadata reads right on
PyPI, and what a release needs (a version, its CHANGELOG.md entry, `twine check`) holds."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
import tarfile
import tomllib
from typing import NamedTuple

import pytest

import torchqrnn

from ..conftest import DocsBuild

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


class Sdist(NamedTuple):
    names: set[str]  # paths inside the archive, below its top folder
    metadata: str  # its PKG-INFO: what PyPI and pip read
    dist: pathlib.Path  # the folder holding the sdist and the wheel


@pytest.fixture(scope="module")
def sdist(docs_build: DocsBuild, tmp_path_factory: pytest.TempPathFactory) -> Sdist:
    """The README's release build, ``python -m build`` (an sdist and a wheel), of a checkout in which the
    README's documentation build has run: ``docs/_build`` is there, as it is for whoever followed both."""
    assert docs_build.result.returncode == 0, docs_build.result.stderr[-3000:]
    assert (docs_build.tree / "docs/_build/html/.doctrees").is_dir()  # the 900 KB of pickles, among others
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: the installed setuptools, no download
    command = [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(docs_build.tree)]
    subprocess.run(command, check=True, capture_output=True, text=True)
    (archive,) = out.glob("torchqrnn-*.tar.gz")
    with tarfile.open(archive) as tar:
        top_info = next(n for n in tar.getnames() if n.count("/") == 1 and n.endswith("/PKG-INFO"))
        info = tar.extractfile(top_info)
        assert info is not None
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        return Sdist(names, info.read().decode(), out)


def test_sdist_carries_the_tests_and_what_they_read(sdist: Sdist) -> None:
    tree = {
        str(path.relative_to(ROOT))
        for folder in ("tests", "examples")
        for path in (ROOT / folder).rglob("*.py")
        if "__pycache__" not in path.parts and "runs" not in path.parts
    }
    assert {"tests/conftest.py", "tests/ops/forget_mult_helpers.py", "tests/nn/reference.py"} <= tree
    assert tree <= sdist.names, sorted(tree - sdist.names)  # every test, helper and example script
    assert {
        "README.md",
        "CHANGELOG.md",
        "LICENSE",
        "pyproject.toml",
        "src/torchqrnn/__init__.py",
    } <= sdist.names
    assert {"docs/conf.py", "docs/index.rst", ".ci/run"} <= sdist.names  # the documentation's sources
    junk = [
        n for n in sdist.names if re.search(r"__pycache__|\.py[cod]$|\.nb[ic]$|(^|/)runs/|(^|/)_build/", n)
    ]
    assert not junk, junk
    assert "Description-Content-Type: text/markdown" in sdist.metadata


def test_twine_check_passes(sdist: Sdist) -> None:
    files = sorted(sdist.dist.iterdir())
    version = torchqrnn.__version__
    assert {f.name for f in files} == {f"torchqrnn-{version}.tar.gz", f"torchqrnn-{version}-py3-none-any.whl"}
    result = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, files)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASSED") == 2, result.stdout


def test_the_changelog_has_the_version_being_made() -> None:
    version = torchqrnn.__version__
    release = re.sub(r"\.dev\d+$", "", version)
    headings = re.findall(r"^## (\S+) \((.+)\)$", (ROOT / "CHANGELOG.md").read_text(), flags=re.MULTILINE)
    assert headings, "CHANGELOG.md has no '## VERSION (DATE)' section"
    assert headings[0][0] == release, (headings[0], version)  # the newest section is the coming release
    if version != release:  # a development version: not released yet
        assert headings[0][1] == "unreleased"
    else:  # a release: dated
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", headings[0][1]), headings[0]


def test_the_versions_claimed_are_the_versions_tested() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (torch_requirement,) = [r for r in project["dependencies"] if r.startswith("torch")]
    (ci_torch,) = set(re.findall(r"torch==([\d.]+)", (ROOT / ".ci/run").read_text()))  # CI's one torch
    floor = torch_requirement.removeprefix("torch>=")
    assert ci_torch.startswith(f"{floor}."), (torch_requirement, ci_torch)  # torch>=2.13: CI's 2.13.0
    python_floor = project["requires-python"].removeprefix(">=")
    pythons = [c.rsplit(" :: ", 1)[1] for c in project["classifiers"] if re.search(r"Python :: 3\.\d+$", c)]
    assert pythons == [python_floor], (project["requires-python"], pythons)  # the one Python tested
    assert f"Python {python_floor}" in README and f"torch {floor}" in README  # README's "Versions" says so


def test_readme_links_and_images_work_off_the_repository() -> None:
    # PyPI shows the README as the project page, where a path relative to the repository leads nowhere
    targets = re.findall(r"!?\[[^\]]*\]\(([^)\s]+)", README) + re.findall(
        r"<img[^>]*src=\"([^\"]+)\"", README
    )
    relative = [t for t in targets if not re.match(r"(https?://|#)", t)]
    assert not relative, relative


def test_each_readme_example_has_an_extra_that_installs_its_imports(sdist: Sdist) -> None:
    extras: dict[str, set[str]] = {}
    required = set()
    for requirement in re.findall(r"^Requires-Dist: (.+)$", sdist.metadata, flags=re.MULTILINE):
        name = re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()
        extra = re.search(r"extra == \"([\w-]+)\"", requirement)
        if extra:
            extras.setdefault(extra.group(1), set()).add(name)
        else:
            required.add(name)
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)
    imported = {
        name.split(".")[0]
        for block in blocks
        for name in re.findall(r"^\s*(?:import|from)\s+([\w.]+)", block, flags=re.MULTILINE)
    }
    third_party = imported - set(sys.stdlib_module_names) - required - {"torchqrnn"}
    assert "onnxruntime" in third_party  # the ONNX example runs the exported graph
    for module in sorted(third_party):
        providing = [extra for extra, names in extras.items() if extra != "test" and module.lower() in names]
        assert providing, f"no extra but [test] installs {module}, which a README example imports"
        assert any(f"torchqrnn[{extra}]" in README for extra in providing), (module, providing)
