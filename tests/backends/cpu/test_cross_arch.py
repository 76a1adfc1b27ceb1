"""The same bits on another architecture: the kernel cross-compiled for aarch64 (NEON, and with the vectorisers off)
and run under qemu-user renders the same sounds and gradients, bit for bit, as this machine's native build.

Runs where Debian's g++-aarch64-linux-gnu and qemu-user are installed (`apt-get install g++-aarch64-linux-gnu
qemu-user`; .ci/run installs them where apt is there), skipped elsewhere. The kernel's header says why the bits agree: IEEE arithmetic, no
contraction by the compiler, explicit std::fma; what remains are libm calls on per-sound constants."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from doppel_torch import get_synth, rng
from doppel_torch.backends.cpu import build, library

CROSS = shutil.which("aarch64-linux-gnu-g++")
QEMU = shutil.which("qemu-aarch64")
pytestmark = pytest.mark.skipif(not (CROSS and QEMU), reason="needs g++-aarch64-linux-gnu and qemu-user (Debian)")
DRIVER = Path(__file__).with_name("cross_driver.cpp")
GENERIC = [f for f in shlex.split(build.DEFAULT_FLAGS) if not f.startswith("-march")]
VARIANTS = {"neon": ["-march=armv8-a"], "scalar": ["-march=armv8-a", "-fno-tree-vectorize", "-fno-tree-slp-vectorize"]}


@pytest.fixture(scope="module")
def drivers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("aarch64")
    out = {}
    for name, flags in VARIANTS.items():
        exe = folder / f"driver-{name}"
        subprocess.run([CROSS, *GENERIC, *flags, "-static", "-pthread", str(build.SOURCE), str(DRIVER), "-o", str(exe)],
                       check=True, capture_output=True, timeout=600)
        out[name] = exe
    return out


def _request(program, human, keys, n, dtype, grad, gy=None) -> bytes:
    head = np.array([human.shape[0], human.shape[1], program.words.numel(), n, program.n_control,
                     int(dtype == torch.float64), 1, int(grad)], dtype=np.int64)
    rates = np.array([program.sample_rate, program.control_rate, program.eps], dtype=np.float64)
    parts = [head.tobytes(), rates.tobytes(), human.numpy().tobytes(), program.words.numpy().astype(np.int32).tobytes(),
             keys.numpy().astype(np.int64).tobytes()]
    if grad:
        parts.append(gy.numpy().tobytes())
    return b"".join(parts)


@pytest.mark.parametrize("name", ["voice", "voicefm", "parametric"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("grad", [False, True], ids=["render", "gradient"])
def test_aarch64_builds_give_the_native_bits(drivers, tmp_path, name, dtype, grad):
    synth = get_synth(name, duration=0.1)
    program, n, batch = synth.program, synth.n_samples, 4
    human = program.layout.table.to_human(synth.random_params(batch, seed=5).double()).contiguous()
    k1, k2 = rng.sound_keys(0, rng.Stream.NOISE, torch.arange(batch))
    keys = torch.stack((k1, k2), 1).contiguous()
    gy = torch.randn(batch, n, generator=torch.Generator().manual_seed(2)).to(dtype)
    lib = library()
    common = (human.data_ptr(), batch, human.shape[1], program.words.data_ptr(), program.words.numel(), keys.data_ptr(),
              None, 0)
    rates = (program.n_control, program.sample_rate, program.control_rate, program.eps, 1, 1)
    audio = torch.empty(batch, n, dtype=dtype)
    gh = torch.zeros_like(human)
    if not grad:
        assert lib.doppel_cpu_render(*common, audio.data_ptr(), int(dtype == torch.float64), n, *rates) == 0
    else:
        width = program.rows("oscillators") + program.rows("filters")
        ckpt = torch.empty(batch, -(-n // 256), width, dtype=torch.float64)
        peak, arg = torch.empty(batch, dtype=torch.float64), torch.empty(batch, dtype=torch.int64)
        assert lib.doppel_cpu_grad_forward(*common, audio.data_ptr(), int(dtype == torch.float64), peak.data_ptr(),
                                           arg.data_ptr(), ckpt.data_ptr(), n, *rates) == 0
        assert lib.doppel_cpu_grad_backward(*common, audio.data_ptr(), gy.data_ptr(), int(dtype == torch.float64),
                                            peak.data_ptr(), arg.data_ptr(), ckpt.data_ptr(), gh.data_ptr(), None, n,
                                            *rates) == 0
    request = tmp_path / "request.bin"
    request.write_bytes(_request(program, human, keys, n, dtype, grad, gy))
    for variant, exe in drivers.items():
        reply = tmp_path / f"reply-{variant}.bin"
        run = subprocess.run([QEMU, str(exe), str(request), str(reply), "2"], capture_output=True, timeout=600)
        assert run.returncode == 0, f"{variant}: driver exit {run.returncode} {run.stderr[-500:]!r}"
        data = reply.read_bytes()
        size = audio.numel() * audio.element_size()
        theirs = torch.from_numpy(np.frombuffer(data[:size], dtype=np.float64 if dtype == torch.float64 else np.float32)
                                  .copy()).view(batch, n)
        assert audio.abs().max() > 0.05
        assert torch.equal(theirs, audio), f"{variant}: audio max |diff| {(theirs - audio).abs().max():.2e}"
        if grad:
            g = torch.from_numpy(np.frombuffer(data[size:], dtype=np.float64).copy()).view_as(gh)
            assert torch.isfinite(gh).all() and gh.abs().max() > 0
            assert torch.equal(g, gh), f"{variant}: gradient max |diff| {(g - gh).abs().max():.2e}"
