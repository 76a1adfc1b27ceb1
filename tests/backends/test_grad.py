"""Gradients of the fused backends: backend="cpu"'s native adjoint and backend="triton"'s Triton adjoint (under
TRITON_INTERPRET=1 without a GPU) against the reference's autograd and against finite differences (gradcheck,
float64), for the paper's three synths and the user patches (FM chains, fan-out, filters on oscillators and on the
mix, noise); explicit noise tensors; the guarded ADSR points; and the clear error of a backend without a backward."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from doppel_torch import Synth, get_synth
from tests.backends.patches import USER_PATCHES

NAMES = ["voice", "voicefm", "parametric"]
SHORT = dict(duration=0.05)  # 800 samples: three blocks of 256 and a partial one; 24 control samples
# The triton backend's tests run its kernels in Triton's interpreter without a GPU (tests/conftest.py), on CUDA with one.
BACKENDS = ["cpu", pytest.param("triton", marks=pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="the triton package is not installed"))]
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _synths(name: str, backend: str = "cpu", **kwargs):
    if name in USER_PATCHES:
        patch = USER_PATCHES[name]()
        return Synth(patch, backend="torch", **kwargs), _Fused(Synth(patch, backend=backend, **kwargs))
    return get_synth(name, backend="torch", **kwargs), _Fused(get_synth(name, backend=backend, **kwargs))


class _Fused:
    """A fused synth that takes and returns CPU tensors (the triton backend renders on CUDA where there is one)."""

    def __init__(self, synth):
        self.synth = synth
        self.device = TRITON_DEVICE if synth.backend == "triton" else "cpu"

    def __getattr__(self, name):
        return getattr(self.synth, name)

    def __call__(self, theta, noise=None, out=None, **kwargs):
        move = lambda t: None if t is None else t.to(self.device)  # noqa: E731
        audio = self.synth(move(theta), noise=move(noise), out=move(out), **kwargs)
        return audio.cpu() if out is None or self.device == "cpu" else out.copy_(audio.cpu())


def _interior(synth, n: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    return (0.05 + 0.9 * synth.random_params(n, seed=seed, dtype=dtype))


def _grads(synth, theta, weights, noise=None, normalize=True):
    """d sum(weights * synth(theta)) / d theta (and / d noise when given)."""
    theta = theta.clone().requires_grad_(True)
    inputs = [theta]
    if noise is not None:
        noise = noise.clone().requires_grad_(True)
        inputs.append(noise)
    audio = synth(theta, noise=noise, normalize=normalize, seed=5)
    return torch.autograd.grad((audio * weights).sum(), inputs)


def _worst_relative(got: torch.Tensor, want: torch.Tensor) -> float:
    """Largest per-parameter relative difference, against the larger of |want| and 1e-9 of the row's scale (a
    parameter the loss does not depend on has a zero gradient on both sides)."""
    floor = 1e-9 * want.abs().amax(dim=-1, keepdim=True).clamp_min(1e-300)
    return float(((got - want).abs() / torch.maximum(want.abs(), floor)).max())


@pytest.mark.parametrize("name", NAMES + list(USER_PATCHES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_gradients_equal_the_reference_autograd(name, backend):
    ref, fused = _synths(name, **SHORT, backend=backend)
    theta = _interior(ref, 3, seed=11)
    weights = torch.randn(3, ref.n_samples, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for normalize in (True, False):
        (want,) = _grads(ref, theta, weights, normalize=normalize)
        (got,) = _grads(fused, theta, weights, normalize=normalize)
        assert got.dtype == torch.float64 and torch.isfinite(got).all()
        assert _worst_relative(got, want) <= 1e-7, name


@pytest.mark.parametrize("name", ["parametric", "filtered"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_odd_lengths(name, backend):
    """501 samples (a last block of 245, not a multiple of the kernel's 4 partial sums), 16 control samples; batch 1."""
    ref, fused = _synths(name, duration=0.0313, backend=backend)
    assert ref.n_samples == 501
    theta = _interior(ref, 1, seed=17)
    weights = torch.randn(1, ref.n_samples, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    (want,) = _grads(ref, theta, weights)
    (got,) = _grads(fused, theta, weights)
    assert _worst_relative(got, want) <= 1e-7


def test_the_reference_filter_gradient_is_finite_and_equals_the_cpu_backends():
    """The reference's one-pole low-pass scans blocks as P * cumsum(a x / P); its autograd divides by P ** 2. With
    blocks of 256 samples P ** 2 reached 1e-316 and 3 of these 65 random sounds' gradients overflowed to inf / NaN."""
    ref, fused = _synths("filtered", duration=0.2)
    theta = ref.random_params(65, seed=1, dtype=torch.float64)
    weights = torch.ones(65, ref.n_samples, dtype=torch.float64)
    (want,) = _grads(ref, theta, weights)
    (got,) = _grads(fused, theta, weights)
    assert torch.isfinite(want).all() and torch.isfinite(got).all()
    assert _worst_relative(got, want) <= 1e-6


@pytest.mark.parametrize("name", ["voice", "filtered"])
@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_reach_an_explicit_noise_tensor(name, rows, backend):
    ref, fused = _synths(name, **SHORT, backend=backend)
    theta = _interior(ref, 3, seed=12)
    g = torch.Generator().manual_seed(3)
    noise = 2.0 * torch.rand(rows, ref.n_samples, dtype=torch.float64, generator=g) - 1.0
    weights = torch.randn(3, ref.n_samples, dtype=torch.float64, generator=g)
    want_theta, want_noise = _grads(ref, theta, weights, noise=noise)
    got_theta, got_noise = _grads(fused, theta, weights, noise=noise)
    assert got_noise.shape == noise.shape and want_noise.abs().max() > 0
    assert _worst_relative(got_theta, want_theta) <= 1e-7
    torch.testing.assert_close(got_noise, want_noise, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_noise_alone_can_require_grad(backend):
    ref, fused = _synths("voice", **SHORT, backend=backend)
    theta = _interior(ref, 2, seed=13)
    noise = torch.zeros(1, ref.n_samples, dtype=torch.float64, requires_grad=True)
    fused(theta, noise=noise).sum().backward()
    want = torch.zeros_like(noise, requires_grad=True)
    ref(theta, noise=want).sum().backward()
    torch.testing.assert_close(noise.grad, want.grad, rtol=1e-9, atol=1e-12)


def test_a_sounds_gradient_ignores_the_other_sounds_noise():
    """One thread renders the sounds in turn with the same buffers: an inf in sound 0's explicit noise, where the
    next sound's last block reads whole vectors past its end (0.0371 s: 594 samples, a last block of 82), must not
    reach sound 1's gradient (it turned it into NaN)."""
    _, fused = _synths("filtered", duration=0.0371)
    n = fused.n_samples
    last = n - (n - 1) // 256 * 256
    theta = _interior(fused, 2, seed=3)
    noise = torch.rand(2, n, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    noise[0, last:-(-last // 8) * 8] = float("inf")
    weights = torch.randn(2, n, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        both = theta.clone().requires_grad_(True)
        # validate=False: render refuses a non-finite noise tensor; the kernel's isolation is what is tested here
        (fused(both, noise=noise, seed=5, validate=False) * weights).sum().backward()
        alone = theta[1:].clone().requires_grad_(True)
        (fused(alone, noise=noise[1:], seed=5, validate=False) * weights[1:]).sum().backward()
    finally:
        torch.set_num_threads(threads)
    assert torch.isfinite(both.grad[1]).all()
    torch.testing.assert_close(both.grad[1], alone.grad[0], rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES + ["filtered"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(name, backend):
    """Finite differences of the fused path on interior points: every module kind (ADSR, LFO, mod matrix, sine,
    square/saw, FM, noise, filters on an oscillator and on the mix) in one of these patches."""
    _, fused = _synths(name, duration=0.02, backend=backend)  # 320 samples, 10 control samples
    theta = _interior(fused, 1, seed=21).requires_grad_(True)
    weights = torch.randn(1, fused.n_samples, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    # eps 1e-7: wider steps cross the FM and MIDI clamps' kinks. atol 1e-4 against gradients up to ~3e4: the forward
    # kernel's rounding (~1e-12 of the weighted sum) divided by eps is ~2e-5 on parametric. Triton in the interpreter:
    # fast mode (finite differences along random directions: two renders per check, not two per parameter).
    assert torch.autograd.gradcheck(lambda t: (fused(t, seed=1) * weights).sum(), (theta,), eps=1e-7, atol=1e-4,
                                    rtol=1e-4, fast_mode=backend == "triton")


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_noise_and_theta_together(backend):
    _, fused = _synths("filtered", duration=0.02, backend=backend)
    theta = _interior(fused, 2, seed=22).requires_grad_(True)
    noise = (torch.rand(2, fused.n_samples, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) - 0.5)
    noise.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t, z: fused(t, noise=z), (theta, noise), eps=1e-7, atol=1e-5, rtol=1e-4,
                                    fast_mode=True)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_guarded_points_give_the_reference_values(name, backend):
    """theta at 0 (clamped to eps: zero-length attack, decay and release, sustain 0, the ADSR's 0 ** alpha) and at 1,
    mixed into interior rows: finite, and the reference's values (float64)."""
    ref, fused = _synths(name, **SHORT, backend=backend)
    theta = _interior(ref, 4, seed=14)
    names = ref.param_names
    for row, value in ((0, 0.0), (1, 1.0), (2, 0.0)):
        for j, n in enumerate(names):
            if n.split("/")[1] in ("attack", "decay", "release", "sustain") and (row < 2 or j % 2):
                theta[row, j] = value
    weights = torch.randn(4, ref.n_samples, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    (want,) = _grads(ref, theta, weights)
    (got,) = _grads(fused, theta, weights)
    assert torch.isfinite(got).all() and torch.isfinite(want).all()
    assert _worst_relative(got, want) <= 1e-7


@pytest.mark.parametrize("name", NAMES + list(USER_PATCHES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_gradients_are_finite_and_close(name, backend):
    """A float32 theta: the forward is the float32 render (its checkpoints), the backward differentiates in float64
    and returns float32 gradients. Measured (1 s, 32 interior sounds of seeds 15-18, relative L2 per sound against the
    float64 reference's gradient at the same point, median / worst): voice 2.7e-8 / 1.4e-7, voicefm 4.0e-8 / 2.1e-7,
    parametric 5.4e-8 / 1.9e-7 (with the float64 forward's checkpoints it had been 2.2e-8 / 5.0e-8, 2.5e-8 / 4.8e-8,
    2.3e-8 / 1.0e-7 on the same sounds), where the float32 reference's own autograd is 4.0e-3 / 5.3e-2, 3.1e-3 / 0.66
    and 1.8e-2 / 1.2 away (8 sounds). Tolerance 1e-5: 48x the worst measured."""
    ref, fused = _synths(name, duration=0.1, backend=backend)
    theta = _interior(ref, 4, seed=15, dtype=torch.float32)
    weights = torch.randn(4, ref.n_samples, generator=torch.Generator().manual_seed(7))
    (want,) = _grads(ref, theta.double(), weights.double())  # the same point, in float64
    (got,) = _grads(fused, theta, weights)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    rel = (got.double() - want).norm(dim=-1) / want.norm(dim=-1)
    assert float(rel.max()) <= 1e-5, float(rel.max())


@pytest.mark.parametrize("name", NAMES + list(USER_PATCHES))
def test_float32_differentiable_render_is_the_plain_render(name):
    """backend="cpu", float32: the differentiable render is the plain kernel writing its checkpoints as it goes, so
    its audio has the same bits as the non-differentiable render (keyed and explicit noise, normalised or not); the
    checkpoints it writes (phase carries, filter states), peaks and their indices are the float64 forward's to float32
    precision (the backward recomputes each block from them in float64: a carry that meant something else, phase0
    included or not wrapped, would be a whole cycle or phase0 away)."""
    from doppel_torch.backends.cpu import cpu_render_grad

    _, fused = _synths(name, **SHORT)
    theta = _interior(fused, 3, seed=18, dtype=torch.float32)
    noise = 2.0 * torch.rand(3, fused.n_samples, generator=torch.Generator().manual_seed(9)) - 1.0
    for kwargs in (dict(seed=4), dict(seed=4, normalize=False), dict(noise=noise)):
        with torch.no_grad():
            plain = fused(theta, **kwargs)
        differentiable = fused(theta.clone().requires_grad_(True), **kwargs)
        assert differentiable.requires_grad and torch.equal(differentiable.detach(), plain), kwargs
    program = fused.synth.program
    human = program.layout.table.to_human(theta.double()).contiguous()
    keys = torch.tensor([[123, 456], [7, 8], [9, 10]], dtype=torch.int64) if program.rows("noise") else None
    n_state = program.rows("oscillators") + program.rows("filters")
    args = (human, program.words, keys, None, program.n_samples, program.n_control, n_state, program.sample_rate,
            program.control_rate, program.eps, True)
    audio32, ckpt32, peak32, arg32 = cpu_render_grad(*args, False)
    audio64, ckpt64, peak64, arg64 = cpu_render_grad(*args, True)
    n_osc = program.rows("oscillators")
    turns = ckpt32[..., :n_osc] - ckpt64[..., :n_osc]
    assert bool(((turns - turns.round()).abs() < 1e-6).all())  # phase carries: cycles, wrapped
    assert ((ckpt32[..., :n_osc] >= 0) & (ckpt32[..., :n_osc] < 1)).all()
    torch.testing.assert_close(ckpt32[..., n_osc:], ckpt64[..., n_osc:], rtol=1e-4, atol=1e-5)  # filter states
    torch.testing.assert_close(peak32, peak64, rtol=1e-5, atol=0)
    assert torch.equal(arg32, arg64)
    torch.testing.assert_close(audio32.double(), audio64, rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_of_zero_and_out(backend):
    _, fused = _synths("voice", **SHORT, backend=backend)
    theta = _interior(fused, 2, seed=16).requires_grad_(True)
    out = torch.empty(2, fused.n_samples, dtype=torch.float64)
    audio = fused(theta, out=out)
    audio.sum().backward()
    assert torch.isfinite(theta.grad).all() and theta.grad.abs().max() > 0
    none = torch.zeros(0, fused.num_params, dtype=torch.float64, requires_grad=True)
    empty = fused(none)
    assert empty.shape == (0, fused.n_samples) and empty.requires_grad
    empty.sum().backward()  # in the graph, as the reference's (triton's was a fresh tensor: found from outside)
    assert none.grad.shape == none.shape


def test_checkpoint_block_matches_the_kernel():
    from doppel_torch.backends.cpu import GRAD_BLOCK
    from doppel_torch.backends.cpu.build import library

    assert library().doppel_cpu_grad_block() == GRAD_BLOCK


def test_a_backend_without_a_backward_refuses_gradients():
    from doppel_torch import backends

    class Forward(backends.base.Backend):
        name = "forward-only"

    synth = get_synth("voice", **SHORT)
    theta = synth.random_params(1).requires_grad_(True)
    with pytest.raises(ValueError, match="not differentiable"):
        backends.render(Forward(), synth.program, theta)
    noise = torch.zeros(1, synth.n_samples, requires_grad=True)
    with pytest.raises(ValueError, match="not differentiable"):
        backends.render(Forward(), synth.program, theta.detach(), noise=noise)
