"""The source distribution carries the test suite, and the package metadata reads right on PyPI."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
import tarfile
from typing import NamedTuple

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


class Sdist(NamedTuple):
    names: set[str]  # paths inside the archive, below its top folder
    metadata: str  # its PKG-INFO: what PyPI and pip read


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Sdist:
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: the installed setuptools, no download (the build writes src/*.egg-info, ignored by git)
    command = [sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(out), str(ROOT)]
    subprocess.run(command, check=True, capture_output=True, text=True)
    (archive,) = out.glob("torchqrnn-*.tar.gz")
    with tarfile.open(archive) as tar:
        top_info = next(n for n in tar.getnames() if n.count("/") == 1 and n.endswith("/PKG-INFO"))
        info = tar.extractfile(top_info)
        assert info is not None
        return Sdist({n.split("/", 1)[1] for n in tar.getnames() if "/" in n}, info.read().decode())


def test_sdist_carries_the_tests_and_what_they_read(sdist: Sdist) -> None:
    tree = {
        str(path.relative_to(ROOT))
        for folder in ("tests", "examples")
        for path in (ROOT / folder).rglob("*.py")
        if "__pycache__" not in path.parts and "runs" not in path.parts
    }
    assert {"tests/conftest.py", "tests/ops/forget_mult_helpers.py", "tests/nn/reference.py"} <= tree
    assert tree <= sdist.names, sorted(tree - sdist.names)  # every test, helper and example script
    assert {"README.md", "LICENSE", "pyproject.toml", "src/torchqrnn/__init__.py"} <= sdist.names
    junk = [n for n in sdist.names if re.search(r"__pycache__|\.py[cod]$|\.nb[ic]$|(^|/)runs/", n)]
    assert not junk, junk
    assert "Description-Content-Type: text/markdown" in sdist.metadata


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
