"""A synth inside the transforms PyTorch users wrap around a model: autocast, forward-mode AD, torch.func, double
backward. The torch reference supports each (it is plain autograd ops); a fused backend refuses what it cannot do
with one error instead of a silently dropped derivative; autocast never lowers a render's precision."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import forward_ad

from doppel_torch import get_synth

SHORT = dict(duration=0.02, sample_rate=8000, control_rate=400)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize("name", ["voice", "voicefm", "parametric"])
def test_autocast_does_not_change_the_render(name, backend):
    # a bf16 modulation matrix had moved the torch backend's voicefm sounds by a median 51 % (relative L2)
    synth = get_synth(name, backend=backend, duration=0.25)
    theta = synth.random_params(4, seed=1)
    plain = synth(theta)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = synth(theta)
    assert cast.dtype == torch.float32
    assert torch.equal(cast, plain)


def _loss_and_direction(synth):
    theta = synth.random_params(2, seed=3, dtype=torch.float64)
    w = torch.randn(2, synth.n_samples, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    v = torch.randn(theta.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return theta, w, v


def _reverse_grad(synth, theta, w):
    x = theta.clone().requires_grad_(True)
    (synth(x) * w).sum().backward()
    return x.grad


@pytest.mark.parametrize("name", ["voice", "voicefm"])
def test_torch_reference_forward_mode_func_jvp_and_func_grad_equal_reverse_mode(name):
    synth = get_synth(name, **SHORT)
    theta, w, v = _loss_and_direction(synth)
    grad = _reverse_grad(synth, theta, w)
    with forward_ad.dual_level():
        tangent = forward_ad.unpack_dual(synth(forward_ad.make_dual(theta, v))).tangent
    torch.testing.assert_close((tangent * w).sum(), (grad * v).sum(), rtol=1e-9, atol=0)
    _, func_tangent = torch.func.jvp(synth, (theta,), (v,))
    torch.testing.assert_close(func_tangent, tangent, rtol=1e-12, atol=1e-12 * float(tangent.abs().max()))
    func_grad = torch.func.grad(lambda x: (synth(x) * w).sum())(theta)
    torch.testing.assert_close(func_grad, grad, rtol=1e-12, atol=0)


def test_torch_reference_under_vmap_equals_the_batch():
    synth = get_synth("voice", **SHORT)
    theta = synth.random_params(3, seed=0, dtype=torch.float64)
    noise = torch.rand(3, synth.n_samples, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    mapped = torch.func.vmap(lambda x, n: synth(x[None], noise=n[None])[0])(theta, noise)  # validate=True default
    torch.testing.assert_close(mapped, synth(theta, noise=noise), rtol=1e-12, atol=1e-14)


def test_torch_reference_double_backward_equals_finite_differences_of_the_gradient():
    synth = get_synth("voicefm", **SHORT)
    theta, w, v = _loss_and_direction(synth)
    x = theta.clone().requires_grad_(True)
    (g,) = torch.autograd.grad((synth(x) * w).sum(), x, create_graph=True)
    (hvp,) = torch.autograd.grad((g * v).sum(), x)
    step = 1e-7  # the error falls as step^2 (4.7e-4, 4.7e-6, 5.0e-8 at 1e-5, 1e-6, 1e-7), then rounding takes over
    fd = (_reverse_grad(synth, theta + step * v, w) - _reverse_grad(synth, theta - step * v, w)) / (2 * step)
    assert float((fd - hvp).abs().max() / hvp.abs().max()) < 1e-6


def test_cpu_backend_refuses_what_it_cannot_differentiate():
    synth = get_synth("voice", backend="cpu", **SHORT)
    theta, w, v = _loss_and_direction(synth)
    with forward_ad.dual_level():
        with pytest.raises(ValueError, match="backend='cpu' has no forward-mode derivative"):
            synth(forward_ad.make_dual(theta, v))
    with pytest.raises(ValueError, match=r"torch.func transforms .* work on backend='torch'"):
        torch.func.grad(lambda x: (synth(x) * w).sum())(theta)
    with pytest.raises(ValueError, match=r"torch.func transforms .* work on backend='torch'"):
        torch.func.vmap(lambda x: synth(x[None])[0])(theta)
    x = theta.clone().requires_grad_(True)
    (g,) = torch.autograd.grad((synth(x) * w).sum(), x)  # first order: fine
    with pytest.raises(RuntimeError, match="backend='cpu' has no second derivative"):
        torch.autograd.grad((synth(x) * w).sum(), x, create_graph=True)
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_bad_noise_out_and_theta_say_what_to_do(backend):
    synth = get_synth("voice", backend=backend, **SHORT)
    theta = synth.random_params(2, seed=0)
    noise = torch.zeros(1, synth.n_samples)
    noise[0, 5] = float("nan")
    with pytest.raises(ValueError, match="noise contains NaN or infinite values"):
        synth(theta, noise=noise)
    with pytest.raises(ValueError, match="out must not require grad"):
        synth(theta, out=torch.zeros(2, synth.n_samples, requires_grad=True))
    with pytest.raises(ValueError, match=r"torch.sigmoid\(logits\).*validate=False"):
        synth(theta + 0.5)
    with pytest.raises(ValueError, match="theta is on the meta device"):
        synth(theta.to("meta"))
