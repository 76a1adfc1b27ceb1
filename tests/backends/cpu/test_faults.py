"""Faults around the native kernel never kill the process: a damaged or planted cached library is rebuilt, an unsafe
cache folder is refused, a failed link reports the compiler, C++ out-of-memory is a RuntimeError, and leftovers of
killed compiles are removed. Each check that could crash runs in a subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from doppel_torch.backends.cpu import build

REPO = Path(__file__).resolve().parents[3]
RENDER = "from doppel_torch import VoiceSynth; s = VoiceSynth(backend='cpu', duration=0.05); print(s(s.random_params(2)).shape)"


def _run(code: str, cache: Path, **env) -> subprocess.CompletedProcess:
    full = {**os.environ, "DOPPEL_TORCH_CACHE": str(cache), **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=full, timeout=300)


def _library(cache: Path) -> Path:
    (found,) = cache.rglob(build.LIBRARY)
    return found


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage"])
def test_a_damaged_cached_library_is_rebuilt(tmp_path, damage):
    assert _run(RENDER, tmp_path).returncode == 0
    lib = _library(tmp_path)
    data = lib.read_bytes()
    lib.write_bytes({"truncate": data[: len(data) // 3], "empty": b"", "garbage": os.urandom(len(data))}[damage])
    proc = _run(RENDER, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "torch.Size([2, 800])" in proc.stdout
    assert lib.read_bytes() != b"" and build._intact(lib)


def test_out_of_memory_in_the_kernel_is_a_runtime_error(tmp_path):
    code = textwrap.dedent("""
        import resource
        from doppel_torch import VoiceSynth
        s = VoiceSynth(backend="cpu", duration=7200)   # 115 M samples: the kernel's tables need ~2 GB more
        s(s.random_params(1, seed=0)[:0])              # build and load the library before the limit
        size = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (size + 1_200_000_000, resource.RLIM_INFINITY))
        try:
            s(s.random_params(1))
            print("rendered")
        except RuntimeError as err:
            print("RuntimeError:", err)
    """)
    proc = _run(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]  # the process survives: no std::bad_alloc abort
    assert "RuntimeError:" in proc.stdout and ("out of memory" in proc.stdout or "allocate" in proc.stdout)


def test_a_cache_other_users_can_write_is_refused(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("DOPPEL_TORCH_CACHE", str(shared))
    with pytest.raises(RuntimeError, match="writable by other users"):
        build._build()
    assert not list(shared.rglob("*.so"))


def test_a_failed_link_reports_the_compiler(tmp_path, monkeypatch):
    monkeypatch.setenv("DOPPEL_TORCH_CACHE", str(tmp_path))
    monkeypatch.setenv("DOPPEL_TORCH_CXXFLAGS", "-O0 -std=c++17 -lnonexistentlib")
    with pytest.raises(RuntimeError, match="nonexistentlib"):
        build._build()
    assert not list(tmp_path.rglob("*.so"))


def test_leftovers_of_a_killed_compile_are_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("DOPPEL_TORCH_CACHE", str(tmp_path))
    monkeypatch.setenv("DOPPEL_TORCH_CXXFLAGS", "-O0 -std=c++17")
    build._build()
    folder = _library(tmp_path).parent
    old, fresh = folder / "tmpdead.so", folder / "tmpbusy.so"
    old.write_bytes(b"half a library")
    fresh.write_bytes(b"another process is compiling")
    os.utime(old, (0, 0))
    build._build()
    assert not old.exists() and fresh.exists()  # a compile under way elsewhere keeps its file


def test_a_wheel_ships_every_source_the_kernel_build_reads():
    """A regular (non-editable) install copies only the package-data globs of pyproject.toml next to the code: every
    file build.py compiles or #includes must match one, or `pip install doppel-torch` cannot build the kernel (the
    gradient file was missing once)."""
    import fnmatch
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    root = Path(__file__).resolve().parents[3]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["doppel_torch"]
    package = root / "doppel_torch"
    for source in build.SOURCES:
        relative = source.resolve().relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(relative, g) for g in globs), f"{relative} is not in package-data {globs}"
    included = set(re.findall(r'#include "([^"]+)"', build.SOURCE.read_text()))
    assert included <= {s.name for s in build.SOURCES}, "a local #include that build.SOURCES does not hash"
