"""Sphinx configuration of torchqrnn's documentation.

Build (from the repository's root): ``python -m sphinx -W -b html docs docs/_build/html``.
Sphinx because the docstrings are written in reStructuredText with Sphinx roles (``:func:``, ``:class:``,
``.. math::``), as PyTorch's own are: autodoc renders them as written, napoleon reads their Google-style
``Args:`` / ``Returns:`` sections, and nothing has to be converted to Markdown.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # the checkout's torchqrnn, installed or not

import torchqrnn  # noqa: E402

project = "torchqrnn"
author = "torchqrnn developers"
copyright = "torchqrnn developers, BSD-3-Clause"
release = torchqrnn.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]
exclude_patterns = ["_build"]
templates_path: list[str] = []

# Docstrings: Google style (Args:, Returns:, Shapes:), signatures from the code, type hints in the signature.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "show-inheritance": False}
autodoc_preserve_defaults = True
# nn.Module's forward is the call; the class docstring documents it, as torch's own reference does.
autodoc_inherit_docstrings = False

html_theme = "furo"
html_title = f"torchqrnn {release}"
html_static_path = ["_static"]
pygments_style = "sphinx"
