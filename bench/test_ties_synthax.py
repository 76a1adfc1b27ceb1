"""One-off check: off the clip bounds, doppel-torch's voicefm equals SynthAX's own VoiceExpanded on the tied row.

Row 0 of the voiceexpanded reference's `params_aug` has lfo_2's frequency and initial phase clipped to exactly 1.0
(20 Hz, phase pi), which puts that LFO's phase exactly on the jumps of its square and saw: SynthAX resolves them by
the rounding of its float64 cumsum in radians, doppel-torch by its exact fixed-point phase, and the two renders
differ O(1) there.
A tie is not a property of the synth but of the rounding, so this test renders SynthAX itself (float64) at theta
moved inward from the clip bounds, theta.clip(1e-6 + d, 1 - d) for d = 1e-9 and 1e-7, and compares doppel-torch
(torch backend, float64) with it on all 8 rows.

How SynthAX is rendered here (its own modules, called, nothing re-implemented):
- `VoiceExpanded(config=SynthConfig(batch_size=B, sample_rate=16000, buffer_size_seconds=1.0, control_rate=480,
  eps=1e-6))`, all inside `jax.enable_x64(True)`.
- The flat normalised theta (B, 130) maps to the parameter pytree through `jax.flatten_util.ravel_pytree` of one
  batch row of the pytree's shapes (`jax.eval_shape(synth.init, PRNGKey(0))`, so the slow eager init never runs),
  `jax.vmap(unravel)` over the rows. The flattened names (modules sorted, then parameters, matrices row-major) are
  checked against the reference file's `names`.
- Noise: SynthAX's `Noise` draws its buffer in `setup` from PRNGKey(seed) at the default float dtype (float64 under
  x64, so not the stored float32 row), so a flax method interceptor (`nn.intercept_methods`) makes
  `Noise.__call__` return the given row broadcast to the batch.
- Pre-normalisation mix: `AudioMixer` ends in `synthax.functional.normalize_if_clipping` (whole batch divided by
  item 0's peak when above 1); it is replaced by the identity in `synthax.modules.mixers` (pytest.MonkeyPatch) for
  the duration of the render.
- `synth.apply({"params": params})` under `jax.jit`. Jitted, it reproduces the stored `premix_aug_f64` bit for bit
  (max abs 0.0 on all 8 rows); eager (op-by-op) apply differs from it by up to 8.7e-10 (row 3; 4.4e-10 on row 0),
  float64 rounding of a differently compiled computation, and resolves row 0's tie the same way.

Needs the `synthax` extra (synthax==0.2.2, jax, flax) and ../shared/reference/synthax/voiceexpanded.npz; skips
without them. bench/conftest.py skips everything in bench/ unless `--benchmark` is given, so run it with

    .venv/bin/python -m pytest bench/test_ties_synthax.py -q -s --benchmark

Measured (synthax 0.2.2, jax 0.10.2, flax 0.12.8, torch CPU, float64), max abs over 16,000 samples, per row 0..7:
- SynthAX (jit) vs stored premix_aug_f64: 0.0 on all 8 rows.
- At the stored theta, |doppel-torch - SynthAX|: 0.953 on row 0 (the tie); 1.0e-7 at most on rows 1-7
  (8.4e-11, 1.0e-7, 3.4e-8, 1.2e-10, 3.7e-9, 1.3e-9, 5.9e-8).
- theta moved 1e-9 inward: 7.5e-8 on row 0; 1.3e-7 at most over all 8 rows
  (7.5e-8, 9.5e-11, 5.4e-8, 1.3e-7, 1.2e-10, 8.2e-9, 5.6e-11, 4.9e-8).
- theta moved 1e-7 inward: 1.4e-7 on row 0; 1.8e-7 at most over all 8 rows
  (1.4e-7, 8.5e-11, 2.9e-8, 1.8e-7, 8.7e-11, 3.8e-9, 4.8e-11, 4.0e-8).
For scale: the move itself changes SynthAX's own render by up to 0.044 (1e-9; 0.038 on row 0) and 1.76 (1e-7;
0.945 on row 0), since a 1 s phase integral amplifies tiny changes of pitch and FM depth; so the agreement is
between the two renderers at the same moved theta, not with the stored file. The two differ by 0.95 only at the
exact tie, which doppel-torch's exact phase and SynthAX's rounded float cumsum resolve differently.
The assertions use 1e-6 (the tolerance of tests/backends/torch/test_parity.py for the untied rows), 5x above the
largest measured difference, 1.8e-7.
"""

from __future__ import annotations

import functools
import itertools
import os
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("synthax")
jax = pytest.importorskip("jax")
pytest.importorskip("flax")

import jax.numpy as jnp  # noqa: E402
import synthax.modules.mixers as synthax_mixers  # noqa: E402
from flax import linen as nn  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402
from synthax.config import SynthConfig  # noqa: E402
from synthax.modules.oscillators import Noise  # noqa: E402
from synthax.synth import VoiceExpanded  # noqa: E402

from doppel_torch import get_synth  # noqa: E402

# The project's shared folder next to the repository root, as tests/conftest.py finds it.
SHARED = Path(os.environ.get("DOPPEL_SHARED", Path(__file__).resolve().parents[2] / "shared"))
SYNTHAX_REF = SHARED / "reference" / "synthax"

EPS = 1e-6
TIED_ROW = 0


@pytest.fixture(scope="module")
def ref() -> dict:
    path = SYNTHAX_REF / "voiceexpanded.npz"
    if not path.exists():
        pytest.skip(f"missing SynthAX reference render {path}")
    return dict(np.load(path))


@functools.cache
def _synthax(batch: int):
    """VoiceExpanded for `batch` sounds, the unravel of one row of its parameters, their flattened names, and its
    jitted pre-normalisation render (params, noise) -> (batch, 16000). Call only inside `jax.enable_x64(True)`."""
    config = SynthConfig(batch_size=batch, sample_rate=16000, buffer_size_seconds=1.0, control_rate=480, eps=EPS)
    synth = VoiceExpanded(config=config)
    shapes = jax.eval_shape(synth.init, jax.random.PRNGKey(0))["params"]
    row = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape[1:], s.dtype), shapes)
    _, unravel = ravel_pytree(row)
    names = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(row)[0]:
        name = f"{path[0].key.removeprefix('modules_')}/{path[1].key}"
        cells = itertools.product(*map(range, leaf.shape))
        names += [name] if leaf.ndim == 0 else [f"{name}[{','.join(map(str, c))}]" for c in cells]

    def render(params, noise):
        def use_given_noise(next_fun, args, kwargs, context):
            if isinstance(context.module, Noise) and context.method_name == "__call__":
                return jnp.broadcast_to(noise, (batch, noise.shape[-1]))
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(use_given_noise):
            return synth.apply({"params": params})

    return unravel, names, jax.jit(render)


def synthax_premix(theta: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """SynthAX VoiceExpanded's float64 mix before normalisation, for normalised theta (B, 130) and noise (1, N)."""
    with jax.enable_x64(True), pytest.MonkeyPatch.context() as mp:
        mp.setattr(synthax_mixers, "normalize_if_clipping", lambda signal: signal)
        unravel, _, render = _synthax(theta.shape[0])
        params = jax.vmap(unravel)(jnp.asarray(theta, dtype=jnp.float64))
        out = np.asarray(render(params, jnp.asarray(noise, dtype=jnp.float64)))
    assert out.dtype == np.float64 and out.shape == (theta.shape[0], noise.shape[-1])
    return out


def doppel_premix(theta: np.ndarray, noise: np.ndarray) -> np.ndarray:
    synth = get_synth("voicefm", backend="torch")
    theta_t, noise_t = torch.from_numpy(theta).double(), torch.from_numpy(noise).double()
    return synth(theta_t, noise=noise_t, normalize=False).numpy()


def _rows(diff: np.ndarray) -> str:
    return "[" + ", ".join(f"{d:.3g}" for d in diff.max(axis=1)) + "]"


def test_synthax_render_reproduces_the_stored_file(ref):
    theta = ref["params_aug"].astype(np.float64)
    with jax.enable_x64(True):
        names = _synthax(theta.shape[0])[1]
    assert names == [str(n) for n in ref["names"]]
    assert names == get_synth("voicefm").param_names
    want = ref["premix_aug_f64"]
    assert np.abs(want[TIED_ROW]).max() > 1.0  # the stored row 0 is unnormalised: the identity patch took effect
    got = synthax_premix(theta, ref["noise_f32"])
    diff = np.abs(got - want)
    print(f"\nSynthAX (jit) vs stored premix_aug_f64, per row: {_rows(diff)}")
    assert diff.max() <= 1e-9


def test_doppel_torch_equals_synthax_off_the_tie(ref):
    theta, noise = ref["params_aug"].astype(np.float64), ref["noise_f32"]
    names = [str(n) for n in ref["names"]]
    lfos = {n.split("/")[0] for n in names if n.startswith("lfo_") and n.endswith("/initial_phase")}
    at_one = {n for n, v in zip(names, theta[TIED_ROW]) if v == 1.0}
    tied = [k for k in sorted(lfos) if {f"{k}/frequency", f"{k}/initial_phase"} <= at_one]
    assert tied, "row 0 should hold an LFO with frequency and initial phase clipped to exactly 1"

    sx_at = synthax_premix(theta, noise)
    dt_at = doppel_premix(theta, noise)
    at = np.abs(dt_at - sx_at)
    print(f"\nrow {TIED_ROW}: {tied} at frequency = initial phase = 1")
    print(f"stored theta: |doppel-torch - SynthAX| per row {_rows(at)}")

    worst = {}
    for inward in (1e-9, 1e-7):
        moved = theta.clip(EPS + inward, 1.0 - inward)
        sx = synthax_premix(moved, noise)
        dt = doppel_premix(moved, noise)
        diff = np.abs(dt - sx)
        print(
            f"theta moved {inward:g} inward: |doppel-torch - SynthAX| per row {_rows(diff)}; "
            f"SynthAX moved vs at the bounds {_rows(np.abs(sx - sx_at))}"
        )
        worst[inward] = diff.max()

    assert at[TIED_ROW].max() > 0.5  # the tie is real: at the bounds the two resolve the jumps differently
    assert np.delete(at, TIED_ROW, axis=0).max() <= 1e-6
    for inward, d in worst.items():
        assert d <= 1e-6, f"theta moved {inward:g} inward: max abs {d:.3g} between doppel-torch and SynthAX"
