"""One backend contract: every edge behaves the same on torch, cpu and triton (interpreter without a GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from doppel_torch import DoppelgangerPairs, ParametricSynth, VoiceSynth, default_backend, get_synth
from tests.backends.helpers import BACKENDS, device_of

DURATION = 0.02  # 320 samples: shorter than one Triton chunk and one C++ block


def _synths(backend: str):
    return get_synth("voicefm", duration=DURATION, backend=backend), get_synth("voicefm", duration=DURATION)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_and_batch_one(backend):
    synth, ref = _synths(backend)
    device = device_of(backend)
    empty = synth(torch.empty(0, synth.num_params, device=device))
    assert empty.shape == (0, synth.n_samples) and empty.device.type == device.type
    theta = synth.random_params(1, seed=3, dtype=torch.float64)
    torch.testing.assert_close(synth(theta.to(device)).cpu(), ref(theta), atol=1e-9, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-9), (torch.float32, 5e-5)])
def test_non_contiguous_theta_and_both_dtypes(backend, dtype, atol):
    synth, ref = _synths(backend)
    wide = synth.random_params(3, seed=4, dtype=torch.float64).repeat_interleave(2, dim=1).to(dtype)
    theta = wide[:, ::2]
    assert not theta.is_contiguous()
    got = synth(theta.to(device_of(backend)))
    assert got.dtype == dtype
    # The eager float32 reference is as ill-conditioned as SynthAX's on voicefm (README): it is compared with itself.
    want = ref(theta.contiguous()).double() if backend == "torch" else ref(theta.double())
    torch.testing.assert_close(got.cpu().double(), want, atol=atol, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rows", [1, 3])
def test_explicit_noise_rows(backend, rows):
    synth, ref = _synths(backend)
    device = device_of(backend)
    theta = synth.random_params(3, seed=5, dtype=torch.float64)
    noise = 2 * torch.rand(rows, synth.n_samples, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) - 1
    got = synth(theta.to(device), noise=noise.to(device))
    torch.testing.assert_close(got.cpu(), ref(theta, noise=noise), atol=1e-9, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_is_written_and_returned(backend):
    synth, ref = _synths(backend)
    device = device_of(backend)
    theta = synth.random_params(2, seed=6, dtype=torch.float64).to(device)
    out = torch.full((2, synth.n_samples), float("nan"), dtype=torch.float64, device=device)
    assert synth(theta, out=out) is out
    torch.testing.assert_close(out.cpu(), ref(theta.cpu()), atol=1e-9, rtol=0)
    with pytest.raises(ValueError, match="out must be a contiguous"):
        synth(theta, out=out[:, :-1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_differentiable_backends_give_the_same_gradient(backend):
    """Every backend is differentiable (a backend without a backward refuses gradients: tests/backends/test_grad.py)."""
    synth, ref = _synths(backend)
    theta = (0.1 + 0.8 * synth.random_params(2, seed=8, dtype=torch.float64)).requires_grad_(True)
    synth(theta.to(device_of(backend)), validate=False).square().sum().backward()
    want = theta.detach().clone().requires_grad_(True)
    ref(want).square().sum().backward()
    torch.testing.assert_close(theta.grad, want.grad, rtol=1e-7, atol=1e-9 * float(want.grad.abs().max()))
    with torch.no_grad():
        assert synth(theta.to(device_of(backend))).shape == (2, synth.n_samples)


def test_the_reference_is_differentiable():
    synth, _ = _synths("torch")
    theta = (0.1 + 0.8 * synth.random_params(2, seed=8)).requires_grad_(True)
    synth(theta, validate=False).square().sum().backward()
    assert torch.isfinite(theta.grad).all() and theta.grad.abs().sum() > 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("theta, message", [
    (torch.full((2, 130), float("nan")), "theta contains NaN"),
    (torch.full((2, 130), 1.5), r"theta must lie in \[0, 1\]"),
    (torch.zeros(2, 7), r"theta must have shape \(batch, 130\)"),
    (torch.zeros(2, 130, dtype=torch.int64), "theta must be float32 or float64"),
])
def test_bad_theta_is_the_same_clear_error(backend, theta, message):
    synth, _ = _synths(backend)
    with pytest.raises(ValueError, match=message):
        synth(theta.to(device_of(backend)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_arguments_are_the_same_clear_error_on_every_backend(backend):
    """Found from outside: a list as noise reached a fused backend's transform check (a raw TypeError), a sparse
    theta torch's min (NotImplementedError), 1e300 noise in float64 passed its check and rendered NaN in float32, and
    normalize="no" rendered as True."""
    synth, _ = _synths(backend)
    device = device_of(backend)
    theta = synth.random_params(2, seed=3).to(device)
    cases = [
        (dict(noise=[[0.0] * synth.n_samples] * 2), "noise must be a torch.Tensor of shape"),
        (dict(noise=torch.full((2, synth.n_samples), 1e300, dtype=torch.float64, device=device)),
         "noise contains NaN or infinite values"),
        (dict(normalize="no"), "normalize must be True or False"),
        (dict(normalize=None), "normalize must be True or False"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            synth(theta, **kwargs)
    with pytest.raises(ValueError, match=r"got a sparse_coo one: pass theta.to_dense\(\)"):
        synth(theta.to_sparse())
    with pytest.raises(ValueError, match="got a nested one"):
        synth(torch.nested.nested_tensor(list(theta)))
    # named dimensions are dropped, not refused: the same sounds
    assert torch.equal(synth(theta.refine_names("batch", "param")), synth(theta))


def test_param_units_and_random_params_dtype():
    synth = get_synth("voice", duration=0.05)
    units = dict(zip(synth.param_names, synth.param_units))
    assert units["adsr_1/attack"] == "s" and units["keyboard/midi_f0"] == "MIDI note" and len(units) == 78
    with pytest.raises(ValueError, match="dtype must be torch.float32 or torch.float64"):
        synth.random_params(2, dtype=torch.float16)


def test_numpy_scalars_are_numbers_and_bools_are_not():
    """Found from outside: np.int64(16000) was refused as "not a positive number" (np.float64 worked: a float
    subclass), while True passed as a count of 1 and a delta of 1."""
    synth = VoiceSynth(sample_rate=np.int64(16000), duration=np.float32(0.1))
    assert (synth.sample_rate, type(synth.sample_rate), synth.duration, synth.n_samples) == (16000, int, 0.1, 1600)
    parametric = ParametricSynth(sine=np.int64(1), duration=0.05)
    assert parametric.counts == {"sine": 1, "square_saw": 2, "fm_sine": 1, "fm_square_saw": 1}
    assert type(parametric.counts["sine"]) is int
    with pytest.raises(ValueError, match="sine must be a non-negative integer, got True"):
        ParametricSynth(sine=True)
    with pytest.raises(ValueError, match="delta must be a number"):
        DoppelgangerPairs(synth, delta=True)


def test_random_params_and_default_backend_refuse_bad_arguments_in_one_line(monkeypatch):
    synth = get_synth("voice", duration=0.05)
    with pytest.raises(ValueError, match="device='meta' holds no values"):
        synth.random_params(2, device="meta")
    with pytest.raises(ValueError, match="device must be a torch device or its name"):
        synth.random_params(2, device="nope")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available here"):
        synth.random_params(2, device="cuda")
    with pytest.raises(ValueError, match=r"start \+ n must be below 2\*\*63"):
        synth.random_params(2, start=2**63 - 1)
    for device in (None, "nope"):
        with pytest.raises(ValueError, match="device must be a torch device or its name"):
            default_backend(device)
