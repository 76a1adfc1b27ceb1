"""Triton synth kernels against the float64 torch reference (`doppel_torch.backends.torch`), through the public API.

Under the interpreter every render costs ~1 s, so batches are 1 to 4 sounds of 0.02 to 0.13 s (320 to 2080
samples: shorter than one audio chunk, one partial chunk, several chunks with a partial last one).
"""

from __future__ import annotations

import sys

import pytest
import torch

from doppel_torch import ParametricSynth, get_synth

SYNTHS = ("voice", "voicefm", "parametric")

# Tolerances travel with the dtype: max abs difference to the float64 reference, audio peak <= 1.
# float32 waveforms (phase stays float64) measured 3.5e-6 max abs on these shapes.
DTYPE_ATOL = [(torch.float64, 1e-9), (torch.float32, 5e-5)]


def _pair(name: str, duration: float, **kwargs):
    return (get_synth(name, duration=duration, backend="triton", **kwargs),
            get_synth(name, duration=duration, backend="torch", **kwargs))


def _theta(synth, batch: int, seed: int, device, dtype) -> torch.Tensor:
    return synth.random_params(batch, seed=seed, device=device, dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("dtype, atol", DTYPE_ATOL)
@pytest.mark.parametrize("name, batch, duration", [
    ("voice", 3, 0.05), ("voicefm", 1, 0.05), ("parametric", 3, 0.05), ("voice", 1, 0.13), ("voicefm", 3, 0.02),
])
def test_kernel_matches_reference(device, name, batch, duration, dtype, atol):
    synth, ref = _pair(name, duration)
    theta = _theta(synth, batch, 11, device, dtype)
    audio = synth(theta, seed=3)
    expected = ref(theta.double(), seed=3)
    assert audio.dtype == dtype and audio.shape == (batch, synth.n_samples) and audio.device.type == device.type
    assert torch.isfinite(audio).all()
    torch.testing.assert_close(audio.double(), expected, atol=atol, rtol=0)


@pytest.mark.parametrize("dtype, atol", DTYPE_ATOL)
def test_unwritten_output_fails(device, dtype, atol):
    """The kernel writes every element of a NaN-poisoned buffer, raw (normalize=False) and normalised."""
    synth, ref = _pair("voicefm", 0.05)
    theta = _theta(synth, 3, 5, device, dtype)
    for normalize in (False, True):
        out = torch.full((3, synth.n_samples), float("nan"), dtype=dtype, device=device)
        assert synth(theta, normalize=normalize, out=out) is out
        assert not torch.isnan(out).any()
        torch.testing.assert_close(out.double(), ref(theta.double(), normalize=normalize), atol=atol, rtol=0)


@pytest.mark.parametrize("name", SYNTHS)
def test_corners_of_the_cube(device, name):
    """theta at eps (all-zero LFO weights, zero durations) and at 1, whole and alternating: finite and equal."""
    synth, ref = _pair(name, 0.05)
    m = synth.num_params
    alternate = (torch.arange(m) % 2).to(torch.float64)
    theta = torch.stack([torch.zeros(m), torch.ones(m), alternate, 1.0 - alternate]).to(device)
    theta = theta.to(torch.float64)
    audio = synth(theta)
    assert torch.isfinite(audio).all()
    assert audio.abs().max() <= 1.0
    torch.testing.assert_close(audio, ref(theta), atol=1e-9, rtol=0)


def test_keyed_noise_equals_torch_backend(device):
    """Same seed and global indices (beyond 32 bits too): the kernel draws the torch backend's noise bits."""
    synth, ref = _pair("voice", 0.05)
    theta = _theta(synth, 3, 2, device, torch.float64)
    indices = torch.tensor([5, 2**33 + 1, 0], device=device)
    audio = synth(theta, seed=123, indices=indices)
    torch.testing.assert_close(audio, ref(theta, seed=123, indices=indices), atol=1e-9, rtol=0)
    assert (audio - synth(theta, seed=124, indices=indices)).abs().max() > 1e-3  # the seed reaches the noise


@pytest.mark.parametrize("rows", [1, 3])
def test_explicit_noise(device, rows):
    """A given noise tensor, (B, N) or one row shared by the batch, replaces the keyed noise."""
    synth, ref = _pair("voice", 0.05)
    theta = _theta(synth, 3, 4, device, torch.float64)
    noise = torch.rand(rows, synth.n_samples, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    noise = (2.0 * noise - 1.0).to(device)
    torch.testing.assert_close(synth(theta, noise=noise), ref(theta, noise=noise), atol=1e-9, rtol=0)


def test_batch_invariance(device):
    """A sound depends only on its theta and global index: the same alone as inside a batch."""
    synth = get_synth("parametric", duration=0.05, backend="triton")
    theta = _theta(synth, 3, 9, device, torch.float32)
    indices = torch.tensor([7, 8, 9], device=device)
    batch = synth(theta, seed=1, indices=indices)
    alone = synth(theta[1:2], seed=1, indices=indices[1:2])
    assert torch.equal(batch[1:2], alone)
    assert torch.equal(batch, synth(theta, seed=1, indices=indices))


@pytest.mark.parametrize("counts", [(1, 0, 0, 1), (0, 1, 1, 0), (0, 2, 0, 0)])
def test_any_parametric_counts(device, counts):
    kwargs = dict(zip(("sine", "square_saw", "fm_sine", "fm_square_saw"), counts))
    synth = ParametricSynth(duration=0.05, backend="triton", **kwargs)
    ref = ParametricSynth(duration=0.05, backend="torch", **kwargs)
    theta = _theta(synth, 3, 1, device, torch.float64)
    torch.testing.assert_close(synth(theta), ref(theta), atol=1e-9, rtol=0)


def test_float32_phase_option(device):
    """phase_dtype=float32 is the fast path: close to the reference on short sounds, refused for float64."""
    synth = get_synth("voice", duration=0.05, backend="triton", phase_dtype=torch.float32)
    ref = get_synth("voice", duration=0.05, backend="torch")
    theta = _theta(synth, 3, 6, device, torch.float32)
    fast = synth(theta)
    # A float32 phase drifts by ~1e-7 x f0 x t cycles: 2e-3 max abs on 0.05 s at the highest pitches.
    torch.testing.assert_close(fast.double(), ref(theta.double()), atol=2e-3, rtol=0)
    with pytest.raises(ValueError, match="phase_dtype"):
        synth(theta.double())


def test_clear_error_without_cuda(monkeypatch):
    from doppel_torch.backends.triton import check_available

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="CUDA GPU"):
        check_available()
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        get_synth("voice", backend="triton")


def test_clear_error_without_triton(monkeypatch):
    from doppel_torch.backends.triton import check_available

    monkeypatch.setitem(sys.modules, "triton", None)  # import triton -> ImportError
    with pytest.raises(RuntimeError, match="needs the triton package"):
        check_available()
    with pytest.raises(RuntimeError, match="needs the triton package"):
        get_synth("voicefm", backend="triton")
