"""numba's cache of torchqrnn's kernels lives outside the installed package, and read-only installs work.

Each test copies the package into a temporary "site-packages" and runs a kernel in a fresh interpreter (the
cache folder is decided when the kernels are first imported). Read-only folders are made read-only twice: by
their permission bits (which bind everyone but root) and by an audit hook in the child that fails every write
under them with EROFS, as a read-only file system would (which binds root too, as CI runs).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import stat
import subprocess
import sys
import tempfile

import pytest

import torchqrnn
from torchqrnn.ops import _numba_cache

PACKAGE = pathlib.Path(torchqrnn.__file__).resolve().parent

# The child: optionally fail writes under READ_ONLY (os.pathsep-separated), run one CPU kernel, check it
# against the reference, and print where numba cached it and whether that was a cache hit.
CHILD = """
import errno, os, sys
read_only = [os.path.realpath(p) for p in os.environ.get("READ_ONLY", "").split(os.pathsep) if p]

def under_read_only(path):
    path = os.path.realpath(os.fsdecode(path))
    return any(path == root or path.startswith(root + os.sep) for root in read_only)

def refuse_writes(event, args):
    writing = False
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        mode, flags = args[1], args[2]
        writing = (mode is not None and any(c in mode for c in "wax+")) or (
            mode is None and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | getattr(os, "O_TMPFILE", 0))
        )
    elif event in ("os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.chmod"):
        writing = True
    if writing and under_read_only(args[0]):
        raise OSError(errno.EROFS, "Read-only file system (simulated)", os.fsdecode(args[0]))

sys.addaudithook(refuse_writes)

import torch
import torchqrnn
from torchqrnn.ops._numba_cache import cache_dir
from torchqrnn.ops.forget_mult import cpu

assert torchqrnn.__file__.startswith(os.environ["SITE"]), torchqrnn.__file__
f, x = torch.rand(7, 2, 5), torch.randn(7, 2, 5)
torch.testing.assert_close(torchqrnn.forget_mult(f, x), torchqrnn.forget_mult(f, x, backend="reference"))
stats = cpu._forward_jobs.stats  # the entry point of a forward call (run_jobs, one thread here)
print(cache_dir(), stats.cache_path, sum(stats.cache_hits.values()), sep="\t")
"""


def _install_copy(tmp_path: pathlib.Path) -> pathlib.Path:
    site = tmp_path / "site-packages"
    shutil.copytree(PACKAGE, site / "torchqrnn", ignore=shutil.ignore_patterns("__pycache__"))
    return site


def _files(folder: pathlib.Path) -> set[pathlib.Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def _make_read_only(folder: pathlib.Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _run_kernel(
    site: pathlib.Path, tmp_path: pathlib.Path, read_only: list[pathlib.Path], **env: str
) -> list[str]:
    """Run CHILD with the copy at ``site`` first on the path; return its printed fields."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    child_env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("TORCHQRNN_CACHE_DIR", "NUMBA_CACHE_DIR", "XDG_CACHE_HOME", "PYTHONPATH")
    }
    child_env |= {
        "HOME": str(home),
        "PYTHONPATH": str(site),
        "PYTHONDONTWRITEBYTECODE": "1",  # the interpreter's own .pyc files are not numba's
        "SITE": str(site),
        "READ_ONLY": os.pathsep.join(map(str, read_only)),
        **env,
    }
    result = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, env=child_env, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split("\t")


def test_cache_lands_in_the_override_folder_and_nothing_in_the_package(tmp_path: pathlib.Path) -> None:
    site, cache = _install_copy(tmp_path), tmp_path / "my cache"
    before = _files(site)
    root, path, hits = _run_kernel(site, tmp_path, [], TORCHQRNN_CACHE_DIR=str(cache))
    assert pathlib.Path(root) == cache.resolve() and pathlib.Path(path).parent == cache.resolve()
    assert int(hits) == 0
    assert _files(site) == before, "numba wrote inside the installed package"
    assert any(p.suffix == ".nbi" for p in _files(cache)) and any(p.suffix == ".nbc" for p in _files(cache))
    # a second process loads the compiled kernel from there
    assert int(_run_kernel(site, tmp_path, [], TORCHQRNN_CACHE_DIR=str(cache))[2]) > 0


def test_read_only_package_caches_in_the_per_user_folder(tmp_path: pathlib.Path) -> None:
    site, xdg = _install_copy(tmp_path), tmp_path / "xdg"
    before = _files(site)
    _make_read_only(site)
    root, path, _ = _run_kernel(site, tmp_path, [site], XDG_CACHE_HOME=str(xdg))
    expected = xdg / "torchqrnn" / "numba"
    assert pathlib.Path(root) == expected.resolve() and pathlib.Path(path).parent == expected.resolve()
    assert any(p.suffix == ".nbi" for p in _files(expected))
    assert _files(site) == before


def test_nothing_writable_runs_without_a_cache(tmp_path: pathlib.Path) -> None:
    site, cache = _install_copy(tmp_path), tmp_path / "cache"
    cache.mkdir()
    before = _files(tmp_path)
    for folder in (site, cache):
        _make_read_only(folder)
    # every folder Python's tempfile would fall back to is read-only too (the working directory is tmp_path)
    temp_folders = [tempfile.gettempdir(), "/tmp", "/var/tmp", "/usr/tmp"]
    read_only = [tmp_path, *(pathlib.Path(p) for p in temp_folders if os.path.isdir(p))]
    root, path, hits = _run_kernel(site, tmp_path, read_only, TORCHQRNN_CACHE_DIR=str(cache))
    assert root == "None" and path == "None" and int(hits) == 0  # numba's NullCache: no cache, no error
    assert _files(tmp_path) == before


def test_user_cache_root_follows_the_platform_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("XDG_CACHE_HOME", "/var/cache/me")
    assert _numba_cache.user_cache_root() == pathlib.Path("/var/cache/me/torchqrnn/numba")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")  # the XDG spec: relative paths are invalid
    assert _numba_cache.user_cache_root() == pathlib.Path.home() / ".cache" / "torchqrnn" / "numba"
    monkeypatch.setattr(sys, "platform", "darwin")
    assert (
        _numba_cache.user_cache_root() == pathlib.Path.home() / "Library" / "Caches" / "torchqrnn" / "numba"
    )
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", "/c/Users/me/AppData/Local")
    assert _numba_cache.user_cache_root() == pathlib.Path("/c/Users/me/AppData/Local/torchqrnn/numba")


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX ownership rules")
def test_shared_temp_folder_is_used_only_while_private(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_numba_cache.tempfile, "gettempdir", lambda: str(tmp_path))
    folder = _numba_cache._private_temp_folder()
    assert folder == tmp_path / f"torchqrnn-numba-{os.getuid()}"
    assert folder is not None and stat.S_IMODE(folder.stat().st_mode) == 0o700
    folder.chmod(0o777)  # as another user's plant would be: its pickles must not be loaded
    assert _numba_cache._private_temp_folder() is None


def test_locator_claims_only_torchqrnn_files(tmp_path: pathlib.Path) -> None:
    other = tmp_path / "user_code.py"
    other.write_text("def f():\n    return 1\n")
    namespace: dict[str, object] = {}
    exec(compile(other.read_text(), str(other), "exec"), namespace)
    locator = _numba_cache.TorchqrnnCacheLocator
    assert locator.from_function(namespace["f"], str(other)) is None  # the user's numba code: numba decides
    assert _numba_cache._inside_package(str(PACKAGE / "ops" / "forget_mult" / "cpu.py"))
