"""One-off check: doppel-torch's one-pole low-pass equals SynthAX's own `LPF` module.

Compared: `doppel_torch.backends.torch.functional.lowpass(x, cutoff_hz, 16000)` against
`synthax.modules.filters.LPF(config=SynthConfig(sample_rate=16000, ...), order=...)` called through flax
`init`/`apply`, on the same (B=3, N=4000) random audio in [-1, 1] and time-varying cutoffs that span 0 Hz
(closed), a few Hz, a few kHz and Nyquist (8000 Hz), in float64 (JAX with x64 on). The float64 outputs must
agree to 1e-12 max abs; a float32 comparison (SynthAX with x64 off) is printed for information only.

Needs the `synthax` extra (`pip install -e ".[synthax]"`, i.e. synthax==0.2.2, jax, flax); skips without it.
bench/conftest.py skips everything in bench/ unless `--benchmark` is given, so run it with

    .venv/bin/python -m pytest bench/test_filter_synthax.py -q -s --benchmark

Measured (synthax 0.2.2, jax 0.10.2, flax 0.12.8, torch CPU): float64 max abs difference 4.4e-16 (order 1)
and 3.3e-16 (order 3; in SynthAX 0.2.2 `order` only sets how many identical first-order states run side by
side, the last one is returned, so it does not change the filter). float32, for information: SynthAX vs
doppel-torch 1.8e-7 (order 1) / 1.2e-7 (order 3); SynthAX f32 vs f64 1.9e-7 / 1.5e-7; doppel-torch f32 vs
f64 5.3e-8 (doppel-torch scans in float64 and only rounds the output).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("synthax")
jax = pytest.importorskip("jax")
pytest.importorskip("flax")

import jax.numpy as jnp  # noqa: E402
from synthax.config import SynthConfig  # noqa: E402
from synthax.modules.filters import LPF  # noqa: E402

from doppel_torch.backends.torch import functional as F  # noqa: E402

SAMPLE_RATE = 16000
NYQUIST = SAMPLE_RATE / 2
B, N = 3, 4000


def make_inputs(seed: int = 20240611) -> tuple[np.ndarray, np.ndarray]:
    """Audio (B, N) uniform in [-1, 1] and cutoffs (B, N) in Hz covering 0, a few Hz, kHz and Nyquist."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, size=(B, N))
    cutoff = np.empty((B, N))
    # Row 0: piecewise-constant segments: closed, a few Hz, a few kHz, Nyquist, closed again (holds its state).
    edges = [0, 600, 1400, 2200, 3200, N]
    for (lo, hi), c in zip(zip(edges[:-1], edges[1:]), [0.0, 3.0, 2500.0, NYQUIST, 0.0]):
        cutoff[0, lo:hi] = c
    # Row 1: a log sweep 1 Hz -> Nyquist with jitter, starting closed and ending exactly at Nyquist.
    sweep = np.geomspace(1.0, NYQUIST, N) * rng.uniform(0.8, 1.0, size=N)
    sweep[:200] = 0.0
    sweep[-200:] = NYQUIST
    cutoff[1] = sweep
    # Row 2: log-uniform 0.5 Hz .. Nyquist per sample, with exact 0 Hz and Nyquist samples sprinkled in.
    row = np.exp(rng.uniform(np.log(0.5), np.log(NYQUIST), size=N))
    row[rng.random(N) < 0.1] = 0.0
    row[rng.random(N) < 0.1] = NYQUIST
    cutoff[2] = row
    return x, cutoff


def synthax_lpf(x: np.ndarray, cutoff: np.ndarray, order: int = 1) -> np.ndarray:
    """SynthAX's LPF on x, cutoff at the current JAX precision (float64 inside `jax.enable_x64(True)`)."""
    config = SynthConfig(batch_size=B, sample_rate=SAMPLE_RATE, buffer_size_seconds=N / SAMPLE_RATE)
    module = LPF(config=config, order=order)
    audio, control = jnp.asarray(x), jnp.asarray(cutoff)
    variables = module.init(jax.random.PRNGKey(0), audio, control)  # LPF has no parameters: {}
    return np.asarray(module.apply(variables, audio, control))


def doppel_lowpass(x: np.ndarray, cutoff: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    y = F.lowpass(torch.from_numpy(x).to(dtype), torch.from_numpy(cutoff).to(dtype), SAMPLE_RATE)
    assert y.dtype == dtype
    return y.double().numpy()


@pytest.mark.parametrize("order", [1, 3])
def test_lowpass_equals_synthax_lpf(order):
    x, cutoff = make_inputs()

    # x64 scoped to this block (jax.config.update("jax_enable_x64", True) would leak into other tests).
    with jax.enable_x64(True):
        want64 = synthax_lpf(x, cutoff, order)
    assert want64.dtype == np.float64 and want64.shape == (B, N)
    got64 = doppel_lowpass(x, cutoff, torch.float64)
    diff64 = np.abs(got64 - want64).max()
    print(f"\norder={order} float64: max |doppel-torch - SynthAX| = {diff64:.3g}")

    # float32, for information: SynthAX with x64 off runs its scan in float32; doppel-torch scans in float64
    # and rounds the result to float32.
    with jax.enable_x64(False):
        want32 = synthax_lpf(x.astype(np.float32), cutoff.astype(np.float32), order)
    assert want32.dtype == np.float32
    want32 = want32.astype(np.float64)
    got32 = doppel_lowpass(x, cutoff, torch.float32)
    print(
        f"order={order} float32: max |doppel-torch - SynthAX| = {np.abs(got32 - want32).max():.3g}, "
        f"SynthAX f32 vs f64 = {np.abs(want32 - want64).max():.3g}, "
        f"doppel-torch f32 vs f64 = {np.abs(got32 - want64).max():.3g}"
    )

    assert np.isfinite(want64).all() and np.isfinite(got64).all()
    assert diff64 <= 1e-12
