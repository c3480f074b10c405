"""The documentation builds with warnings as errors, and every Python example in it runs.

- the Sphinx build (``docs/``, autodoc of every public module) with ``-W``: a broken reference, a docstring
  that does not parse or a module that fails to import fails the test;
- each page's ``.. code-block:: python`` blocks, run in order in one namespace per page (a reader runs them
  in one session), with the assertions they carry;
- the ``>>>`` examples of the public docstrings, through doctest.

The gallery's scripts (``literalinclude`` on its pages) run in ``tests/examples``.
"""

from __future__ import annotations

import doctest
import importlib
import re
import textwrap
from pathlib import Path

import pytest

from ..conftest import DOCS_BUILD, DocsBuild

pytest.importorskip("sphinx", reason="the docs tests need the `docs` extra (sphinx, furo)")
pytest.importorskip("furo", reason="the docs tests need the `docs` extra (sphinx, furo)")

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = sorted(path for path in DOCS.rglob("*.rst") if "_build" not in path.parts)
DIRECTIVE = re.compile(
    r"^(?P<indent> *)\.\. (?P<kind>code-block|code|sourcecode|literalinclude)::\s*(?P<arg>.*)$"
)
# Languages a page may show without running it: shell sessions and plain text (figures, outputs).
NOT_RUN = {"console", "bash", "text"}
PUBLIC_MODULES = ["torchqrnn", "torchqrnn.export", "torchqrnn.compat.fastai"]


def code_blocks(page: Path) -> list[tuple[str, int, str]]:
    """``(language, line number, code)`` of each code block of an .rst page (literalinclude: its path)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks = []
    for number, line in enumerate(lines):
        match = DIRECTIVE.match(line)
        if not match:
            continue
        if match["kind"] == "literalinclude":
            blocks.append(("literalinclude", number + 1, match["arg"]))
            continue
        indent, body, i = len(match["indent"]), [], number + 1
        while i < len(lines) and re.match(r"^\s+:[\w-]+:", lines[i]):  # the directive's options
            i += 1
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
            body.append(lines[i])
            i += 1
        blocks.append((match["arg"].strip(), number + 1, textwrap.dedent("\n".join(body)).strip("\n")))
    return blocks


def test_pages_found() -> None:
    names = {path.relative_to(DOCS).as_posix() for path in PAGES}
    assert {"index.rst", "quickstart.rst", "api/torchqrnn.rst", "gallery/index.rst"} <= names


def test_sphinx_build_has_no_warnings(docs_build: DocsBuild) -> None:
    # the README's command, as the shared fixture runs it
    assert f"python {' '.join(DOCS_BUILD)}" in (ROOT / "README.md").read_text()
    assert docs_build.result.returncode == 0, docs_build.result.stdout + docs_build.result.stderr
    html = docs_build.tree / "docs" / "_build" / "html"
    for page in PAGES:
        assert (html / page.relative_to(DOCS).with_suffix(".html")).is_file(), page
    # every public name has its entry in the reference, under its public path
    reference = "".join(path.read_text(encoding="utf-8") for path in (html / "api").glob("*.html"))
    for module_name in PUBLIC_MODULES:
        for name in importlib.import_module(module_name).__all__:
            anchor = f'id="{module_name}.{name}"'
            assert anchor in reference, f"{module_name}.{name} is missing from docs/api"
    # the function torchqrnn.forget_mult, not the module of the same name, with its real signature
    entry = reference[reference.index('id="torchqrnn.forget_mult"') :][:3000]
    assert "batch_first" in entry and "reverse" in entry, entry


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(DOCS).as_posix() for p in PAGES])
def test_page_examples_run(page: Path) -> None:
    blocks = code_blocks(page)
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    for language, line, code in blocks:
        if language == "literalinclude":
            # only the gallery shows files, and only its scripts, which tests/examples runs
            assert page.parent.name == "gallery", f"{page}:{line}: literalinclude outside the gallery"
            assert (page.parent / code).resolve().is_relative_to(ROOT / "examples"), f"{page}:{line}: {code}"
            continue
        assert language == "python" or language in NOT_RUN, (
            f"{page}:{line}: code block in {language!r}: use python (run by this test) or one of {NOT_RUN}"
        )
        if language == "python":
            exec(compile(code, f"{page}:{line}", "exec"), namespace)


def test_docstring_examples_run() -> None:
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    examples = 0
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            globs = {"torch": importlib.import_module("torch"), **vars(module)}
            for test in finder.find(obj, f"{module_name}.{name}", globs=globs):
                examples += len(test.examples)
                runner.run(test)
    assert examples > 0
    assert runner.failures == 0, f"{runner.failures} docstring example(s) failed (see the output above)"
