"""Where numba caches torchqrnn's compiled kernels: a per-user folder, never the installed package.

numba's default for ``@njit(cache=True)`` is the ``__pycache__`` folder beside the source file, that is inside
``site-packages/torchqrnn/``: files that ``pip uninstall`` leaves behind (after which ``import torchqrnn``
finds an empty namespace package) and that a read-only install cannot write at all. The kernels import
``njit`` from here instead of from numba; it registers, once, a numba cache locator that claims only files
inside this package, so the user's other numba code (and numba's global ``NUMBA_CACHE_DIR``) is left alone.

The folder, first writable one wins:

1. ``$TORCHQRNN_CACHE_DIR`` when set;
2. the per-user cache folder: ``$XDG_CACHE_HOME/torchqrnn/numba`` (default ``~/.cache/torchqrnn/numba``) on
   Linux and other POSIX systems, ``~/Library/Caches/torchqrnn/numba`` on macOS,
   ``%LOCALAPPDATA%\\torchqrnn\\numba`` on Windows;
3. a folder of this user's in the temporary directory (``torchqrnn-numba-<uid>``, created private and
   trusted only while it stays private: cache files are pickles), else a fresh temporary folder for this
   process, removed at exit.

When none can be written, the kernels compile on every start, with no cache and no error. Each source folder
gets its own sub-folder (its name and a hash of its path, as numba names them), so two installed copies do
not overwrite each other's entries; numba discards the entries of a changed source or of another numba.
"""

from __future__ import annotations

import atexit
import functools
import os
import pathlib
import shutil
import stat
import sys
import tempfile
from typing import Any

import numba
from numba.core import caching

ENV_VAR = "TORCHQRNN_CACHE_DIR"
PACKAGE_DIR = pathlib.Path(__file__).resolve().parents[1]  # .../torchqrnn


def user_cache_root() -> pathlib.Path:
    """The platform's per-user cache folder for torchqrnn's kernels (without the environment override)."""
    home = pathlib.Path.home()
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA")
        return (pathlib.Path(base) if base else home / "AppData" / "Local") / "torchqrnn" / "numba"
    if sys.platform == "darwin":
        return home / "Library" / "Caches" / "torchqrnn" / "numba"
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    # the XDG spec: a relative path in the variable is invalid and must be ignored
    base = pathlib.Path(xdg) if os.path.isabs(xdg) else home / ".cache"
    return base / "torchqrnn" / "numba"


def _writable(folder: pathlib.Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError:
        return False
    return True


def _private_temp_folder() -> pathlib.Path | None:
    """This user's folder in the shared temporary directory, if it is (or can be made) private to them."""
    getuid = getattr(os, "getuid", None)
    if getuid is None:
        return None
    try:
        # gettempdir raises when no temporary folder is writable
        folder = pathlib.Path(tempfile.gettempdir()) / f"torchqrnn-numba-{getuid()}"
        folder.mkdir(mode=0o700, exist_ok=True)
        info = folder.lstat()
    except OSError:
        return None
    # Another user could have made it first, to plant pickles that this process would load.
    private = (
        stat.S_ISDIR(info.st_mode)
        and info.st_uid == getuid()
        and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    )
    return folder if private and _writable(folder) else None


def _process_temp_folder() -> pathlib.Path | None:
    try:
        folder = pathlib.Path(tempfile.mkdtemp(prefix="torchqrnn-numba-"))
    except OSError:
        return None
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


@functools.lru_cache(maxsize=1)
def cache_dir() -> pathlib.Path | None:
    """The folder numba caches torchqrnn's kernels in, or None when no folder can be written (no cache)."""
    override = os.environ.get(ENV_VAR)
    preferred = pathlib.Path(override).expanduser() if override else user_cache_root()
    if _writable(preferred):
        return preferred.resolve()
    return _private_temp_folder() or _process_temp_folder()


def _inside_package(py_file: str) -> bool:
    try:
        return pathlib.Path(py_file).resolve().is_relative_to(PACKAGE_DIR)
    except (OSError, ValueError):
        return False


class TorchqrnnCacheLocator(caching._SourceFileBackedLocatorMixin, caching._CacheLocator):
    """numba cache locator for the functions defined in torchqrnn's own source files."""

    def __init__(self, py_func: Any, py_file: str, root: pathlib.Path) -> None:
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        self._cache_path = str(root / self.get_suitable_cache_subpath(py_file))

    def get_cache_path(self) -> str:
        return self._cache_path

    @classmethod
    def from_function(cls, py_func: Any, py_file: str) -> TorchqrnnCacheLocator | None:
        if not os.path.exists(py_file) or not _inside_package(py_file):
            return None  # not ours: numba's own locators decide
        root = cache_dir()
        if root is None:
            return None
        locator = cls(py_func, py_file, root)
        try:
            locator.ensure_cache_path()
        except OSError:
            return None
        return locator


def _register() -> None:
    # numba 0.68 names the class CacheImpl, older versions _CacheImpl; its subclasses share the list
    impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl
    if TorchqrnnCacheLocator not in impl._locator_classes:
        impl._locator_classes.insert(0, TorchqrnnCacheLocator)


def njit(*args: Any, **options: Any) -> Any:
    """``numba.njit``, whose ``cache=True`` caches in :func:`cache_dir` (with nowhere to write: no cache)."""
    if options.get("cache"):
        if cache_dir() is None:
            options["cache"] = False
        else:
            _register()
    return numba.njit(*args, **options)
