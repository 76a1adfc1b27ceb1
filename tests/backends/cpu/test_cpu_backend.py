"""backend="cpu" (the native kernel) against the torch reference in float64 and against SynthAX's own renders:
same sound for the same seed, batch- and thread-invariant, finite over the whole cube, clear errors."""

from __future__ import annotations

import platform

import numpy as np
import pytest
import torch

from doppel_torch import ParametricSynth, VoiceSynth, get_synth
from doppel_torch.backends.cpu import build
from tests.conftest import SYNTHAX_REF, tie_rows

NAMES = ["voice", "voicefm", "parametric"]
NPZ = {"voice": "voice.npz", "voicefm": "voiceexpanded.npz", "parametric": "parametric.npz"}
SHORT = dict(duration=0.25)  # 4,000 samples (not a multiple of the kernel's 256-sample block), 120 control samples


def _pair(name: str, **kwargs):
    return get_synth(name, backend="torch", **kwargs), get_synth(name, backend="cpu", **kwargs)


def _corners(m: int, eps: float = 1e-6) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    mixed = torch.where(torch.rand(4, m, generator=g) < 0.5, eps, 1.0)
    alternating = torch.tensor([eps, 1.0]).repeat(m)[:m]
    return torch.cat([torch.full((1, m), eps), torch.ones(1, m), torch.zeros(1, m), mixed, alternating[None]])


def _doppelgangers(theta: torch.Tensor, delta: float = 0.25) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return (theta + delta * torch.randn(theta.shape, generator=g, dtype=theta.dtype)).clamp(1e-6, 1.0)


def _rel_l2(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return (out - ref).norm(dim=-1) / ref.norm(dim=-1).clamp_min(1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_float64_equals_reference(name):
    ref, cpu = _pair(name, **SHORT)
    theta = ref.random_params(6, seed=4, dtype=torch.float64)
    # Not the cube's corners: there LFO phases land exactly on the saw's and square's jumps, where rounding at
    # 1e-16 picks the side (one corner of voice: a jump of 96 semitones for one control step), so the corners are
    # checked for finiteness below instead.
    theta = torch.cat([theta, _doppelgangers(theta)])
    for normalize in (False, True):
        want = ref(theta, normalize=normalize, seed=3)
        got = cpu(theta, normalize=normalize, seed=3)
        assert got.dtype == torch.float64 and got.shape == want.shape
        # The FM operators amplify the reference's own ~1e-13 phase rounding (voicefm: 6e-8 seen at 1 s).
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_float32_close_to_float64_reference(name):
    """float32 output, float64 inside: within the kernel issue's bar (1e-6 relative L2 per sound on voice and
    voicefm, 1e-4 on parametric; all three measured at <= 1.4e-7 here, 2.4e-7 over 1 s)."""
    ref, cpu = _pair(name)
    theta = ref.random_params(8, seed=2, dtype=torch.float64)
    theta = torch.cat([theta, _doppelgangers(theta)]).float()  # the same float32 parameters for both
    want = ref(theta.double(), normalize=False)
    got = cpu(theta, normalize=False)
    assert got.dtype == torch.float32
    rel = _rel_l2(got.double(), want)
    print(f"{name}: cpu float32 vs reference float64, relative L2 median {rel.median():.2e} worst {rel.max():.2e}")
    assert rel.max() < 1e-6  # 1.4e-7 worst seen: float32 rounding of the output and of the float32 waveforms


@pytest.mark.parametrize("name", NAMES)
def test_matches_synthax_float64_and_beats_its_float32(name, shared_dir):
    """SynthAX's own renders, its noise row fed explicitly: float64 equal to 1e-6; float32 at least 10x closer to
    float64 than SynthAX's float32 is (the issue's bar for the FM synths; SynthAX: 32-47 % and 7-11 %)."""
    data = np.load(SYNTHAX_REF / NPZ[name])
    cpu = get_synth(name, backend="cpu")
    assert list(data["names"]) == cpu.param_names
    noise = torch.from_numpy(data["noise_f32"]).double()
    for which in ("init", "aug"):
        theta = torch.from_numpy(data[f"params_{which}"]).double()
        truth = torch.from_numpy(data[f"premix_{which}_f64"])
        ties = tie_rows(cpu, theta, noise)  # rows on a waveform's jump (see tests/conftest.py): at most one
        assert len(ties) <= 1
        keep = [i for i in range(theta.shape[0]) if i not in ties]
        got64 = cpu(theta, noise=noise, normalize=False)
        torch.testing.assert_close(got64[keep], truth[keep], atol=1e-6, rtol=0)
        got32 = cpu(theta.float(), noise=noise.float(), normalize=False).double()[keep]
        truth = truth[keep]
        ours = _rel_l2(got32, truth)
        theirs = _rel_l2(torch.from_numpy(data[f"premix_{which}_f32"]).double()[keep], truth)
        print(f"{name}/{which}: relative L2 vs float64, cpu float32 worst {ours.max():.2e}, SynthAX float32 worst "
              f"{theirs.max():.2e}")
        assert ours.max() <= theirs.max() / 10
        assert ours.max() < 1e-6  # 1.4e-7 worst seen


@pytest.mark.parametrize("name", NAMES)
def test_same_noise_as_torch_backend(name):
    """Keyed noise is bit-equal to doppel_torch.rng: a noise-only patch gives the reference's noise exactly."""
    ref, cpu = _pair(name, **SHORT)
    theta = torch.full((3, ref.num_params), 1e-6, dtype=torch.float64)
    # Only the noise reaches the mixer: every level at eps except the noise's; held notes, envelopes at full
    # sustain, and every mod entry driving the noise level at 1.
    for spec_index, spec in enumerate(ref.layout.specs):
        if spec.param in ("sustain", "release", "duration"):  # a near-zero release silences the note
            theta[:, spec_index] = 1.0
    theta[:, ref.layout.mixer_levels[ref.patch.mixer_inputs.index("noise")]] = 1.0
    noise_row = ref.patch.mod_outputs.index(ref.patch.noise_amp)
    theta[:, ref.layout.mod_matrix[noise_row]] = 1.0
    indices = torch.tensor([5, 1000, 2**40 + 3])
    want = ref(theta, seed=9, indices=indices, normalize=False)
    got = cpu(theta, seed=9, indices=indices, normalize=False)
    torch.testing.assert_close(got, want, atol=1e-9, rtol=0)
    assert got.abs().max() > 0.1  # the noise is audible, so the comparison means something
    assert not torch.allclose(cpu(theta, seed=10, indices=indices, normalize=False), got)


@pytest.mark.parametrize("name", NAMES)
def test_batch_and_thread_invariance(name):
    cpu = get_synth(name, backend="cpu", **SHORT)
    theta = cpu.random_params(5, seed=8)
    full = cpu(theta, seed=2)
    parts = torch.cat([cpu(theta[i : i + 1], seed=2, indices=torch.tensor([i])) for i in range(5)])
    assert torch.equal(full, parts)  # one sound is one independent pass: bit-identical in any batch
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(cpu(theta, seed=2), full)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_on_corners_and_random_theta(name, dtype):
    cpu = get_synth(name, backend="cpu", **SHORT)
    theta = torch.cat([cpu.random_params(16, seed=1), _corners(cpu.num_params)]).to(dtype)
    out = torch.full((theta.shape[0], cpu.n_samples), float("nan"), dtype=dtype)
    out.copy_(cpu(theta, normalize=False))
    assert torch.isfinite(out).all()
    normed = cpu(theta)
    assert torch.isfinite(normed).all() and normed.abs().max() <= 1.0
    assert not normed.requires_grad


def test_explicit_noise_rows_and_broadcast():
    ref, cpu = _pair("voice", **SHORT)
    theta = ref.random_params(3, seed=6, dtype=torch.float64)
    for rows in (1, 3):
        noise = torch.rand(rows, ref.n_samples, dtype=torch.float64) * 2 - 1
        torch.testing.assert_close(cpu(theta, noise=noise), ref(theta, noise=noise), atol=1e-9, rtol=0)


@pytest.mark.parametrize(
    "make",
    [
        lambda backend: ParametricSynth(sine=1, square_saw=0, fm_sine=2, fm_square_saw=1, backend=backend, **SHORT),
        lambda backend: ParametricSynth(sine=0, square_saw=1, fm_sine=0, fm_square_saw=0, backend=backend, **SHORT),
        lambda backend: VoiceSynth(mixer_curve="torchsynth", backend=backend, **SHORT),
        lambda backend: get_synth("voicefm", sample_rate=8000, control_rate=100, duration=0.37, backend=backend),
        lambda backend: get_synth("voice", sample_rate=2000, control_rate=2000, duration=0.01, backend=backend),
    ],
    ids=["parametric-1-0-2-1", "parametric-0-1-0-0", "voice-torchsynth-curve", "voicefm-8k-100Hz", "voice-rates-equal"],
)
def test_generic_over_patches_and_rates(make):
    ref, cpu = make("torch"), make("cpu")
    theta = ref.random_params(6, seed=7).double()
    torch.testing.assert_close(cpu(theta, seed=1), ref(theta, seed=1), atol=1e-6, rtol=0)
    assert cpu(theta[:1].float()).shape == (1, ref.n_samples)


def test_gradients_flow_and_no_grad_renders_as_before():
    cpu = get_synth("voice", backend="cpu", **SHORT)
    theta = cpu.random_params(2).requires_grad_(True)
    audio = cpu(theta, validate=False)
    assert audio.requires_grad and audio.dtype == torch.float32
    audio.square().sum().backward()
    assert theta.grad.dtype == torch.float32 and torch.isfinite(theta.grad).all() and theta.grad.abs().sum() > 0
    with torch.no_grad():
        plain = cpu(theta)
    assert not plain.requires_grad
    assert torch.equal(plain, audio.detach())  # float32: the differentiable render is the plain one, bit for bit
    assert not cpu(theta.detach()).requires_grad


def test_empty_batch():
    cpu = get_synth("voice", backend="cpu", **SHORT)
    assert cpu(torch.empty(0, cpu.num_params)).shape == (0, cpu.n_samples)


def test_missing_compiler_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", "")
    with pytest.raises(RuntimeError, match="needs a C\\+\\+ compiler"):
        build._build()


def test_failed_compilation_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("DOPPEL_TORCH_CACHE", str(tmp_path))
    monkeypatch.setenv("DOPPEL_TORCH_CXXFLAGS", "-fno-such-flag-anywhere")
    with pytest.raises(RuntimeError, match="compiling its kernel failed"):
        build._build()
    assert not list(tmp_path.rglob("*.so"))  # no half-built library left behind


def test_library_is_cached_per_source_and_flags(monkeypatch, tmp_path):
    monkeypatch.setenv("DOPPEL_TORCH_CACHE", str(tmp_path))
    monkeypatch.setenv("DOPPEL_TORCH_CXXFLAGS", "-O0 -std=c++17")
    build._build()
    built = list(tmp_path.rglob("*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    build._build()  # second call loads the cached library
    assert [p.stat().st_mtime_ns for p in tmp_path.rglob("*.so")] == [stamp]


def test_sound_keys_from_the_library_equal_rng():
    """The kernel's noise keys (eager fast path) are bit-equal to doppel_torch.rng.sound_keys, large indices and
    seeds included."""
    from doppel_torch import rng
    from doppel_torch.backends.cpu import _sound_keys

    index = torch.tensor([0, 1, 7, 2**31 - 1, 2**32, 2**32 + 5, 2**40 + 3, 2**62 + 11])
    for seed in (0, 1, -5, 2**40 + 7, 2**64 - 1):
        k1, k2 = rng.sound_keys(seed, rng.Stream.NOISE, index)
        assert torch.equal(_sound_keys(seed, index), torch.stack((k1, k2), dim=1)), seed


def test_openmp_workers_and_own_threads_render_the_same():
    """Where torch's OpenMP runtime is found, the kernel's workers are its threads (build.openmp_parallel); with
    threads of its own (the fallback) every sound is bit-identical, at 1 and 2 threads."""
    from doppel_torch.backends.cpu import build

    cpu = get_synth("voicefm", backend="cpu", **SHORT)
    theta = cpu.random_params(7, seed=4)
    lib = build.library()
    gomp = build.openmp_parallel()
    if platform.system() == "Linux":
        assert gomp is not None  # pip's torch ships libgomp; if this fails the kernel falls back to its own threads
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        shared = cpu(theta, seed=5)
        lib.doppel_cpu_use_openmp(None)
        own = cpu(theta, seed=5)
        torch.set_num_threads(1)
        single = cpu(theta, seed=5)
    finally:
        lib.doppel_cpu_use_openmp(gomp)
        torch.set_num_threads(threads)
    assert shared.abs().max() > 0.1
    assert torch.equal(shared, own) and torch.equal(shared, single)


def _render_in_child(synth, theta, queue):
    queue.put(synth(theta, seed=5).numpy())  # by value (a tensor would travel as a shared-memory handle)


@pytest.mark.skipif(platform.system() != "Linux", reason="fork start method")
def test_a_forked_child_renders_after_the_parent_used_openmp():
    """GNU libgomp hangs in a child forked after its threads started: the kernel's child goes back to threads of its
    own (pthread_atfork) and renders the same sound."""
    import multiprocessing

    cpu = get_synth("voice", backend="cpu", duration=0.1)
    theta = cpu.random_params(6, seed=4)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        parent = cpu(theta, seed=5)  # the OpenMP threads exist now
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        child = ctx.Process(target=_render_in_child, args=(cpu, theta, queue))
        child.start()
        child.join(60)
        alive = child.is_alive()
        if alive:
            child.kill()
        assert not alive, "the forked child hung"
        assert torch.equal(torch.from_numpy(queue.get(timeout=10)), parent)
    finally:
        torch.set_num_threads(threads)
