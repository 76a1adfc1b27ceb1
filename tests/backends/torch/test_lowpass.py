"""The one-pole low-pass of the reference against an independent float64 numpy loop of the same recurrence."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from doppel_torch.backends.torch import functional as F


def lowpass_loop(x: np.ndarray, cutoff_hz: np.ndarray, sample_rate: float) -> np.ndarray:
    """y[n] = a[n] x[n] + (1 - a[n]) y[n - 1], a = dt / (tau + dt), tau = 1 / (2 pi cutoff), y[-1] = 0."""
    dt = 1.0 / sample_rate
    y = np.zeros_like(x)
    for b in range(x.shape[0]):
        state = 0.0
        for n in range(x.shape[1]):
            c = cutoff_hz[b, n]
            a = 0.0 if c == 0 else dt / (1.0 / (2.0 * math.pi * c) + dt)
            state = a * x[b, n] + (1.0 - a) * state
            y[b, n] = state
    return y


@pytest.mark.parametrize("n", [1, 255, 256, 1000])
@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_lowpass_equals_the_loop(n, dtype, atol):
    g = torch.Generator().manual_seed(n)
    x = 2 * torch.rand(3, n, generator=g, dtype=torch.float64) - 1
    cutoff = 8000 * torch.rand(3, n, generator=g, dtype=torch.float64) ** 3
    cutoff[0, : n // 2] = 0.0  # a closed filter holds its state
    cutoff[1] = 8000.0  # Nyquist at 16 kHz: the smallest decay, 1 / (1 + pi)
    want = lowpass_loop(x.numpy(), cutoff.numpy(), 16000.0)
    got = F.lowpass(x.to(dtype), cutoff.to(dtype), 16000.0)
    assert got.dtype == dtype
    np.testing.assert_allclose(got.double().numpy(), want, atol=atol, rtol=0)


def test_lowpass_is_differentiable():
    x = torch.randn(2, 300, dtype=torch.float64, requires_grad=True)
    cutoff = torch.full((2, 300), 500.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, c: F.lowpass(a, c, 16000.0, block=64), (x, cutoff))
