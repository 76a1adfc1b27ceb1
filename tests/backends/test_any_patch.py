"""Any patch renders on every backend and equals the reference: FM chains, one modulator driving two carriers,
filters on oscillators and on the mix, patches without LFOs or noise. Interior theta (away from the cube's corners,
where phases can land exactly on a waveform's jump)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from doppel_torch import Synth
from tests.backends.helpers import device_of
from tests.backends.patches import USER_PATCHES

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# float64: the bar; float32: the triton/cpu float32 tolerances of their own tests (float64 phase inside).
DTYPE_ATOL = [(torch.float64, 1e-9), (torch.float32, 5e-5)]


def _interior(synth: Synth, batch: int, seed: int) -> torch.Tensor:
    return 0.05 + 0.9 * synth.random_params(batch, seed=seed, dtype=torch.float64)


def _subtractive():
    sys.path.insert(0, str(EXAMPLES))
    try:
        from subtractive import subtractive_patch
    finally:
        sys.path.remove(str(EXAMPLES))
    return subtractive_patch()


PATCHES = {**{name: make for name, make in USER_PATCHES.items()}, "subtractive": _subtractive}


@pytest.mark.parametrize("dtype, atol", DTYPE_ATOL)
@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("name", sorted(PATCHES))
def test_user_patch_equals_reference(name, backend, dtype, atol):
    patch = PATCHES[name]()
    ref = Synth(patch, duration=0.05, backend="torch")
    synth = Synth(patch, duration=0.05, backend=backend)
    device = device_of(backend)
    theta = _interior(ref, 3, seed=5).to(dtype).double()  # the same parameters in both dtypes
    want = ref(theta, seed=2, normalize=False)
    assert want.abs().max() > 1e-3  # the patch makes sound, so the comparison means something
    got = synth(theta.to(device, dtype), seed=2, normalize=False)
    assert got.dtype == dtype and got.shape == want.shape
    torch.testing.assert_close(got.cpu().double(), want, atol=atol, rtol=0)


def test_one_program_per_patch_and_rates():
    """The lowering is built once per (patch, rates, duration, eps) and shared by every synth and backend."""
    patch = USER_PATCHES["fan_out"]()
    a, b = Synth(patch, duration=0.05, backend="torch"), Synth(patch, duration=0.05, backend="cpu")
    assert a.program is b.program
    assert Synth(patch, duration=0.1).program is not a.program
