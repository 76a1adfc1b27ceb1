"""One source, the same bits on every SIMD target: the kernel built for this machine (-march=native), for AVX2
(x86-64-v3), for baseline x86-64 (SSE2), with the vectorisers off (scalar code) and with its vectors in their other form
(-DDOPPEL_VECTOR_EXTENSION: one vector-extension type, AVX-512's form, where this machine's has register-wide
pieces, or the same form again on an AVX-512 machine) renders bit-identical sounds,
float32 and float64 (the kernel's header: no contraction by the compiler, explicit std::fma, IEEE arithmetic).
On aarch64 the native (NEON) build is compared with its scalar build; test_cross_arch.py compares aarch64 builds, run
under qemu-user, with this machine's."""

from __future__ import annotations

import ctypes
import platform
import shlex

import pytest
import torch

from doppel_torch import get_synth, rng
from doppel_torch.backends.cpu import build

NATIVE = shlex.split(build.DEFAULT_FLAGS)
SCALAR = ["-fno-tree-vectorize", "-fno-tree-slp-vectorize"]


def _variants() -> dict[str, list[str]]:
    generic = [f for f in NATIVE if not f.startswith("-march")]
    # the kernel's vectors in both of their forms (synth_cpu.cpp: one vector-extension type, or register-wide pieces)
    out = {"native": NATIVE, "native-scalar": NATIVE + SCALAR, "native-one-type": NATIVE + ["-DDOPPEL_VECTOR_EXTENSION"]}
    if platform.machine() in ("x86_64", "AMD64"):
        out["avx2"] = generic + ["-march=x86-64-v3"]
        out["sse2-scalar"] = generic + ["-march=x86-64"] + SCALAR
    return out


@pytest.fixture(scope="module")
def libraries(tmp_path_factory):
    cxx = build._compiler()
    folder = tmp_path_factory.mktemp("simd")
    libs = {}
    for name, flags in _variants().items():
        if name == "avx2" and "avx2" not in build._cpu_fingerprint():
            continue
        target = folder / name / build.LIBRARY
        target.parent.mkdir()
        build._compile(cxx, flags, target)
        libs[name] = build.declare(ctypes.CDLL(str(target)))
    return libs


@pytest.mark.parametrize("name", ["voice", "voicefm", "parametric"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_simd_build_renders_the_same_bits(libraries, name, dtype):
    synth = get_synth(name, duration=0.1)
    program = synth.program
    batch = 6
    theta = torch.cat([synth.random_params(batch - 1, seed=3), torch.full((1, synth.num_params), 0.5)])
    human = program.layout.table.to_human(theta.double()).contiguous()
    k1, k2 = rng.sound_keys(0, rng.Stream.NOISE, torch.arange(batch))
    keys = torch.stack((k1, k2), 1).contiguous()
    outs = {}
    for variant, lib in libraries.items():
        out = torch.empty(batch, program.n_samples, dtype=dtype)
        code = lib.doppel_cpu_render(human.data_ptr(), batch, human.shape[1], program.words.data_ptr(),
                                     program.words.numel(), keys.data_ptr(), None, 0, out.data_ptr(),
                                     int(dtype == torch.float64), program.n_samples, program.n_control,
                                     program.sample_rate, program.control_rate, program.eps, 1, 1)
        assert code == 0
        outs[variant] = out
    assert outs["native"].abs().max() > 0.1  # real sounds, so that equality means something
    for variant, out in outs.items():
        assert torch.equal(out, outs["native"]), f"{variant}: max |diff| {(out - outs['native']).abs().max():.2e}"


@pytest.mark.parametrize("name", ["voice", "voicefm", "parametric"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_simd_build_differentiates_to_the_same_bits(libraries, name, dtype):
    """The gradient path (csrc/synth_cpu_grad.inc: explicit 8-lane vectors, per-lane std::fma) too: the forward call's
    audio and the backward's dL/d human are bit-identical on every build."""
    synth = get_synth(name, duration=0.1)
    program = synth.program
    batch, n = 3, program.n_samples
    human = program.layout.table.to_human(synth.random_params(batch, seed=4).double()).contiguous()
    k1, k2 = rng.sound_keys(0, rng.Stream.NOISE, torch.arange(batch))
    keys = torch.stack((k1, k2), 1).contiguous()
    width = program.rows("oscillators") + program.rows("filters")
    gy = torch.randn(batch, n, generator=torch.Generator().manual_seed(1)).to(dtype)
    common = (human.data_ptr(), batch, human.shape[1], program.words.data_ptr(), program.words.numel(),
              keys.data_ptr(), None, 0)
    rates = (program.n_control, program.sample_rate, program.control_rate, program.eps, 1, 1)
    results = {}
    for variant, lib in libraries.items():
        out = torch.empty(batch, n, dtype=dtype)
        ckpt = torch.empty(batch, -(-n // 256), width, dtype=torch.float64)
        peak, arg = torch.empty(batch, dtype=torch.float64), torch.empty(batch, dtype=torch.int64)
        gh = torch.full_like(human, float("nan"))
        assert lib.doppel_cpu_grad_forward(*common, out.data_ptr(), int(dtype == torch.float64), peak.data_ptr(),
                                           arg.data_ptr(), ckpt.data_ptr(), n, *rates) == 0
        assert lib.doppel_cpu_grad_backward(*common, out.data_ptr(), gy.data_ptr(), int(dtype == torch.float64),
                                            peak.data_ptr(), arg.data_ptr(), ckpt.data_ptr(), gh.data_ptr(), None, n,
                                            *rates) == 0
        results[variant] = (out, gh)
    out0, gh0 = results["native"]
    assert torch.isfinite(gh0).all() and gh0.abs().max() > 0
    for variant, (out, gh) in results.items():
        assert torch.equal(out, out0), f"{variant}: audio max |diff| {(out - out0).abs().max():.2e}"
        assert torch.equal(gh, gh0), f"{variant}: gradient max |diff| {(gh - gh0).abs().max():.2e}"
