"""Compile synth_cpu.cpp with the system C++ compiler at first use and load it with ctypes.

No build step at install time and no extra Python package (torch's cpp_extension needs ninja): the shared
library is built once per source/compiler/flags/CPU and cached under
`$DOPPEL_TORCH_CACHE` (default `$XDG_CACHE_HOME/doppel_torch`, i.e. `~/.cache/doppel_torch`) / `cpu/<key>/`.

`-march=native` is safe here because the library is compiled on the machine that runs it, and the cache key
includes the CPU's model and feature flags, so a cache shared between different machines never loads a
library built for another CPU. Override the compiler with `CXX` and the flags with `DOPPEL_TORCH_CXXFLAGS`.
Fast-math is deliberately absent: the kernel's rounding tricks ((x + 1.5 * 2^52) - 1.5 * 2^52) need IEEE
arithmetic. -ffp-contract=off keeps the compiler from fusing multiplies and adds by itself (the kernel asks for its
fused multiply-adds with std::fma): vectorised and scalar code then round alike, and every target renders the same
bits.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from doppel_torch.spec.program import layout_signature

SOURCE = Path(__file__).parent / "csrc" / "synth_cpu.cpp"
# the .inc files are #included by SOURCE; all are hashed into the cache key
SOURCES = (SOURCE, SOURCE.with_name("synth_cpu_grad.inc"), SOURCE.with_name("spectral_cpu.inc"))
DEFAULT_FLAGS = "-O3 -march=native -fno-math-errno -fno-trapping-math -ffp-contract=off -std=c++17"

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


LIBRARY = "libdoppel_synth_cpu.so"
STALE_TMP_S = 3600  # a `tmp*.so` older than this was left by a killed compile (one takes ~20 s here)


def _check_private(folder: Path) -> None:
    """Refuse a cache folder that another user could write: a library planted there would run in this process."""
    info = folder.stat()
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise RuntimeError(f"backend='cpu': its kernel cache {folder} belongs to another user (uid {info.st_uid}); set "
                           "DOPPEL_TORCH_CACHE to a folder of your own")
    if info.st_mode & 0o022:
        fix = (f"set DOPPEL_TORCH_CACHE to a private folder inside it, e.g. {folder / 'doppel_torch'}"
               if info.st_mode & 0o1000 else  # a shared folder such as /tmp (sticky): never chmod it
               f"run `chmod go-w {folder}` or set DOPPEL_TORCH_CACHE to a private folder")
        raise RuntimeError(f"backend='cpu': its kernel cache {folder} is writable by other users (mode "
                           f"{info.st_mode & 0o7777:o}); a library planted there would be loaded: {fix}")


def _private_dirs(target: Path) -> None:
    """Create the cache folders (mode 700) and check every level from the cache root down."""
    root = _cache_dir().parent
    try:
        for folder in (*reversed(target.parent.parents), target.parent):  # each new level private, not the leaf alone
            if not folder.is_dir():
                folder.mkdir(exist_ok=True, mode=0o700)
    except OSError as exc:
        raise RuntimeError(f"backend='cpu': cannot create its kernel cache {target.parent} ({exc}); set "
                           "DOPPEL_TORCH_CACHE to a writable folder") from exc
    for folder in (root, root / "cpu", target.parent):
        _check_private(folder)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _remove_stale(folder: Path) -> None:
    """Temporary libraries of compiles that were killed (kill -9, power loss) are removed on a later start."""
    now = time.time()
    for leftover in folder.glob("tmp*.so"):
        try:
            if now - leftover.stat().st_mtime > STALE_TMP_S:
                leftover.unlink()
        except OSError:
            pass


def _compile(cxx: str, flags: list[str], target: Path) -> None:
    """Compile into a temporary file next to the target, record its hash, then rename: concurrent processes never
    load a half-written library, and a library whose bytes change afterwards is never loaded."""
    try:
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
    except OSError as exc:
        raise RuntimeError(f"backend='cpu': cannot write its kernel cache in {target.parent} ({exc}); set "
                           "DOPPEL_TORCH_CACHE to a writable folder") from exc
    tmp = Path(tmp)
    cmd = [cxx, *flags, "-shared", "-fPIC", "-pthread", str(SOURCE), "-o", str(tmp)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"backend='cpu': compiling its kernel failed: {exc}") from exc
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)  # the compiler may have removed it already (a failed link)
        raise RuntimeError(
            f"backend='cpu': compiling its kernel failed ({shlex.join(cmd)}):\n{proc.stderr.strip()[-2000:]}\n"
            "Set DOPPEL_TORCH_CXXFLAGS to flags your compiler accepts, or use backend='torch'."
        )
    try:
        digest = target.with_suffix(".sha256")
        digest_tmp = digest.with_name(digest.name + f".{os.getpid()}.tmp")
        digest_tmp.write_text(_digest(tmp))
        os.replace(tmp, target)
        os.replace(digest_tmp, digest)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"backend='cpu': cannot write its kernel cache in {target.parent} ({exc}); free some "
                           "space or set DOPPEL_TORCH_CACHE to another folder") from exc


def _intact(target: Path) -> bool:
    """The cached library exists and has the bytes recorded when it was built (truncated, corrupted or planted
    libraries are rebuilt instead of loaded: loading one can kill the process with SIGBUS/SIGSEGV)."""
    digest = target.with_suffix(".sha256")
    try:
        return target.is_file() and digest.is_file() and digest.read_text().strip() == _digest(target)
    except OSError:
        return False


def declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Set the C signatures of the kernel library's entry points (those it has: a library built from an older source,
    as bench/cpu_before_after.py loads, may lack the newer ones)."""
    c = ctypes
    ptr, i64, f64, i32 = c.c_void_p, c.c_int64, c.c_double, c.c_int
    signatures = {
        "doppel_cpu_render": ([ptr, i64, i64, ptr, i64, ptr, ptr, i64, ptr, i32, i64, i64, f64, f64, f64, i32, i32], i32),
        "doppel_cpu_grad_block": ([], i32),
        "doppel_cpu_sound_keys": ([c.c_uint32, c.c_uint32, ptr, i64, ptr], None),
        "doppel_cpu_grad_forward": ([ptr, i64, i64, ptr, i64, ptr, ptr, i64, ptr, i32, ptr, ptr, ptr, i64, i64, f64, f64,
                                     f64, i32, i32], i32),
        "doppel_cpu_grad_backward": ([ptr, i64, i64, ptr, i64, ptr, ptr, i64, ptr, ptr, i32, ptr, ptr, ptr, ptr, ptr, i64,
                                      i64, f64, f64, f64, i32, i32], i32),
        "doppel_cpu_use_openmp": ([ptr], None),
        "doppel_cpu_spectral_terms": ([ptr, ptr, i64, i64, i64, i32, f64, ptr, ptr, ptr, ptr, i32], i32),
        "doppel_cpu_spectral_abs": ([ptr, i64, i64, i32, ptr, i32], i32),
        "doppel_cpu_spectral_grad": ([ptr, ptr, ptr, ptr, ptr, i64, i64, i64, i32, ptr, i32], i32),
        "doppel_cpu_overlap_add": ([ptr, ptr, i64, i64, i64, i64, i32, ptr, i32], i32),
    }
    for name, (args, result) in signatures.items():
        if hasattr(lib, name):
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = args, result
    return lib


def _build() -> ctypes.CDLL:
    cxx = _compiler()
    flags = shlex.split(os.environ.get("DOPPEL_TORCH_CXXFLAGS", DEFAULT_FLAGS))
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"backend='cpu': cannot run the C++ compiler {cxx}: {exc}") from exc
    source = b"\0".join(path.read_bytes() for path in SOURCES)
    key = hashlib.sha256(b"\0".join([source, " ".join(flags).encode(), version.encode(),
                                     _cpu_fingerprint().encode(), platform.machine().encode()])).hexdigest()[:16]
    target = _cache_dir() / key / LIBRARY
    _private_dirs(target)
    _remove_stale(target.parent)
    if not _intact(target):
        if sys.stderr.isatty():  # a person waits at a terminal: say why the first call takes a while
            print(f"doppel-torch: compiling the native CPU kernel once for this machine (~10 s) into {target.parent}",
                  file=sys.stderr, flush=True)
        _compile(cxx, flags, target)
    try:
        lib = ctypes.CDLL(str(target))
    except OSError as exc:
        raise RuntimeError(f"backend='cpu': cannot load its kernel {target} ({exc}); delete that folder to rebuild "
                           "it, or use backend='torch'") from exc
    # The kernel declares the tables it reads; a library whose declaration differs from the lowering's is refused.
    lib.doppel_cpu_layout.restype = ctypes.c_char_p
    declared = lib.doppel_cpu_layout().decode()
    if declared != layout_signature():
        raise RuntimeError(
            f"backend='cpu': the kernel in {target} reads other program tables than doppel_torch.spec.program defines "
            f"(kernel: {declared!r}; spec: {layout_signature()!r}); update the X-macro lists in {SOURCE.name}"
        )
    declare(lib)
    lib.doppel_cpu_use_openmp(openmp_parallel())  # torch (imported by every caller) has loaded its runtime
    return lib


def openmp_parallel() -> int | None:
    """The address of GOMP_parallel in the OpenMP runtime this process has loaded already (torch's libgomp on Linux;
    LLVM's and Intel's runtimes export it too), or None (no /proc, no runtime, or DOPPEL_TORCH_OPENMP=0). The kernel
    then runs its workers on that runtime's threads instead of its own (csrc/synth_cpu.cpp, "threads")."""
    if os.environ.get("DOPPEL_TORCH_OPENMP", "1") == "0":
        return None
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    paths = {line.split()[-1] for line in maps.splitlines()
             if line.split()[-1].startswith("/") and any(k in line for k in ("libgomp", "libiomp", "/libomp"))}
    for path in sorted(paths, key=lambda p: ("libgomp" not in p, p)):
        try:
            runtime = ctypes.CDLL(path)  # already mapped: the same library, not a second copy
            return ctypes.cast(runtime.GOMP_parallel, ctypes.c_void_p).value
        except (OSError, AttributeError):
            continue
    return None


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
