"""Fuzzing the public synth API: random constructor arguments, dtypes, shapes and values on every backend. Each call
either renders finite audio of the promised shape or raises ValueError / RuntimeError with a message; nothing else
escapes and the process never dies."""

from __future__ import annotations

import math
import random

import pytest
import torch

from doppel_torch import get_synth
from tests.backends.helpers import BACKENDS, device_of

SYNTH_NAMES = ("voice", "voicefm", "parametric")
ODD_NUMBERS = [0, -1, 1e-9, float("nan"), float("inf"), -float("inf"), True, False, None, "16000", 3.7]
ODD_RATES = ODD_NUMBERS + [7, 44100, 100000]  # sounds stay short: durations are never odd in the long direction


def _pick(r: random.Random, good, odd=ODD_NUMBERS, p_odd=0.1):
    return r.choice(odd) if r.random() < p_odd else good


def _theta(r: random.Random, m: int):
    batch = r.choice([0, 1, 2, 3])
    shape = r.choice([(batch, m)] * 9 + [(m,), (batch, m + 1), (batch, 0)])
    dtype = r.choice([torch.float32, torch.float64] * 5 + [torch.float16, torch.int64])
    kind = r.choice(["uniform"] * 8 + ["corners"] * 2 + ["nan", "outside", "inf"])
    x = torch.rand(shape, generator=torch.Generator().manual_seed(r.randrange(2**31)), dtype=torch.float64)
    if kind == "corners":
        x = (x > 0.5).double()
    elif kind == "nan":
        x = x.flatten()
        x[: max(1, x.numel() // 7)] = float("nan")
        x = x.reshape(shape)
    elif kind == "outside":
        x = 3 * x - 1
    elif kind == "inf":
        x = x / 0.0
    return x.to(dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_arguments_never_escape(backend):
    r = random.Random({"torch": 1, "cpu": 2, "triton": 3}[backend])
    outcomes = {"rendered": 0, "refused": 0}
    for _ in range(60 if backend != "triton" else 20):  # the interpreter is slow
        kwargs = dict(sample_rate=_pick(r, r.choice([8000, 16000]), ODD_RATES),
                      control_rate=_pick(r, r.choice([100, 480]), ODD_RATES),
                      duration=_pick(r, r.choice([0.02, 0.05])), eps=_pick(r, 1e-6, odd=[0, 0.5, -1, 1e-3, None]))
        try:
            synth = get_synth(r.choice(SYNTH_NAMES), backend=backend, **kwargs)
        except (ValueError, RuntimeError) as err:
            assert str(err)
            outcomes["refused"] += 1
            continue
        theta = _theta(r, synth.num_params).to(device_of(backend))
        call = dict(seed=_pick(r, r.randrange(10), odd=[-1, 2**64, 2**63, 1.5, "0", None], p_odd=0.15),
                    normalize=r.random() < 0.8)
        if r.random() < 0.2:
            call["indices"] = r.choice([torch.arange(theta.shape[0]), torch.zeros(theta.shape[0]), [1, 2], None])
        try:
            audio = synth(theta, **call)
        except (ValueError, RuntimeError) as err:
            assert str(err)
            outcomes["refused"] += 1
            continue
        assert audio.shape == (theta.shape[0], synth.n_samples) and audio.dtype == theta.dtype
        assert torch.isfinite(audio).all()
        if call["normalize"] and audio.numel():
            assert audio.abs().max() <= 1.0
        outcomes["rendered"] += 1
    assert outcomes["rendered"] > 0 and outcomes["refused"] > 0, outcomes


@pytest.mark.parametrize("kwargs, message", [
    (dict(sample_rate=True), "sample_rate must be a positive number"),
    (dict(duration=math.nan), "duration must be a positive number"),
    (dict(control_rate="480"), "control_rate must be a positive number"),
])
def test_bad_constructor_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        get_synth("voice", **kwargs)


def test_seeds_and_indices_that_would_wrap_or_truncate_are_refused():
    synth = get_synth("voice", duration=0.02)
    theta = synth.random_params(2)
    with pytest.raises(ValueError, match=r"seed must lie in \[-2\^63, 2\^64\)"):
        synth(theta, seed=2**64)
    with pytest.raises(ValueError, match="seed must be an integer"):
        synth(theta, seed=1.5)
    with pytest.raises(ValueError, match="indices must be integer"):
        synth(theta, indices=torch.tensor([0.5, 1.7]))
    with pytest.raises(ValueError, match="indices must be >= 0"):
        synth(theta, indices=torch.tensor([-1, 3]))
    with pytest.raises(ValueError, match="seed must lie"):
        synth.random_params(2, seed=-(2**63) - 1)
    with pytest.raises(ValueError, match="start must be a non-negative integer"):
        synth.random_params(2, start=1.5)
    assert torch.equal(synth(theta, seed=2**64 - 1), synth(theta, seed=2**64 - 1))
