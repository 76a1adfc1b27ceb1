"""Sound matching (doppel_torch.matching) through its public API and the `doppel-torch match` command."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from doppel_torch import VoiceSynth, default_backend, get_synth, match, matching, rng, spectral_loss
from doppel_torch.backends import get_backend
from doppel_torch.backends.cpu import spectral as native_spectral
from doppel_torch.cli import main
from doppel_torch.matching import cli as match_cli, loss as match_loss, search as match_search
from doppel_torch.matching import (describe_theta, pitch_columns, prepare_target, read_theta_json, starting_points,
                                   starts_around)

DURATION = 0.25


@pytest.fixture(scope="module")
def synth():
    return VoiceSynth(duration=DURATION, backend="torch")


def _target(synth, theta, seed=0):
    """The sound of theta with the noise row that match(seed=seed) renders with."""
    noise = rng.noise(seed, torch.zeros(1, dtype=torch.int64), synth.n_samples)
    with torch.no_grad():
        return synth(theta[None], noise=noise)[0]


def test_spectral_loss_is_zero_only_for_the_same_sound(synth):
    audio = synth(synth.random_params(3, seed=1))
    loss = spectral_loss(audio, audio[1])
    assert loss.shape == (3,)
    assert float(loss[1]) == 0.0 and bool((loss[[0, 2]] > 0.1).all()), loss
    assert torch.allclose(spectral_loss(audio, audio), torch.zeros(3))
    # one target row broadcast (its spectra computed once) equals the same row repeated
    assert torch.allclose(loss, spectral_loss(audio, audio[1].expand(3, -1).contiguous()), atol=1e-6)
    louder = spectral_loss(0.5 * audio[1:2], audio[1])  # a gain error alone is seen
    assert float(louder) > 0.5
    with pytest.raises(ValueError, match="target must be"):
        spectral_loss(audio, audio[:2])
    # found from outside: torch's own errors ("Unsupported dtype Half", hann_window's TensorOptions) before
    for bad, message in ((audio.half(), "audio must be a float32 or float64 tensor, got torch.float16"),
                         (audio.long(), "audio must be a float32 or float64 tensor, got torch.int64")):
        with pytest.raises(ValueError, match=message):
            spectral_loss(bad, audio[1])
    with pytest.raises(ValueError, match="target must be a float32 or float64 tensor, got torch.int64"):
        spectral_loss(audio, audio[1].long())


def _autograd_spectral_loss(audio, target):
    """The same loss written with torch.stft and autograd (the formula of spectral_loss's docstring)."""
    total = 0.0
    sizes = [n for n in (2048, 1024, 512, 256, 128, 64) if n <= audio.shape[-1]]
    for n in sizes:
        window = torch.hann_window(n, dtype=audio.dtype)

        def mag(x):
            return torch.stft(x, n, hop_length=n // 4, window=window, center=True, pad_mode="constant",
                              return_complex=True).abs()

        s, t = mag(audio), mag(target[None])
        total = total + (s - t).flatten(1).norm(dim=1) / t.flatten(1).norm(dim=1) \
            + (torch.log(s + 1e-5) - torch.log(t + 1e-5)).abs().flatten(1).mean(dim=1)
    return total / len(sizes)


@pytest.fixture(params=["native", "torch"])
def loss_path(request, monkeypatch):
    """The spectral loss's per-bin passes in native code (CPU tensors, where the library builds) or as torch ops."""
    if request.param == "native" and not get_backend("cpu").differentiable:
        pytest.skip("the native library does not build here")
    monkeypatch.setattr(match_loss, "NATIVE_LOSS", request.param == "native")
    return request.param


def test_spectral_loss_gradient_equals_autograd_of_the_formula(loss_path):
    """The hand-written backward (_ResolutionLoss) against autograd through torch.stft, float64: a sound, one with a
    silent stretch (|S| = 0 bins), the target itself (convergence 0), weighted rows; both loss paths."""
    assert match_loss._native(torch.zeros(1, dtype=torch.complex128)) == (loss_path == "native")
    gen = torch.Generator().manual_seed(0)
    target = torch.randn(3000, dtype=torch.float64, generator=gen)
    audio = torch.randn(3, 3000, dtype=torch.float64, generator=gen)
    audio[1, :1500] = 0.0
    audio[2] = target
    weights = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    ours = audio.clone().requires_grad_(True)
    theirs = audio.clone().requires_grad_(True)
    loss_ours, loss_theirs = spectral_loss(ours, target), _autograd_spectral_loss(theirs, target)
    (loss_ours * weights).sum().backward()
    (loss_theirs * weights).sum().backward()
    assert torch.allclose(loss_ours, loss_theirs, rtol=1e-12, atol=1e-12)
    assert torch.allclose(ours.grad, theirs.grad, rtol=1e-9, atol=1e-12), (ours.grad - theirs.grad).abs().max()
    assert ours.grad.abs().sum() > 0


def test_spectral_loss_of_no_sounds_is_empty():
    """An empty batch scores (0,) and back-propagates (0, N), where torch's FFTs would refuse it."""
    audio = torch.zeros(0, 1000, requires_grad=True)
    loss = spectral_loss(audio, torch.randn(1000))
    loss.sum().backward()
    assert loss.shape == (0,) and audio.grad.shape == (0, 1000)


def test_native_spectral_loss_equals_the_torch_ops():
    """float32, 16 kHz: the native per-bin passes against the torch ops of the same formula (a target per row and
    one broadcast); each native pass gives the same bits on 1 and 2 threads (fixed partial sums; torch's FFTs do
    not)."""
    if not get_backend("cpu").differentiable:
        pytest.skip("the native library does not build here")
    gen = torch.Generator().manual_seed(2)
    audio = 0.3 * torch.randn(3, 4000, generator=gen)
    weights = torch.tensor([1.0, -0.5, 2.0])
    for target in (0.3 * torch.randn(4000, generator=gen), 0.3 * torch.randn(3, 4000, generator=gen)):
        results = []
        for native in (True, False):
            match_loss.NATIVE_LOSS = native
            try:
                x = audio.clone().requires_grad_(True)
                loss = spectral_loss(x, target)
                (loss * weights).sum().backward()
            finally:
                match_loss.NATIVE_LOSS = True
            results.append((loss.detach(), x.grad))
        (loss_n, grad_n), (loss_t, grad_t) = results
        assert torch.allclose(loss_n, loss_t, rtol=2e-6), (loss_n, loss_t)
        assert ((grad_n - grad_t).norm() / grad_t.norm()) < 1e-6

    spectrum = match_loss._frames_spectrum(audio, 256)
    target = native_spectral.magnitude(match_loss._frames_spectrum(audio[:1].flip(-1), 256))
    frames = torch.randn(3, 61, 256, generator=gen)  # 3840 samples, hop 64
    window = torch.hann_window(256)
    w = torch.tensor([1.0, 2.0, -3.0], dtype=torch.float64)
    outputs = []
    before = torch.get_num_threads()
    for threads in (1, 2):
        torch.set_num_threads(threads)
        try:
            terms = native_spectral.terms(spectrum, target, match_loss.LOG_EPS)
            outputs.append([*terms, native_spectral.grad(spectrum, terms[2], terms[3], w, w),
                            native_spectral.overlap_add(frames, window, 60 * 64), native_spectral.magnitude(spectrum)])
        finally:
            torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(*outputs))
    assert torch.equal(native_spectral.magnitude(spectrum), outputs[0][-1])


def test_spectral_loss_backward_can_run_twice_and_reaches_a_target_with_grad():
    """The saved tensors are not modified by the backward (a retained graph differentiates again to the same values);
    a target that requires grad gets its gradient (autograd of the same formula); an FFT size that is not a multiple
    of 4 works too."""
    gen = torch.Generator().manual_seed(1)
    audio = torch.randn(2, 600, dtype=torch.float64, generator=gen).requires_grad_(True)
    target = torch.randn(600, dtype=torch.float64, generator=gen).requires_grad_(True)
    loss = spectral_loss(audio, target.detach()).sum()
    first = torch.autograd.grad(loss, audio, retain_graph=True)[0]
    assert torch.equal(torch.autograd.grad(loss, audio)[0], first)
    g_audio, g_target = torch.autograd.grad(spectral_loss(audio, target).sum(), (audio, target))
    assert torch.allclose(g_audio, first, rtol=1e-9, atol=1e-12) and g_target.abs().sum() > 0
    odd = torch.autograd.grad(spectral_loss(audio, target.detach(), fft_sizes=(30, 64)).sum(), audio)[0]
    assert torch.isfinite(odd).all() and odd.abs().sum() > 0
    small = audio[:, :80].detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: spectral_loss(x, target[:80].detach(), fft_sizes=(64, 32)), (small,))


def test_default_backend_asks_the_backends(monkeypatch):
    """The default is the fastest backend that says it is differentiable and loads here: torch while the cpu backend
    has no backward or no compiler; cpu once it has one (differentiable = True), with no change in doppel_torch/matching."""
    cpu = type(get_backend("cpu"))
    assert default_backend("cpu") == ("cpu" if cpu.differentiable else "torch") and get_backend("torch").differentiable
    monkeypatch.setattr(cpu, "differentiable", False)
    assert default_backend("cpu") == "torch"
    monkeypatch.setattr(cpu, "differentiable", True)
    assert default_backend("cpu") == "cpu"

    def no_compiler(self):
        raise RuntimeError("backend='cpu' needs a C++ compiler")

    monkeypatch.setattr(cpu, "check_available", no_compiler)  # a backend that cannot load is passed over
    assert default_backend("cpu") == "torch"
    triton = type(get_backend("triton"))
    monkeypatch.setattr(triton, "differentiable", False)
    assert default_backend("cuda") == "torch"
    monkeypatch.setattr(triton, "differentiable", True)
    assert default_backend("cuda") == "triton"


def _nearby(synth, theta, restarts, delta):
    z = rng.normal(7, rng.Stream.PERTURB_1, torch.arange(restarts), synth.num_params)
    return (theta + delta * z).clamp(0.0, 1.0)


def test_match_descends_from_nearby_starts(synth):
    """A target rendered from a known theta, restarts within delta = 0.05 of it: 60 steps cut the best loss well below
    every starting point (measured: starts 0.33-0.75, best after 60 steps 0.151; without a working gradient the
    best stays at the best start, 0.331). The best theta renders the returned audio at the reported loss."""
    theta = synth.random_params(1, seed=1000)[0]
    target = _target(synth, theta)
    result = match(synth, target, restarts=4, steps=60, seed=0, init=_nearby(synth, theta, 4, 0.05))
    assert result.steps == 60 and not result.interrupted and len(result.history) == 60
    start = float(result.initial_losses.min())
    assert result.loss < 0.7 * start and result.loss < 0.25, (result.loss, result.initial_losses)
    assert bool((result.restart_thetas >= 0).all() and (result.restart_thetas <= 1).all())
    rendered = _target(synth, result.theta)
    assert torch.equal(result.audio, rendered)
    assert abs(float(spectral_loss(rendered[None], target)) - result.loss) < 1e-4


@pytest.mark.slow  # ~40 s on 2 loaded cores: 200 steps of 6 restarts
def test_match_recovers_a_synth_target_from_nearby_starts(synth):
    """200 steps from delta = 0.05: measured best 0.079 (starts ~0.4; the target's own theta: 0)."""
    theta = synth.random_params(1, seed=1000)[0]
    result = match(synth, _target(synth, theta), restarts=6, steps=200, seed=0, init=_nearby(synth, theta, 6, 0.05))
    assert result.loss < 0.12 and result.loss < 0.4 * float(result.initial_losses.min()), result


def test_match_recovers_a_synth_target_to_near_zero_with_fine_pitch_steps():
    """From starts near a synth-rendered target (theta + 0.05 z, the pitch columns + 0.1 semitone z), 1000 steps with
    pitch_step=0.05 end at 0.0075 (two restarts of four; starts 0.28-0.53, this target's noise floor 1.3),
    where the default step ends every restart at 0.28 or above: its first steps leave the pitch valleys. ~10 s on
    the cpu backend (the torch backend: 4x longer)."""
    if not get_backend("cpu").differentiable:
        pytest.skip("the cpu backend cannot load here (no C++ compiler)")
    synth = VoiceSynth(duration=DURATION, backend="cpu")
    theta = synth.random_params(16, seed=1000)[9]
    pitch = pitch_columns(synth)
    ends = synth.to_human(torch.stack([torch.zeros(synth.num_params), torch.ones(synth.num_params)]).double())
    spread = torch.full((synth.num_params,), 0.05)
    spread[pitch] = 0.1 / (ends[1] - ends[0]).abs().float()[pitch]  # 0.1 semitone
    z = rng.normal(0, rng.Stream.PERTURB_1, torch.arange(4), synth.num_params)
    init, target = (theta + spread * z).clamp(0.0, 1.0), _target(synth, theta)
    fine = match(synth, target, restarts=4, steps=1000, seed=0, init=init, pitch_step=0.05)
    coarse = match(synth, target, restarts=4, steps=1000, seed=0, init=init)
    assert fine.loss < 0.02 and fine.loss < 0.05 * float(fine.initial_losses.min()), fine.restart_losses
    assert coarse.loss > 0.1, coarse.restart_losses


def test_restarts_are_keyed_by_the_seed():
    synth = VoiceSynth(duration=0.1)
    a, b = starting_points(synth.num_params, 4, seed=3), starting_points(synth.num_params, 6, seed=3)
    assert torch.equal(a, b[:4]) and not torch.equal(a, starting_points(synth.num_params, 4, seed=4))
    target = _target(synth, synth.random_params(1, seed=5)[0])
    r1 = match(synth, target, restarts=2, steps=2, seed=3, candidates=None)
    r2 = match(synth, target, restarts=2, steps=2, seed=3, candidates=None)
    r3 = match(synth, target, restarts=2, steps=2, seed=4, candidates=None)
    assert torch.equal(r1.restart_thetas, r2.restart_thetas) and not torch.equal(r1.restart_thetas, r3.restart_thetas)
    # candidates: the best `restarts` of the scored random thetas start the descent
    r4 = match(synth, target, restarts=2, steps=0, seed=3, candidates=8)
    all8 = match(synth, target, restarts=8, steps=0, seed=3, candidates=None).initial_losses.sort().values
    assert torch.allclose(r4.initial_losses.sort().values, all8[:2], atol=1e-5)


def test_pitch_columns_are_the_oscillators_pitch():
    names = VoiceSynth(duration=0.1).param_names
    assert [names[j] for j in pitch_columns(VoiceSynth(duration=0.1))] == [
        "keyboard/midi_f0", "vco_1/mod_depth", "vco_1/tuning", "vco_2/mod_depth", "vco_2/tuning"]
    fm = get_synth("voicefm", duration=0.1)  # vco_4 is an FM operator: its mod_depth is the index, not a pitch
    assert [fm.param_names[j] for j in pitch_columns(fm)] == [
        "keyboard/midi_f0", "vco_1/mod_depth", "vco_1/tuning", "vco_2/mod_depth", "vco_2/tuning", "vco_3/mod_depth",
        "vco_3/tuning", "vco_4/tuning"]


def test_pitch_step_scales_the_pitch_columns_steps():
    """Adam's first update is lr * sign(gradient) on what it holds (logits / pitch_step): the theta that the synth
    renders next has moved lr on every other logit and lr * pitch_step on the pitch columns."""
    rendered = []

    class Recording(VoiceSynth):
        def __call__(self, theta, **kwargs):
            rendered.append(theta.detach().clone())
            return super().__call__(theta, **kwargs)

    synth = Recording(duration=0.1, backend="torch")
    theta = synth.random_params(1, seed=1000)[0]
    init, target = _nearby(synth, theta, 2, 0.05), _target(synth, theta)
    rendered.clear()
    match(synth, target, restarts=2, steps=1, seed=0, init=init, pitch_step=0.05, lr=0.01)
    moved = (torch.logit(rendered[1].double()) - torch.logit(rendered[0].double())).abs()
    pitch = pitch_columns(synth)
    still = moved == 0  # a column without gradient in that restart (its oscillator silent there, say)
    assert int(still[:, pitch].sum()) <= 2 and int((~still).sum()) > 80  # of 10 pitch and 146 other entries
    # within 1e-3 of a face float32 theta cannot hold a logit step of lr (a start may lie 1e-6 inside: INIT_MARGIN)
    kept = ~still & (rendered[0] > 1e-3) & (rendered[0] < 1 - 1e-3)
    others = [j for j in range(synth.num_params) if j not in pitch]
    pitch_moves, other_moves = moved[:, pitch][kept[:, pitch]], moved[:, others][kept[:, others]]
    # Adam's update is lr * g / (|g| + 1e-8): lr exactly, but for a tiny gradient or float32 rounding of theta
    assert abs(float(pitch_moves.median()) - 0.0005) < 1e-5 and float(pitch_moves.max()) < 0.0006, pitch_moves
    assert abs(float(other_moves.median()) - 0.01) < 1e-4 and float(other_moves.max()) < 0.0105, other_moves
    with pytest.raises(ValueError, match="pitch_step"):
        match(synth, target, restarts=2, steps=1, pitch_step=0.0)
    with pytest.raises(ValueError, match="pitch_step"):
        match(synth, target, restarts=2, steps=1, pitch_step=True)


def test_scan_pitch_finds_a_detuned_note():
    """A target's theta with its note moved 40 semitones: the grid search over keyboard/midi_f0 puts it back within
    a fine step (4 / 15 of 1/63 of 127 semitones: 0.5 semitone), where the loss falls by more than half; a column
    whose every grid value scores worse keeps its value."""
    synth = VoiceSynth(duration=DURATION, backend="cpu" if get_backend("cpu").differentiable else "torch")
    theta = synth.random_params(16, seed=1000)[9]
    target = _target(synth, theta)
    scorer = match_loss._ScanTarget(target)
    noise = rng.noise(0, torch.zeros(1, dtype=torch.int64), synth.n_samples)

    def losses_of(batch):
        return scorer.loss(synth(batch, noise=noise, validate=False))

    f0 = synth.param_names.index("keyboard/midi_f0")
    start = theta.repeat(2, 1)
    start[0, f0] = theta[f0] + (40 / 127 if theta[f0] < 0.5 else -40 / 127)  # detuned
    found = matching.scan_pitch(losses_of, start, [f0])
    assert abs(float(found[0, f0] - theta[f0])) * 127 < 0.5, float(found[0, f0] - theta[f0]) * 127
    with torch.no_grad():
        before, after = losses_of(start), losses_of(found)
    assert float(after[0]) < 0.5 * float(before[0]), (before, after)
    assert float(found[1, f0]) == float(theta[f0])  # the target's own note: no grid value beats it
    others = [j for j in range(synth.num_params) if j != f0]
    assert torch.equal(found[:, others], start[:, others])
    assert [synth.param_names[j] for j in matching.scan_columns(synth)] == [
        "vco_1/mod_depth", "vco_2/mod_depth", "keyboard/midi_f0", "vco_1/tuning", "vco_2/tuning"]


def test_match_pitch_scans_move_only_pitch_columns_and_never_raise_a_loss():
    """From random starts match scans the pitch columns first (by default): with a learning rate too small to move
    anything, the thetas it ends with are the starts but for the pitch columns, and each restart's loss is at most
    its start's. From given starts (init) it does not scan unless asked."""
    synth = VoiceSynth(duration=0.1, backend="cpu" if get_backend("cpu").differentiable else "torch")
    target = _target(synth, synth.random_params(1, seed=7)[0])
    result = match(synth, target, restarts=4, steps=1, lr=1e-9, seed=0)
    start = starting_points(synth.num_params, 4, 0)
    pitch = pitch_columns(synth)
    others = [j for j in range(synth.num_params) if j not in pitch]
    assert torch.allclose(result.restart_thetas[:, others], start[:, others], atol=1e-5)
    assert not torch.allclose(result.restart_thetas[:, pitch], start[:, pitch], atol=1e-3)
    assert bool((result.restart_losses <= result.initial_losses).all())
    assert float(result.restart_losses.median()) < float(result.initial_losses.median())
    unscanned = match(synth, target, restarts=4, steps=1, lr=1e-9, seed=0, pitch_scans=0)
    assert torch.allclose(unscanned.restart_thetas, start, atol=1e-5)
    given = match(synth, target, restarts=4, steps=3, seed=0, init=start)
    assert torch.equal(given.restart_thetas, match(synth, target, restarts=4, steps=3, seed=0, init=start,
                                                   pitch_scans=0).restart_thetas)
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="pitch_scans"):
            match(synth, target, restarts=2, steps=1, pitch_scans=bad)


def test_pitch_scans_are_capped_at_the_steps_and_skip_a_patch_without_pitch(synth):
    """At most one scan a step (a billion scans asked for is 2 on 2 steps, not a loop over a billion); a patch
    without an oscillator has a keyboard note that changes nothing: no column to scan. scan_pitch refuses what is
    not a (restarts, m) float theta or a column index, in one line."""
    from doppel_torch.synths.base import Synth
    from tests.backends.patches import noise_only

    target = _target(synth, synth.random_params(1, seed=7)[0])
    assert match(synth, target, restarts=2, steps=2, seed=0, pitch_scans=10**9).pitch_scans == 2
    assert match(synth, target, restarts=2, steps=0, seed=0).pitch_scans == 0
    noisy = Synth(noise_only(), duration=DURATION, backend="torch")
    assert matching.scan_columns(noisy) == [] and pitch_columns(noisy)
    assert match(noisy, _target(noisy, noisy.random_params(1, seed=1)[0]), restarts=2, steps=2).pitch_scans == 0
    losses = lambda theta: theta.sum(dim=1)  # noqa: E731
    for theta, columns, message in ((torch.zeros(2, 4, dtype=torch.int64), [0], "floating-point"),
                                    (torch.zeros(4), [0], "restarts, m"), (torch.zeros(2, 4), [4], "column indices"),
                                    (torch.zeros(2, 4), [1.0], "column indices"), (torch.zeros(2, 4), [True], "column"),
                                    (torch.full((2, 4), math.nan), [0], "no NaN"),
                                    (torch.ones(2, 4) + 5, [0], "[0, 1]")):
        with pytest.raises(ValueError, match=message):
            matching.scan_pitch(losses, theta, columns)
    assert matching.scan_pitch(losses, torch.full((2, 4), 0.5), [np.int64(1), torch.tensor(2)]).shape == (2, 4)


def test_a_scan_counts_once_its_thetas_are_kept():
    """Interrupted right after a scan (the first render with gradients), the result holds what the scan found and
    counts the scan; the continue line asks for the scans left and the pitch step the run goes on with."""
    calls = []

    class Interrupting(VoiceSynth):
        def __call__(self, theta, **kwargs):
            if theta.requires_grad and torch.is_grad_enabled():
                calls.append(theta)
                raise KeyboardInterrupt
            return super().__call__(theta, **kwargs)

    synth = Interrupting(duration=0.1, backend="cpu" if get_backend("cpu").differentiable else "torch")
    target = _target(synth, synth.random_params(1, seed=7)[0])
    result = match(synth, target, restarts=4, steps=10, seed=0)
    assert result.interrupted and result.steps == 0 and result.pitch_scans == 1 and len(calls) == 1
    assert result.loss < float(result.initial_losses.min())  # the scan's, not the best start's
    assert match_cli._pitch_options(2, 0, 1.0) == " --pitch-scans 2"  # the first scan still to do: as asked
    assert match_cli._pitch_options(2, 1, 1.0) == " --pitch-scans 1 --pitch-step 0.05"
    assert match_cli._pitch_options(2, 2, 0.5) == " --pitch-step 0.05"
    assert match_cli._pitch_options(1, 1, 0.5) == " --pitch-step 0.5" and match_cli._pitch_options(0, 0, 1.0) == ""


def test_snapshots_hold_the_best_so_far(synth):
    """match(snapshot=...) with snapshot_seconds=0: called after every step and every parameter a pitch scan sets
    (a long scan loses no more than a step) with the steps taken, the best theta and its loss, never worse than the
    previous call; the last one is the result."""
    theta = synth.random_params(1, seed=1000)[0]
    calls = []
    result = match(synth, _target(synth, theta), restarts=3, steps=5, seed=0, snapshot_seconds=0.0,
                   snapshot=lambda step, best, loss: calls.append((step, best, loss)))
    # scans at steps 0 and 2: 5 pitch columns, each 3 x 64 and 3 x 16 thetas (a chunk each)
    assert [c[0] for c in calls] == [0] * 10 + [1, 2] + [2] * 10 + [3, 4, 5]
    assert result.pitch_scans == 2
    assert all(b[2] <= a[2] for a, b in zip(calls, calls[1:]))
    # the snapshot after the last update precedes the final scoring pass, which can only improve on it
    assert calls[-1][2] >= result.loss and calls[-1][1].shape == (synth.num_params,)


def test_starts_around_a_theta(synth):
    theta = synth.random_params(1, seed=3)[0]
    starts = starts_around(theta, 5, seed=1)
    assert starts.shape == (5, synth.num_params) and torch.equal(starts[0], theta.clamp(1e-3, 1 - 1e-3))
    spread = (starts[1:] - theta).std()
    assert 0.005 < float(spread) < 0.015 and torch.equal(starts, starts_around(theta, 5, seed=1))
    assert not torch.equal(starts, starts_around(theta, 5, seed=2))


def _without_backward(monkeypatch, name="cpu"):
    monkeypatch.setattr(type(get_backend(name)), "differentiable", False)


def test_match_refuses_bad_input(synth, monkeypatch):
    target = _target(synth, synth.random_params(1, seed=5)[0])
    with pytest.raises(ValueError, match=r"target must be a \(4000,\) tensor"):
        match(synth, target[:100])
    with pytest.raises(ValueError, match="floating-point"):
        match(synth, (target * 1000).to(torch.int16))
    with pytest.raises(ValueError, match="silent"):
        match(synth, torch.zeros_like(target))
    with pytest.raises(ValueError, match="NaN"):
        match(synth, torch.full_like(target, float("nan")))
    with pytest.raises(ValueError, match="restarts"):
        match(synth, target, restarts=0)
    for bad, message in ((dict(restarts=True), "restarts must be an integer >= 1, got True"),
                         (dict(candidates="many"), r"candidates must be an integer >= 0 \(or None\), got .many."),
                         (dict(lr="fast"), "lr must be a positive number, got 'fast'"),
                         (dict(pitch_step=np.float32(2.0)), r"pitch_step must be in \(0, 1\]")):
        with pytest.raises(ValueError, match=message):
            match(synth, target, **bad)
    # numpy scalars are numbers (found from outside: restarts=np.int64(2) was "not an integer >= 1")
    result = match(synth, target, restarts=np.int64(2), steps=np.int64(1), lr=np.float32(0.05),
                   pitch_scans=np.int64(0), candidates=np.int64(4))
    assert result.restart_losses.shape == (2,) and result.steps == 1
    with pytest.raises(ValueError, match="init must have shape"):
        match(synth, target, restarts=2, init=torch.rand(3, synth.num_params))
    _without_backward(monkeypatch)
    with pytest.raises(ValueError, match="not differentiable"):
        match(VoiceSynth(duration=DURATION, backend="cpu"), target, steps=1)


def test_prepare_target_resamples_pads_and_cuts(synth):
    audio, notes = prepare_target(torch.ones(2205), 22050, synth)  # 0.1 s at 22.05 kHz
    assert audio.shape == (4000,) and float(audio[3000:].abs().max()) == 0.0
    assert "resampled from 22050 Hz to 16000 Hz" in notes[0] and "padded with 0.150 s of silence" in notes[1]
    audio, notes = prepare_target(torch.ones(8000), 16000, synth)
    assert audio.shape == (4000,) and notes == ["the target is 0.500 s: matching its first 0.25 s (--duration)"]


def test_describe_theta_names_and_units(synth):
    theta = synth.random_params(1, seed=2)[0]
    params = describe_theta(synth, theta)
    assert [p["name"] for p in params] == synth.param_names
    by_name = {p["name"]: p for p in params}
    assert by_name["keyboard/midi_f0"]["unit"] == "MIDI note" and by_name["adsr_1/attack"]["unit"] == "s"
    assert all(p["unit"] for p in params)
    human = synth.to_human(theta.double())
    assert np.allclose([p["human"] for p in params], human.numpy(), rtol=1e-6, atol=1e-9)


def test_match_command_end_to_end(tmp_path, synth):
    """A synth-rendered target written at 22.05 kHz in stereo, shorter than --duration: averaged, resampled, padded,
    matched; the three outputs are written and the theta it reports renders the wav it wrote."""
    theta = synth.random_params(1, seed=11)[0]
    audio = synth(theta[None])[0]
    from doppel_torch.functional import resample

    path = tmp_path / "target.wav"
    mono = resample(audio, 16000, 22050)[:4000].numpy()
    sf.write(path, np.stack([mono, mono], axis=1), 22050)  # 0.18 s, two equal channels
    out = tmp_path / "fit"
    args = ["match", str(path), "--synth", "voice", "--duration", str(DURATION), "--restarts", "3", "--steps", "4",
            "--candidates", "6", "--seed", "2", "--out", str(out), "--no-progress"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "resampled from 22050 Hz to 16000 Hz" in result.output and "padded with" in result.output
    assert "averaged its 2 channels to mono" in result.output
    assert "best spectral loss" in result.output
    doc = json.loads((out / "theta.json").read_text())
    assert doc["synth"] == "voice" and doc["steps"] == 4 and len(doc["restart_losses"]) == 3
    assert [p["name"] for p in doc["params"]] == synth.param_names
    assert doc["loss"] == min(doc["restart_losses"]) and doc["loss"] < max(doc["initial_losses"])
    wav, rate = sf.read(out / "match.wav")
    assert rate == 16000 and wav.shape == (4000,)
    rendered = _target(synth, torch.tensor(doc["theta"], dtype=torch.float32), seed=2)
    assert np.abs(wav - rendered.numpy()).max() < 1e-3  # 16-bit wav
    assert (out / "match.png").read_bytes()[:4] == b"\x89PNG" and (out / "target.wav").exists()


def test_match_command_matches_the_files_length_by_default(tmp_path):
    """Without --duration a short file is matched over its own length (no silence to score) and a long one over its
    first second."""
    synth = VoiceSynth(duration=1.5)
    audio = synth(synth.random_params(1, seed=11))[0]
    for seconds, expected in ((0.3, 4800), (1.5, 16000)):
        path = tmp_path / f"t{seconds}.wav"
        sf.write(path, audio[: int(seconds * 16000)].numpy(), 16000)
        out = tmp_path / f"o{seconds}"
        result = CliRunner().invoke(main, ["match", str(path), "--restarts", "2", "--steps", "1", "--out", str(out),
                                           "--no-progress"])
        assert result.exit_code == 0, result.output
        assert "padded" not in result.output and f"matching {expected / 16000:g} s of" in result.output
        assert sf.read(out / "match.wav")[0].shape == (expected,)
        assert ("matching its first 1 s" in result.output) == (seconds > 1)


@pytest.mark.parametrize("case", ["missing", "unreadable", "silent", "quiet", "cancelling", "folder", "pipe", "cpu"])
def test_match_command_bad_input_is_one_clear_line(tmp_path, case, monkeypatch):
    path = tmp_path / "t.wav"
    extra = []
    if case == "unreadable":
        path.write_bytes(b"not audio at all")
    elif case == "silent":
        sf.write(path, np.zeros(1000), 16000)
    elif case == "quiet":  # 1e-7 noise: a 'match' of it scored 6069
        sf.write(path, 1e-7 * np.random.default_rng(0).standard_normal(1000), 16000, subtype="FLOAT")
    elif case == "cancelling":  # two channels in anti-phase average to silence
        tone = 0.5 * np.sin(np.arange(1000) * 0.1)
        sf.write(path, np.stack([tone, -tone], axis=1), 16000, subtype="FLOAT")
    elif case == "folder":
        path = tmp_path
    elif case == "pipe":  # a FIFO with no writer: opened twice, it hung (found from outside)
        os.mkfifo(path)
    elif case == "cpu":
        sf.write(path, np.full(1000, 0.1), 16000)
        extra = ["--backend", "cpu"]
        _without_backward(monkeypatch)  # as backend="cpu" was before its backward
    result = CliRunner().invoke(main, ["match", str(path), "--out", str(tmp_path / "o"), "--steps", "1", *extra])
    assert result.exit_code in (1, 2) and isinstance(result.exception, SystemExit), result.exception
    expected = {"missing": "no such file", "unreadable": "cannot read", "silent": "silent",
                "quiet": "below one 16-bit step", "cancelling": "once its 2 channels are averaged to mono",
                "folder": "is a folder", "pipe": "not a regular file", "cpu": "not differentiable"}[case]
    assert expected in result.output and "Traceback" not in result.output, result.output


def _match_args(path, out, *extra):
    return ["match", str(path), "--synth", "voice", "--duration", str(DURATION), "--restarts", "3", "--out", str(out),
            "--no-progress", *extra]


def test_match_command_continues_from_its_theta_json(tmp_path, synth):
    """--init out/theta.json: restart 0 starts at the earlier best (its starting loss is the earlier best loss, the
    same noise row), so the continued match ends no worse; a theta.json of another synth or a broken one is one
    line."""
    path = tmp_path / "t.wav"
    sf.write(path, synth(synth.random_params(1, seed=11))[0].numpy(), 16000)
    first = CliRunner().invoke(main, _match_args(path, tmp_path / "a", "--steps", "3"))
    assert first.exit_code == 0, first.output
    before = json.loads((tmp_path / "a" / "theta.json").read_text())
    again = CliRunner().invoke(main, _match_args(path, tmp_path / "b", "--steps", "3", "--init",
                                                 str(tmp_path / "a" / "theta.json")))
    assert again.exit_code == 0 and "around" in again.output, again.output
    after = json.loads((tmp_path / "b" / "theta.json").read_text())
    assert min(abs(v - before["loss"]) for v in after["initial_losses"]) < 1e-6
    assert after["loss"] <= before["loss"] + 1e-7 and after["init"].endswith("theta.json")
    assert torch.equal(read_theta_json(tmp_path / "a" / "theta.json", synth), torch.tensor(before["theta"]))
    other = tmp_path / "fm.json"
    fm = json.loads((tmp_path / "a" / "theta.json").read_text())
    fm["theta"] = [0.5] * 130
    fm["synth"] = "voicefm"
    other.write_text(json.dumps(fm))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    nulled = tmp_path / "nulled.json"
    nulled.write_text(json.dumps({**before, "params": None}))
    renamed = tmp_path / "renamed.json"
    renamed.write_text(json.dumps({**before, "params": before["params"][::-1]}))
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps({**before, "params": [{**before["params"][0], "value": 0.5}, *before["params"][1:]]}))
    short = tmp_path / "short.json"
    short.write_text(json.dumps({**before, "theta": before["theta"][:-1]}))
    alike = tmp_path / "alike.json"  # theta and value edited alike, as the first message said: human still differs
    alike.write_text(json.dumps({**before, "theta": [0.5, *before["theta"][1:]],
                                 "params": [{**before["params"][0], "value": 0.5}, *before["params"][1:]]}))
    dropped = tmp_path / "dropped.json"  # ... and with that entry's value and human dropped, as it says: accepted
    dropped.write_text(json.dumps({**before, "theta": [0.5, *before["theta"][1:]],
                                   "params": [{"name": before["params"][0]["name"]}, *before["params"][1:]]}))
    assert float(read_theta_json(dropped, synth)[0]) == 0.5
    human = tmp_path / "human.json"  # a value edited in human units, which --init would have ignored
    human.write_text(json.dumps({**before, "params": [{**before["params"][5], "human": 99.0}
                                                      if i == 5 else p for i, p in enumerate(before["params"])]}))
    nan = tmp_path / "nan.json"  # NaN in both lists: reported as out of range, not as an edit
    nan.write_text(json.dumps({**before, "theta": [float("nan"), *before["theta"][1:]],
                               "params": [{**before["params"][0], "value": float("nan")}, *before["params"][1:]]}))
    huge = tmp_path / "huge.json"  # an integer no float holds raised OverflowError (found from outside)
    huge.write_text(json.dumps({**before, "theta": [*before["theta"][:3], "HUGE", *before["theta"][4:]]})
                    .replace('"HUGE"', "1" + "0" * 400))
    deep = tmp_path / "deep.json"  # ... and nesting past the recursion limit, RecursionError
    deep.write_text("[" * 100_000 + "]" * 100_000)
    bom = tmp_path / "bom.json"  # an editor's byte-order mark: read as the same theta
    bom.write_bytes(b"\xef\xbb\xbf" + (tmp_path / "a" / "theta.json").read_bytes())
    assert torch.equal(read_theta_json(bom, synth), torch.tensor(before["theta"]))
    for init, expected in ((tmp_path / "none.json", "no such file"), (broken, "not a theta.json"),
                           (huge, 'no "theta" list of numbers'), (deep, "not a theta.json (nested too deeply)"),
                           (other, "holds a theta of voicefm (130 parameters), not of voice (78)"),
                           (nulled, '"params" must be the list'), (renamed, "parameter names are not voice's"),
                           (edited, f"{before['params'][0]['name']}'s \"value\" differs"), (short, "its theta has 77 values"),
                           (human, f"{before['params'][5]['name']}'s \"human\" value is not what"),
                           (alike, "drop that parameter's \"value\" and \"human\" fields"),
                           (nan, "theta must lie in [0, 1] (normalised values); entry 0")):
        bad = CliRunner().invoke(main, _match_args(path, tmp_path / "c", "--steps", "1", "--init", str(init)))
        assert bad.exit_code == 2 and expected in bad.output and "Traceback" not in bad.output, bad.output
    both = CliRunner().invoke(main, _match_args(path, tmp_path / "c", "--init", str(tmp_path / "a" / "theta.json"),
                                                "--candidates", "8"))
    assert both.exit_code == 2 and "give one" in both.output


def test_match_command_keeps_an_earlier_match_unless_told(tmp_path, synth, monkeypatch):
    """--out holding an earlier match: refused before any work (a rerun replaced a better result without a word),
    replaced with --overwrite (the earlier sounds go with the first snapshot, so a killed run leaves no mixture),
    continued with --init on its theta.json; --pitch-scans beyond what a run can make is said."""
    path, other = tmp_path / "t.wav", tmp_path / "u.wav"
    sf.write(path, synth(synth.random_params(1, seed=11))[0].numpy(), 16000)
    sf.write(other, synth(synth.random_params(1, seed=12))[0].numpy(), 16000)
    out = tmp_path / "o"
    assert CliRunner().invoke(main, _match_args(path, out, "--steps", "2")).exit_code == 0
    first = (out / "theta.json").read_text()
    refused = CliRunner().invoke(main, _match_args(other, out, "--steps", "2"))
    assert refused.exit_code == 2 and f"--out {out} holds an earlier match ({path}, loss" in refused.output
    assert "--overwrite" in refused.output and "matching" not in refused.output, refused.output
    assert (out / "theta.json").read_text() == first
    continued = CliRunner().invoke(main, _match_args(path, out, "--steps", "2", "--init", str(out / "theta.json")))
    assert continued.exit_code == 0 and "replacing" not in continued.output, continued.output
    replaced = CliRunner().invoke(main, _match_args(other, out, "--steps", "2", "--overwrite", "--pitch-scans", "5"))
    assert replaced.exit_code == 0 and f"note: replacing the match of {path} in {out}" in replaced.output
    assert "note: --pitch-scans 5: at most one a step, so 2 in 2 steps" in replaced.output, replaced.output
    doc = json.loads((out / "theta.json").read_text())
    assert doc["target"] == str(other) and doc["pitch_scans"] == doc["pitch_scans_done"] == 2
    # target.wav is the target as matched, in float: it scores the reported loss against match.wav
    match_wav, target_wav = (torch.from_numpy(sf.read(out / name, dtype="float32")[0]) for name in
                             ("match.wav", "target.wav"))
    assert sf.info(out / "target.wav").subtype == "FLOAT"
    assert abs(float(spectral_loss(match_wav[None], target_wav)) - doc["loss"]) < 0.02 * doc["loss"] + 1e-3
    fitted = CliRunner().invoke(main, _match_args(path, out, "--steps", "2", "--init", str(out / "theta.json"),
                                                  "--fit", "mixer", "--pitch-scans", "1"))
    assert "note: --pitch-scans 1: none of the --fit parameters sets a pitch, so no scan" in fitted.output
    # continuing the match of its own target.wav keeps that file (the earlier sounds' clean-up removed it)
    own = CliRunner().invoke(main, _match_args(out / "target.wav", out, "--steps", "1", "--init",
                                               str(out / "theta.json")))
    assert own.exit_code == 0 and (out / "target.wav").is_file(), own.output
    # a run that dies before its result leaves the earlier theta.json alone, without the earlier sounds beside it
    before = (out / "theta.json").read_text()

    def dies(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("doppel_torch.matching.cli.match", dies)
    died = CliRunner().invoke(main, _match_args(path, out, "--steps", "2", "--overwrite"))
    assert isinstance(died.exception, RuntimeError) and (out / "theta.json").read_text() == before
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["theta.json"]
    monkeypatch.undo()
    fifo = tmp_path / "fifo.json"  # --init from a pipe hung (found from outside)
    os.mkfifo(fifo)
    piped = CliRunner().invoke(main, _match_args(path, tmp_path / "p", "--steps", "1", "--init", str(fifo)))
    assert piped.exit_code == 2 and "is not a file" in piped.output, piped.output


def test_match_returns_what_it_found_when_interrupted_at_the_end(synth):
    """A Ctrl-C while the best theta is rendered, after the last step, returned nothing before (the command said
    'interrupted before the first step' and lost the whole match; found from outside)."""

    class Once(type(synth)):
        interrupted = False

        def __call__(self, theta, **kwargs):
            if theta.shape[0] == 1 and not Once.interrupted:  # the final render of the best restart
                Once.interrupted = True
                raise KeyboardInterrupt
            return super().__call__(theta, **kwargs)

    once = Once(duration=DURATION, backend=synth.backend)
    target = synth(synth.random_params(1, seed=5))[0]
    result = match(once, target, restarts=2, steps=2, pitch_scans=0)
    assert Once.interrupted and result.interrupted and result.steps == 2 and result.audio.shape == target.shape
    assert torch.equal(result.audio, synth(result.theta[None], noise=rng.noise(0, torch.zeros(1, dtype=torch.int64),
                                                                               synth.n_samples))[0])


def test_match_command_writes_the_best_so_far_when_terminated(tmp_path, synth):
    """A real process: SIGTERM during a long match stops it as Ctrl-C does (every file written, exit 143 = 128 + 15,
    interrupted: true); theta.json held the best so far before that (snapshots every SNAPSHOT_SECONDS, here 0.2)."""
    path = tmp_path / "t.wav"
    sf.write(path, synth(synth.random_params(1, seed=11))[0].numpy(), 16000)
    out = tmp_path / "o"
    code = ("import sys, doppel_torch.matching.cli as m; m.SNAPSHOT_SECONDS = 0.2; from doppel_torch.cli import main; "
            "main(sys.argv[1:])")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", code, *_match_args(path, out, "--steps", "100000")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        # a snapshot taken after the first scan (on a loaded machine the scan outlasts SNAPSHOT_SECONDS, so one taken
        # during it comes first: a SIGTERM then would stop the scan, not the descent this test is about)
        snapshot = {}
        while snapshot.get("steps", 0) < 1:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() else ""
            time.sleep(0.1)
            if (out / "theta.json").exists():
                snapshot = json.loads((out / "theta.json").read_text())
        assert snapshot["partial"] and len(snapshot["theta"]) == synth.num_params
        # what a killed run's continue line would have said: the first scan done, the second and its steps to go
        assert snapshot["pitch_scans_done"] == 1 and snapshot["continue"].startswith(
            f"doppel-torch match {path} --synth voice --duration {DURATION:g} --restarts 3 --pitch-scans 1 "
            f"--pitch-step 0.05 --steps {100000 - snapshot['steps']} --init {out / 'theta.json'}"), snapshot
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, output
    assert "interrupted after" in output and "Traceback" not in output, output
    doc = json.loads((out / "theta.json").read_text())
    assert doc["interrupted"] and "partial" not in doc and doc["loss"] <= snapshot["loss"]
    # the whole command: the options given (here --restarts 3), the pitch scans not done (the second one, at step
    # 50000: --init alone turns them off) with the finer pitch step that follows it, and the steps left (a run as
    # printed lost them before)
    assert doc["pitch_scans"] == 2 and doc["pitch_scans_done"] == 1 and doc["steps"] < 50000, doc
    assert (f"continue with: doppel-torch match {path} --synth voice --duration {DURATION:g} --restarts 3 "
            f"--pitch-scans 1 --pitch-step 0.05 --steps {100000 - doc['steps']} --init {out / 'theta.json'} "
            f"--out {out}") in output, output
    assert (out / "match.wav").exists() and (out / "match.png").exists()


def test_match_signals_stop_the_descent_but_not_the_writing():
    """The first Ctrl-C / SIGTERM raises KeyboardInterrupt (the descent stops); a further one, while `match` finishes
    and the files are written, is only noted (for the exit status), as is any once the command holds them; a signal
    the process started with ignored stays ignored."""
    before = signal.getsignal(signal.SIGTERM)
    with match_cli._Signals() as signals:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs between bytecodes; the sleep returns early
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
    assert signals.received == [signal.SIGTERM, signal.SIGINT]
    with match_cli._Signals() as signals:
        signals.hold()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
    assert signals.received == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGTERM) is before
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with match_cli._Signals():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def test_match_command_refuses_nan_options(tmp_path):
    path = tmp_path / "t.wav"
    sf.write(path, np.full(1000, 0.1), 16000)
    for option in ("--lr", "--pitch-step", "--duration"):
        bad = CliRunner().invoke(main, ["match", str(path), "--out", str(tmp_path / "o"), option, "nan"])
        assert bad.exit_code == 2 and "not NaN" in bad.output and option in bad.output, bad.output
    both = CliRunner().invoke(main, ["match", str(path), "--out", str(tmp_path / "o"), "--synth", "voicefm",
                                     "--patch", "examples/subtractive.py"])
    assert both.exit_code == 2 and "not both" in both.output, both.output
    few = CliRunner().invoke(main, ["match", str(path), "--out", str(tmp_path / "o"), "--candidates", "16"])
    assert few.exit_code == 2 and "give more than --restarts" in few.output, few.output
    assert not (tmp_path / "o").exists()


def test_match_init_starts_at_a_theta_near_the_cube_faces(synth):
    """A match drives parameters to within 1e-5 of a face; init keeps them (INIT_MARGIN = 1e-6 inside, not 1e-3),
    so a continued match starts at the loss its theta scores (it moved 1.71 -> 1.83 with the old margin)."""
    theta = synth.random_params(1, seed=5)[0]
    target = _target(synth, synth.random_params(1, seed=6)[0], seed=0)
    theta[:6] = torch.tensor([1e-5, 3e-4, 0.9995, 1.0 - 2e-5, 0.0, 1.0])
    noise = rng.noise(0, torch.zeros(1, dtype=torch.int64), synth.n_samples)
    own = float(spectral_loss(synth(theta.clamp(match_search.INIT_MARGIN, 1 - match_search.INIT_MARGIN)[None], noise=noise),
                              target))
    result = match(synth, target, restarts=2, steps=0, init=matching.starts_around(theta, 2, seed=0))
    assert abs(float(result.initial_losses[0]) - own) < 1e-6 * own, (float(result.initial_losses[0]), own)
    assert (result.restart_thetas[0] - theta).abs().max() <= 2e-6  # the margin and float32 logit rounding


def test_match_command_refuses_an_unusable_device_or_out_folder(tmp_path, synth, monkeypatch):
    """--device cuda without CUDA, --device meta, and an --out folder that takes no file are one line each, before
    any compute; a result that cannot be written says so and prints the best theta."""
    path = tmp_path / "t.wav"
    sf.write(path, synth(synth.random_params(1, seed=11))[0].numpy(), 16000)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device, expected in (("cuda", "CUDA is not available"), ("meta", "not a device this command runs on")):
        bad = CliRunner().invoke(main, _match_args(path, tmp_path / "o", "--steps", "1", "--device", device))
        assert bad.exit_code == 2 and expected in bad.output and "Traceback" not in bad.output, bad.output

    def refuse(self, *args, **kwargs):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(Path, "write_bytes", refuse)
    bad = CliRunner().invoke(main, _match_args(path, tmp_path / "o", "--steps", "1"))
    assert bad.exit_code == 1 and "cannot write in --out" in bad.output and "best spectral" not in bad.output, bad.output
    monkeypatch.undo()
    (tmp_path / "p" / "match.png").mkdir(parents=True)  # a folder where the picture goes: refused before any work
    bad = CliRunner().invoke(main, _match_args(path, tmp_path / "p", "--steps", "1"))
    assert bad.exit_code == 2 and "match.png there is not a file" in bad.output and "matching" not in bad.output
    assert "Traceback" not in bad.output, bad.output

    def full(*args, **kwargs):  # a disk that fills up while the result is written
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("doppel_torch.viz.write_wav", full)
    bad = CliRunner().invoke(main, _match_args(path, tmp_path / "q", "--steps", "1"))
    assert bad.exit_code == 1 and "cannot write the result" in bad.output and "the best theta" in bad.output
    assert "No space left on device" in bad.output and "Traceback" not in bad.output, bad.output


def test_fit_columns_by_name_module_and_pattern():
    synth = VoiceSynth(duration=0.1)
    names = synth.param_names

    def named(*patterns):
        return [names[j] for j in matching.fit_columns(synth, list(patterns))]

    assert named("mixer") == ["mixer/level[0]", "mixer/level[1]", "mixer/level[2]"]
    assert named("mixer/level[1]") == ["mixer/level[1]"]  # a full name as it is, brackets and all
    assert named("adsr_?/attack", "keyboard/midi_f0") == ["adsr_1/attack", "adsr_2/attack", "keyboard/midi_f0"]
    assert len(named("lfo_*")) == 36 and named("lfo_1/*") == [n for n in names if n.startswith("lfo_1/")]
    for bad, expected in ((["adsr3"], "names no parameter of voice"), (["mixer/level"], "did you mean 'mixer/level[*]'"),
                          ("mixer", r"not one string: fit=\['mixer'\]"), ([], "fit=None fits every parameter"),
                          ([""], "an empty pattern"), ([48], "strings")):
        with pytest.raises(ValueError, match=expected):
            matching.fit_columns(synth, bad)
    assert matching.describe_columns(synth, matching.fit_columns(synth, ["mixer", "adsr_1/attack"])) == (
        "adsr_1/attack, mixer")
    assert matching.describe_columns(synth, range(synth.num_params)) == "all 78"
    from doppel_torch.spec.load import load_patch
    from doppel_torch.synths.base import Synth

    own = Synth(load_patch(str(Path(__file__).resolve().parents[1] / "examples" / "subtractive.py")), duration=0.05)
    with pytest.raises(ValueError, match=r"`doppel-torch info --patch FILE.py \(your patch's file\)` lists"):
        matching.fit_columns(own, ["adsr3"])  # a user's patch: `info --synth subtractive` is no command


def _fast_synth():
    """The cpu backend where it loads (4x the torch backend's speed on a match), else the reference."""
    return VoiceSynth(duration=DURATION, backend=default_backend())


def test_match_fit_holds_the_other_columns_exactly():
    synth = _fast_synth()
    theta = synth.random_params(1, seed=1000)[0]
    columns = matching.fit_columns(synth, ["adsr_1"])
    init = matching.starts_refitting(theta, columns, 3, seed=0)
    assert torch.equal(init[0], theta)
    others = [j for j in range(synth.num_params) if j not in columns]
    assert torch.equal(init[:, others], init[:1, others].expand(3, -1)) and not torch.equal(init[1], init[2])
    init[:, others[:2]] = torch.tensor([0.0, 1.0])  # held on the cube's faces: kept there, not clamped inside
    result = match(synth, _target(synth, theta), restarts=3, steps=5, seed=0, init=init, fit=["adsr_1"])
    assert torch.equal(result.restart_thetas[:, others], init[:, others])
    assert not torch.equal(result.restart_thetas[1:, columns], init[1:, columns])
    with pytest.raises(ValueError, match="give them in init"):
        match(synth, _target(synth, theta), restarts=2, steps=1, fit=["adsr_1"])
    with pytest.raises(ValueError, match="one theta: starts_refitting"):
        match(synth, _target(synth, theta), restarts=2, steps=1, fit=["adsr_1"], init=theta)
    with pytest.raises(ValueError, match="pass one of them"):
        match(synth, _target(synth, theta), restarts=3, steps=1, fit=["adsr_1"], init=init, candidates=8)
    with pytest.raises(ValueError, match="column indices"):
        matching.starts_refitting(theta, ["mixer"], 3, seed=0)


def test_match_fit_finds_the_mixer_levels_of_a_known_patch():
    """The 3 mixer levels from random values, the other 75 parameters the target's: 200 steps find them (measured on
    this target: 8 of 8 random restarts at 2e-5 to 2e-3; after 100 steps 3 of 8), where the same starts with every
    column free leave the pitch valleys (Adam moves every column by ~lr a step) and end far above."""
    synth = _fast_synth()
    theta = synth.random_params(8, seed=1000)[2]
    init = matching.starts_refitting(theta, matching.fit_columns(synth, ["mixer"]), 5, seed=0)[1:]
    target = _target(synth, theta)
    fitted = match(synth, target, restarts=4, steps=200, seed=0, init=init, fit=["mixer"])
    free = match(synth, target, restarts=4, steps=200, seed=0, init=init)
    assert fitted.loss < 0.01 and fitted.loss < 0.01 * float(fitted.initial_losses.min()), fitted.restart_losses
    assert free.loss > 10 * fitted.loss, (free.loss, fitted.loss)


def test_match_command_fits_some_parameters_of_a_theta_json(tmp_path, synth):
    """--fit with --init: theta.json keeps every other parameter at --init's value; without --init, or with a pattern
    that names nothing, one line."""
    path = tmp_path / "t.wav"
    theta = synth.random_params(1, seed=11)[0]
    sf.write(path, _target(synth, theta).numpy(), 16000)
    first = CliRunner().invoke(main, _match_args(path, tmp_path / "a", "--steps", "1"))
    assert first.exit_code == 0, first.output
    init = tmp_path / "a" / "theta.json"
    fitted = CliRunner().invoke(main, _match_args(path, tmp_path / "b", "--steps", "3", "--init", str(init),
                                                  "--fit", "mixer", "--fit", "adsr_1/attack"))
    assert fitted.exit_code == 0, fitted.output
    assert "fitting 4 of the 78 parameters (adsr_1/attack, mixer)" in fitted.output, fitted.output
    before, after = (json.loads(p.read_text()) for p in (init, tmp_path / "b" / "theta.json"))
    moved = {p["name"] for p, q in zip(before["params"], after["params"]) if p["value"] != q["value"]}
    assert moved and moved <= {"mixer/level[0]", "mixer/level[1]", "mixer/level[2]", "adsr_1/attack"}, moved
    assert after["fit"] == ["mixer", "adsr_1/attack"]
    for extra, expected in ((["--fit", "mixer"], "--fit keeps the other parameters"),
                            (["--init", str(init), "--fit", "adsr3"], "'adsr3' names no parameter of voice"),
                            (["--init", str(init), "--fit", ""], "an empty pattern names no parameter")):
        bad = CliRunner().invoke(main, _match_args(path, tmp_path / "c", "--steps", "1", *extra))
        assert bad.exit_code == 2 and expected in bad.output and "Traceback" not in bad.output, bad.output


def test_bad_fft_sizes_and_init_are_one_line_errors(synth):
    """spectral_loss / match: fft_sizes other than a non-empty sequence of integers >= 4 (a raw min() or STFT error
    before), and an init outside [0, 1] (with fit= it came back as an unrenderable theta), each a ValueError."""
    audio, target = torch.randn(2, 800), torch.randn(800)
    for sizes in ((), (0,), (3,), (-64,), (64.0,), ("64",), 64, "64"):
        with pytest.raises(ValueError, match="fft_sizes must be a non-empty sequence of integers >= 4"):
            spectral_loss(audio, target, fft_sizes=sizes)
    for sizes in ([np.int64(64), 128], np.array([64, 128]), torch.tensor([64, 128])):  # arrays of sizes too
        assert torch.isfinite(spectral_loss(audio, target, fft_sizes=sizes)).all()
    target = synth(synth.random_params(1, seed=3))[0]
    with pytest.raises(ValueError, match=r"init must lie in \[0, 1\]"):
        match(synth, target, restarts=2, steps=1, fit=["mixer"], init=torch.full((2, synth.num_params), 2.0),
              progress=False)


def test_match_command_holds_its_out_folder_and_writes_a_loud_target_unclipped(tmp_path, synth):
    """One match writes an --out at a time (another run holding it: one line, nothing written), and a target beyond
    full scale is written as float, as matched (16-bit PCM clipped it)."""
    from doppel_torch import runlock

    path = tmp_path / "loud.wav"
    sf.write(path, 4.0 * synth(synth.random_params(1, seed=11))[0].numpy(), 16000, subtype="FLOAT")
    out = tmp_path / "o"
    code = ("import sys, time; from doppel_torch.runlock import try_lock; lock = try_lock(sys.argv[1]); "
            "print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    try:
        assert holder.stdout.readline().strip() == "held"
        refused = CliRunner().invoke(main, _match_args(path, out, "--steps", "1"))
        assert refused.exit_code == 2 and "is being written by another run" in refused.output, refused.output
        assert not (out / "theta.json").exists()
    finally:
        holder.kill()
        holder.wait()
    done = CliRunner().invoke(main, _match_args(path, out, "--steps", "1"))
    assert done.exit_code == 0, done.output
    written, _ = sf.read(out / "target.wav", dtype="float32")
    assert sf.info(str(out / "target.wav")).subtype == "FLOAT" and np.abs(written).max() > 1.5
    assert not runlock.is_locked(out) and not list(out.glob(".*.tmp"))


def test_a_wav_that_cannot_be_written_leaves_no_file(tmp_path, monkeypatch):
    """viz.write_wav: a failed write (libsndfile's "System error." on a full disk) is an OSError and leaves neither
    a cut wav nor its temporary (match printed a traceback and left a 12 kB target.wav)."""
    from doppel_torch import viz

    def full(path, *args, **kwargs):
        Path(path).write_bytes(b"RIFF")  # what a full disk leaves
        raise sf.LibsndfileError(0, "System error.")

    monkeypatch.setattr(sf, "write", full)
    with pytest.raises(OSError, match="is the disk full"):
        viz.write_wav(tmp_path / "x.wav", torch.zeros(100), 16000)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "theta.json").mkdir()  # theta.json's own temporary goes too (12 kB of it stayed)
    synth = VoiceSynth(duration=DURATION, backend="torch")
    with pytest.raises(OSError):
        matching.write_theta_json(tmp_path / "theta.json", synth, synth.random_params(1)[0], 1.0, 1)
    assert [p.name for p in tmp_path.iterdir()] == ["theta.json"]
