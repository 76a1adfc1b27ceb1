"""Compile synth_cpu.cpp with the system C++ compiler at first use and load it with ctypes.

No build step at install time and no extra Python package (torch's cpp_extension needs ninja): the shared
library is built once per source/compiler/flags/CPU and cached under
`$DOPPEL_TORCH_CACHE` (default `$XDG_CACHE_HOME/doppel_torch`, i.e. `~/.cache/doppel_torch`) / `cpu/<key>/`.

`-march=native` is safe here because the library is compiled on the machine that runs it, and the cache key
includes the CPU's model and feature flags, so a cache shared between different machines never loads a
library built for another CPU. Override the compiler with `CXX` and the flags with `DOPPEL_TORCH_CXXFLAGS`.
Fast-math is deliberately absent: the kernel's rounding tricks ((x + 1.5 * 2^52) - 1.5 * 2^52) need IEEE
arithmetic.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from doppel_torch.spec.program import layout_signature

SOURCE = Path(__file__).parent / "csrc" / "synth_cpu.cpp"
DEFAULT_FLAGS = "-O3 -march=native -fno-math-errno -fno-trapping-math -std=c++17"

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_error: str | None = None


def _compiler() -> str:
    for name in filter(None, (os.environ.get("CXX"), "c++", "g++", "clang++")):
        path = shutil.which(name)
        if path:
            return path
    raise RuntimeError(
        "backend='cpu' needs a C++ compiler to build its kernel at first use, and none was found "
        "(looked for $CXX, c++, g++, clang++). Install one (e.g. `apt-get install g++`) or use backend='torch'."
    )


def _cpu_fingerprint() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in info.splitlines() if ln.startswith(("model name", "flags", "Features", "CPU part"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def _cache_dir() -> Path:
    root = os.environ.get("DOPPEL_TORCH_CACHE")
    if root is None:
        root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "doppel_torch"
    return Path(root) / "cpu"


def _build() -> ctypes.CDLL:
    cxx = _compiler()
    flags = shlex.split(os.environ.get("DOPPEL_TORCH_CXXFLAGS", DEFAULT_FLAGS))
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"backend='cpu': cannot run the C++ compiler {cxx}: {exc}") from exc
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, " ".join(flags).encode(), version.encode(),
                                     _cpu_fingerprint().encode(), platform.machine().encode()])).hexdigest()[:16]
    target = _cache_dir() / key / "libdoppel_synth_cpu.so"
    if not target.exists():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # Build next to the target and rename: concurrent processes never load a half-written library.
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
            os.close(fd)
        except OSError as exc:
            raise RuntimeError(
                f"backend='cpu': cannot write its kernel cache in {target.parent} ({exc}); set DOPPEL_TORCH_CACHE "
                "to a writable folder"
            ) from exc
        cmd = [cxx, *flags, "-shared", "-fPIC", "-pthread", str(SOURCE), "-o", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.SubprocessError) as exc:
            os.unlink(tmp)
            raise RuntimeError(f"backend='cpu': compiling its kernel failed: {exc}") from exc
        if proc.returncode != 0:
            os.unlink(tmp)
            raise RuntimeError(
                f"backend='cpu': compiling its kernel failed ({shlex.join(cmd)}):\n{proc.stderr.strip()[-2000:]}\n"
                "Set DOPPEL_TORCH_CXXFLAGS to flags your compiler accepts, or use backend='torch'."
            )
        os.replace(tmp, target)
    lib = ctypes.CDLL(str(target))
    # The kernel declares the tables it reads; a library whose declaration differs from the lowering's is refused.
    lib.doppel_cpu_layout.restype = ctypes.c_char_p
    declared = lib.doppel_cpu_layout().decode()
    if declared != layout_signature():
        raise RuntimeError(
            f"backend='cpu': the kernel in {target} reads other program tables than doppel_torch.spec.program defines "
            f"(kernel: {declared!r}; spec: {layout_signature()!r}); update the X-macro lists in {SOURCE.name}"
        )
    fn = lib.doppel_cpu_render
    c = ctypes
    fn.argtypes = [
        c.c_void_p, c.c_int64, c.c_int64, c.c_void_p, c.c_int64, c.c_void_p, c.c_void_p, c.c_int64, c.c_void_p,
        c.c_int, c.c_int64, c.c_int64, c.c_double, c.c_double, c.c_double, c.c_int, c.c_int,
    ]
    fn.restype = c.c_int
    return lib


def library() -> ctypes.CDLL:
    """The compiled kernel library (built and cached at first call); RuntimeError saying why if it cannot be."""
    global _library, _error
    with _lock:
        if _library is None:
            if _error is not None:
                raise RuntimeError(_error)
            try:
                _library = _build()
            except RuntimeError as exc:
                _error = str(exc)
                raise
        return _library
