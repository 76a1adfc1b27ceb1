"""Sound matching: fit a synth's theta to a target sound by gradient descent on a multi-resolution spectral loss.

    from doppel_torch import VoiceSynth, default_backend, match

    synth = VoiceSynth(duration=0.5, backend=default_backend())   # the fastest differentiable backend here
    result = match(synth, target, restarts=16, steps=200, seed=0)  # target: (N,) at synth.sample_rate
    result.theta, result.loss, result.audio                        # best theta (m,), its loss, its render (N,)

Every restart is one row of one batch: theta = sigmoid(logits), so it stays inside (0, 1) without projection,
and Adam moves all restarts at once (the loss is a sum over rows, so each row gets its own gradient). Starting
points are keyed by `seed` (`rng.Stream.MATCH`); every restart renders with one noise row keyed by (seed, 0), the
row that `synth(theta, seed=seed)` draws for sound index 0. Each restart keeps the best theta it has visited.

`doppel-torch match TARGET.wav` (`match_command`, below) reads, resamples and pads the target, runs `match` with a
progress bar and writes theta.json (names, normalised and human values), match.wav and match.png.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import math
import numbers
import operator
import shlex
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import click
import torch

from doppel_torch import backends, rng, runlock
from doppel_torch.backends.cpu import spectral as native_spectral
from doppel_torch.delta.spec import param_groups
from doppel_torch.files import write_text_whole
from doppel_torch.synths.base import BACKENDS, SYNTHS

COSINE_FLOOR = 0.01  # the learning rate decays from lr to lr * COSINE_FLOOR over the steps (cosine)
FFT_SIZES = (2048, 1024, 512, 256, 128, 64)
DEFAULT_DURATION = 1.0  # `doppel-torch match` matches the target's first seconds, at most this many by default
MIN_DURATION = 0.05  # and at least this many (a shorter file is padded)
AROUND_SPREAD = 0.01  # starts_around: the restarts' spread around a given theta (measured there)
SNAPSHOT_SECONDS = 10.0  # `doppel-torch match` rewrites theta.json with the best so far at most this often
INIT_MARGIN = 1e-6  # given starts are kept this far inside the cube (finite logits; float32 holds 1 - 1e-6)
LOG_EPS = 1e-5  # magnitude floor of the log term: -100 dB re a full-scale bin, below 16-bit quantisation
PITCH_SCANS = 2  # match: grid scans of the pitch columns, each opening an equal share of the steps (see match)
SCAN_GRID, SCAN_FINE = 64, 16  # a scan's coarse grid over a column's [0, 1], then its fine grid of +-1 coarse step
SCAN_FFT_SIZES = (2048, 256)  # a scan scores its candidates with these resolutions only (_ScanTarget)
SCANNED_PITCH_STEP = 0.05  # the pitch columns' step after a later scan (at most match's pitch_step)
SCAN_CHUNK = 256  # sounds rendered and scored at once in a scan
# a scan's frames overlap by half, not three quarters: forward only, that took 2 scans of a 1 s match from 8.4 s to
# 2.6 s with the same results (voice, 0.25 s, 20 targets: mean best 0.650 vs 0.664; frames without overlap 0.643)
SCAN_HOP_DIVISOR = 2


def default_backend(device: torch.device | str = "cpu") -> str:
    """The fastest backend that is differentiable on `device` (`backends.fastest`): "cpu" (the fused native backward)
    on the CPU, "triton" on CUDA, "torch" where a backend cannot load (no compiler, no Triton)."""
    return backends.fastest(device, differentiable=True)


@functools.lru_cache(maxsize=64)
def _window(n_fft: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """torch.hann_window(n_fft), made once per size, dtype and device (making it was ~3 % of a loss call)."""
    return torch.hann_window(n_fft, dtype=dtype, device=device)


def _frames_spectrum(audio: torch.Tensor, n_fft: int, hop: int | None = None) -> torch.Tensor:
    """The one-sided STFT (B, frames, n_fft // 2 + 1) of torch.stft(center=True, pad_mode="constant", Hann window,
    hop n_fft / 4 unless given), frames first."""
    window = _window(n_fft, audio.dtype, audio.device)
    padded = torch.nn.functional.pad(audio, (n_fft // 2, n_fft // 2))
    return torch.fft.rfft(padded.unfold(-1, n_fft, hop or n_fft // 4) * window, dim=-1)


def _abs(spectrum: torch.Tensor) -> torch.Tensor:
    """|S| as sqrt(re^2 + im^2) (re * re + im * im in one addcmul: 2.3x the speed of two squares and an add over the
    strided views; 4x faster than complex abs, hypot, on the CPU, and within 1 ulp of it for audio)."""
    re, im = spectrum.real, spectrum.imag
    return torch.addcmul(re * re, im, im).sqrt_()


def _magnitudes(audio: torch.Tensor, n_fft: int) -> torch.Tensor:
    return _abs(_frames_spectrum(audio, n_fft))


def _terms(magnitude, target, target_norm, log_target):
    """One resolution's (B,) spectral convergence ||S - T|| / ||T|| and mean |log(S + eps) - log(T + eps)|, with the
    differences they are made of (the hand-written backward reuses them)."""
    diff = magnitude - target
    diff_norm = diff.flatten(1).norm(dim=1)
    log_diff = torch.log(magnitude + LOG_EPS).sub_(log_target)
    log_l1 = torch.linalg.vector_norm(log_diff.flatten(1), ord=1, dim=1) / log_diff[0].numel()
    return diff_norm / target_norm, log_l1, diff, diff_norm, log_diff


class _ResolutionLoss(torch.autograd.Function):
    """One resolution's spectral convergence and log-magnitude L1 per sound, (B,) and (B,), with a hand-written
    backward: d loss / d S = S (w_c d_conv + w_l d_log), two real factors formed in the forward and two per-sound
    weights in the backward (the magnitude's adjoint S / |S| folded in: no complex sgn), then the one-sided FFT's
    adjoint (an unnormalised irfft with the inner bins halved) and the overlapping frames' (an overlap-add of four
    hop-sized slices). On CPU tensors the per-bin work is three native passes (backends/cpu/spectral.py) instead of
    ~25 torch ones; elsewhere (CUDA), or without a compiler, torch ops of the same formula. Autograd through
    torch.stft took 2.5-3x as long as the torch version (a complex FFT of full length for the rfft's adjoint, an
    index_add_ for the strided frames, complex sgn, padding copies). Equal to autograd of the same formula
    (tests/test_matching.py). First-order (once_differentiable: a create_graph backward through it says so);
    SpectralTarget.loss takes autograd instead for a target that requires grad and for FFT sizes that are not
    multiples of 4."""

    @staticmethod
    def forward(ctx, audio, n_fft, target, target_norm, log_target):
        spectrum = _frames_spectrum(audio, n_fft)
        n = spectrum[0].numel()
        if _native(spectrum):
            diff_sq, log_abs, d_conv, d_log = native_spectral.terms(spectrum, target, LOG_EPS)
            diff_norm = diff_sq.sqrt()
            convergence = (diff_norm / target_norm).to(audio.dtype)
            log_l1 = (log_abs / n).to(audio.dtype)
        else:
            magnitude = _abs(spectrum)
            convergence, log_l1, diff, diff_norm, log_diff = _terms(magnitude, target, target_norm, log_target)
            # d |S| / d S = S / |S|: both factors are saved divided by |S| (0 where S = 0, as autograd's sgn)
            inverse = magnitude.reciprocal().nan_to_num_(posinf=0.0)
            d_conv = diff.mul_(inverse)
            d_log = log_diff.sign_().mul_(inverse).div_(magnitude.add_(LOG_EPS))
        # d convergence / d |S| = diff / (|diff| |T|) (0 where diff is 0), d log_l1 / d |S| = sign / ((|S| + eps) n)
        ctx.save_for_backward(spectrum, d_conv, d_log, 1.0 / (diff_norm * target_norm).clamp_min(1e-30))
        ctx.n_fft, ctx.n_samples, ctx.n_bins = n_fft, audio.shape[-1], n
        return convergence, log_l1

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_convergence, g_log_l1):
        spectrum, d_conv, d_log, conv_weight = ctx.saved_tensors
        n_fft, n = ctx.n_fft, ctx.n_samples
        w_conv, w_log = g_convergence * conv_weight, g_log_l1 / ctx.n_bins
        window = _window(n_fft, d_conv.dtype, d_conv.device)
        if _native(spectrum):
            g_spec = native_spectral.grad(spectrum, d_conv, d_log, w_conv, w_log)
            g_frames = torch.fft.irfft(g_spec, n=n_fft, dim=-1, norm="forward")
            return native_spectral.overlap_add(g_frames, window, n), None, None, None, None
        # out of place: the saved tensors stay as saved (a retained graph may be differentiated again)
        w_conv, w_log = w_conv.to(d_conv.dtype), w_log.to(d_conv.dtype)
        factor = (d_conv * w_conv[:, None, None]).addcmul_(d_log, w_log[:, None, None])
        factor[..., 1:-1] *= 0.5  # the rfft's adjoint: inner bins count twice in the full spectrum
        g_frames = torch.fft.irfft(spectrum * factor, n=n_fft, dim=-1, norm="forward")
        g_frames *= window
        # overlap-add: frame t's quarter c lands on hop-slice t + c of the padded signal
        batch, frames = g_frames.shape[:2]
        hop = n_fft // 4
        quarters = g_frames.view(batch, frames, 4, hop)
        padded = g_frames.new_zeros(batch, frames + 3, hop)
        for c in range(4):
            padded[:, c : c + frames] += quarters[:, :, c]
        g_audio = padded.flatten(1)[:, n_fft // 2 : n_fft // 2 + n]
        return g_audio, None, None, None, None


NATIVE_LOSS = True  # the per-bin passes of CPU losses in native code where it loads (tests compare both paths)


def _native(spectrum: torch.Tensor) -> bool:
    return NATIVE_LOSS and spectrum.device.type == "cpu" and native_spectral.available()


def _sizes(fft_sizes: Sequence[int], n_samples: int) -> list[int]:
    """The FFT sizes that fit n_samples (the smallest alone if none does); ValueError in one line for a bad list."""
    given = fft_sizes
    if hasattr(fft_sizes, "tolist"):  # a tensor or numpy array of sizes
        fft_sizes = fft_sizes.tolist()
    if isinstance(fft_sizes, (str, bytes)) or not isinstance(fft_sizes, Iterable):
        fft_sizes = None
    else:
        fft_sizes = list(fft_sizes)
    if not fft_sizes or any(isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 4 for n in fft_sizes):
        raise ValueError(f"fft_sizes must be a non-empty sequence of integers >= 4 (window lengths in samples, e.g. "
                         f"{tuple(FFT_SIZES)}), got {given!r}")
    fft_sizes = [int(n) for n in fft_sizes]
    return [n for n in fft_sizes if n <= n_samples] or [min(fft_sizes)]


def _target_terms(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A target's magnitudes (1 or B, frames, bins), their norm per sound and their log: what each loss term reads."""
    return t, t.flatten(1).norm(dim=1).clamp_min(1e-8), torch.log(t + LOG_EPS)


class SpectralTarget:
    """The target's magnitude spectra at every resolution, computed once: `loss(audio)` scores a batch against them.
    `match` keeps one per run, so a step computes the STFTs of its restarts only."""

    def __init__(self, target: torch.Tensor, fft_sizes: Sequence[int] = FFT_SIZES):
        if target.dim() not in (1, 2):
            raise ValueError(f"target must be (samples,) or (batch, samples), got {tuple(target.shape)}")
        self.target = target if target.dim() == 2 else target[None]
        self.sizes = _sizes(fft_sizes, target.shape[-1])
        self.spectra = []
        for n_fft in self.sizes:
            spectrum = _frames_spectrum(self.target, n_fft)
            # the native loss's own magnitudes where it runs: a sound then scores exactly 0 against itself
            native = _native(spectrum) and not target.requires_grad
            t = native_spectral.magnitude(spectrum) if native else _abs(spectrum)
            self.spectra.append(_target_terms(t))

    def loss(self, audio: torch.Tensor) -> torch.Tensor:
        """audio (B, N) -> (B,) spectral loss against the target (one row, broadcast, or B rows)."""
        if audio.dim() != 2 or audio.shape[1] != self.target.shape[1] or self.target.shape[0] not in (1, audio.shape[0]):
            raise ValueError(f"target must be ({audio.shape[-1]},) or {tuple(audio.shape)}, got "
                             f"{tuple(self.target.shape)} (audio: {tuple(audio.shape)})")
        if audio.shape[0] == 0:  # torch's FFTs refuse an empty batch; the loss of no sounds is (0,), still in the graph
            return audio.sum(dim=1)
        total = audio.new_zeros(audio.shape[0])
        for n_fft, (t, t_norm, log_t) in zip(self.sizes, self.spectra):
            t, t_norm, log_t = t.to(audio.dtype), t_norm.to(audio.dtype), log_t.to(audio.dtype)
            if n_fft % 4 == 0 and not t.requires_grad:
                convergence, log_l1 = _ResolutionLoss.apply(audio, n_fft, t, t_norm, log_t)
            else:  # a target with a gradient, or a size the overlap-add does not cover: autograd of the same formula
                convergence, log_l1 = _terms(_magnitudes(audio, n_fft), t, t_norm, log_t)[:2]
            total = total + convergence + log_l1
        return total / len(self.sizes)


class _ScanTarget:
    """`SpectralTarget`'s loss, forward only, on SCAN_FFT_SIZES with frames every n_fft / SCAN_HOP_DIVISOR: what a
    pitch scan scores its candidates with (measured: see SCAN_HOP_DIVISOR)."""

    def __init__(self, target: torch.Tensor):
        self.sizes = _sizes(SCAN_FFT_SIZES, target.shape[-1])
        self.spectra = []
        for n_fft in self.sizes:
            t = _abs(_frames_spectrum(target[None], n_fft, n_fft // SCAN_HOP_DIVISOR))
            self.spectra.append(_target_terms(t))

    def loss(self, audio: torch.Tensor) -> torch.Tensor:
        total = audio.new_zeros(audio.shape[0])
        for n_fft, (t, t_norm, log_t) in zip(self.sizes, self.spectra):
            magnitude = _abs(_frames_spectrum(audio, n_fft, n_fft // SCAN_HOP_DIVISOR))
            convergence, log_l1 = _terms(magnitude, t, t_norm, log_t)[:2]
            total += convergence + log_l1
        return total / len(self.sizes)


def spectral_loss(audio: torch.Tensor, target: torch.Tensor, fft_sizes: Sequence[int] = FFT_SIZES) -> torch.Tensor:
    """Multi-resolution STFT loss per sound: audio (B, N), target (N,) or (B, N) -> (B,), 0 for identical sounds.

    Mean over the FFT sizes (Hann window, hop n_fft / 4; sizes above N are skipped) of spectral convergence
    ||S - T||_F / ||T||_F plus the mean absolute difference of log(|S| + 1e-5) and log(|T| + 1e-5) (the DDSP /
    Parallel WaveGAN loss).
    """
    if audio.dim() != 2:
        raise ValueError(f"audio must be (batch, samples), got {tuple(audio.shape)}")
    return SpectralTarget(target.to(audio.dtype), fft_sizes).loss(audio)


@dataclass
class MatchResult:
    """What `match` found. theta (m,) and audio (N,) are the best restart's; per-restart tensors are (restarts,)."""

    theta: torch.Tensor
    loss: float
    audio: torch.Tensor
    restart_losses: torch.Tensor  # best loss each restart reached
    initial_losses: torch.Tensor  # loss at each starting point
    restart_thetas: torch.Tensor  # (restarts, m): each restart's best theta
    best_restart: int
    history: list[float] = field(default_factory=list)  # best loss over all restarts after each step
    steps: int = 0  # steps taken (fewer than asked when interrupted)
    pitch_scans: int = 0  # pitch scans finished (fewer than asked when interrupted)
    interrupted: bool = False
    seconds: float = 0.0


def starting_points(num_params: int, restarts: int, seed: int, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """theta ~ U(0, 1)^m of each restart, keyed by (seed, restart): (restarts, m), kept 1e-3 inside the cube."""
    index = torch.arange(restarts, dtype=torch.int64, device=device)
    return rng.uniform(seed, rng.Stream.MATCH, index, num_params, dtype=dtype).clamp(1e-3, 1.0 - 1e-3)


def starts_around(theta: torch.Tensor, restarts: int, seed: int, spread: float = AROUND_SPREAD) -> torch.Tensor:
    """Restarts around one theta (m,), to continue a match from its result: row 0 is theta itself, rows 1.. theta +
    spread * z (z ~ N(0, 1) keyed by (seed, restart), `rng.Stream.MATCH_AROUND`), clipped INIT_MARGIN inside the
    cube (a match drives some parameters to within 1e-5 of a face; clipping them 1e-3 inside moved a continued
    match's start from its saved loss 1.71 to 1.83).
    Measured (voice, 0.25 s, 6 targets: 200 steps from random starts, then 200 more from their best with 16 restarts):
    spread 0.01 lowers the best loss to a median 0.86 of the first run's, spread 0 (16 copies, one path) to 0.91,
    and 400 steps from random starts in one run to 0.91; lr 0.01 / 0.003 instead of 0.05: 0.95 / 0.97."""
    if theta.dim() != 1:
        raise ValueError(f"theta must be (m,), got {tuple(theta.shape)}")
    index = torch.arange(restarts, dtype=torch.int64, device=theta.device)
    z = rng.normal(seed, rng.Stream.MATCH_AROUND, index, theta.shape[0], dtype=theta.dtype)
    z[0] = 0.0
    return (theta + spread * z).clamp(INIT_MARGIN, 1.0 - INIT_MARGIN)


def pitch_columns(synth) -> list[int]:
    """The columns of theta that set an oscillator's pitch: the delta spec's "pitch" group (keyboard notes,
    tunings) and the VCOs' pitch modulation depths (an FM operator's mod_depth is its modulation index, not a pitch),
    in theta's order."""
    depths = {f"{o.name}/mod_depth" for o in synth.patch.oscillators if o.kind != "fm"}
    return sorted(set(param_groups(synth)["pitch"]) | {j for j, n in enumerate(synth.param_names) if n in depths})


def scan_columns(synth) -> list[int]:
    """The pitch columns in the order a scan visits them: the pitch modulation depths first (a wrong depth sweeps
    the pitch, so no note fits until it is right), then the notes and tunings in theta's order."""
    names = synth.param_names
    if not synth.patch.oscillators:  # a keyboard note without an oscillator changes no sound
        return []
    columns = pitch_columns(synth)
    return sorted(columns, key=lambda j: (not names[j].endswith("/mod_depth"), j))


def _planned_scans(synth, pitch_scans: int | None, init_given: bool, fitted: Sequence[int] | None,
                   steps: int) -> tuple[int, list[int]]:
    """The pitch scans a match makes and the columns they set: None is PITCH_SCANS from random starts and 0 from
    given ones; at most one a step; none where no column can be scanned (`scan_columns`, those among `fitted`
    where only some are fitted)."""
    if pitch_scans is None:
        pitch_scans = PITCH_SCANS if not init_given else 0
    columns = [j for j in scan_columns(synth) if fitted is None or j in fitted]
    pitch_scans = min(pitch_scans, steps) if columns else 0
    return pitch_scans, columns if pitch_scans else []


def scan_pitch(losses_of: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor, columns: Sequence[int],
               bar=None, tick: Callable[[int], None] | None = None) -> torch.Tensor:
    """Each row of theta (R, m) with its `columns` set one at a time, in order, to the value of a grid that scores
    lowest under `losses_of` (a batch of thetas -> (batch,) losses; gradients off): SCAN_GRID values evenly over
    [0.001, 0.999], then SCAN_FINE over +-1 step around the best of them. A row keeps its value where no grid value
    scores lower. Returns the new thetas (R, m); `bar` (tqdm-like) is advanced by the thetas scored, `tick` gets
    the number of columns done after each chunk of SCAN_CHUNK thetas scored.

    Gradient descent does not find a pitch: its valleys are hundredths of a semitone wide (README, Sound matching),
    so a start outside one sees no slope towards it; a grid over the column's whole range lands nearer than the
    descent gets (what that is worth: `match`'s pitch_scans)."""
    if not isinstance(theta, torch.Tensor) or theta.dim() != 2 or not theta.is_floating_point():
        shape = tuple(theta.shape) if isinstance(theta, torch.Tensor) else type(theta).__name__
        raise ValueError(f"theta must be a floating-point (restarts, m) tensor of normalised parameters, got {shape}"
                         + (f" {theta.dtype}" if isinstance(theta, torch.Tensor) else ""))
    m = theta.shape[1]
    try:
        columns = [_column(j) for j in columns]
    except TypeError:
        columns = None
    if columns is None or not all(0 <= j < m for j in columns):
        raise ValueError(f"columns must be column indices in [0, {m}) (scan_columns(synth) gives the pitch ones)")
    if not bool(((theta >= 0) & (theta <= 1)).all()):
        raise ValueError("theta must lie in [0, 1] (normalised parameters, as synth.random_params gives), with no NaN")
    theta = theta.detach().clone()
    rows = theta.shape[0]
    grid = torch.linspace(1e-3, 1.0 - 1e-3, SCAN_GRID, dtype=theta.dtype, device=theta.device)
    width = float(grid[1] - grid[0])
    offsets = torch.linspace(-width, width, SCAN_FINE, dtype=theta.dtype, device=theta.device)
    index = torch.arange(rows, device=theta.device)

    done = 0

    def score(values: torch.Tensor, column: int) -> torch.Tensor:  # values (R, K) -> losses (R, K)
        candidates = theta.repeat_interleave(values.shape[1], 0)
        candidates[:, column] = values.flatten()
        losses = []
        for chunk in candidates.split(SCAN_CHUNK):
            losses.append(losses_of(chunk))
            if bar is not None:
                bar.update(chunk.shape[0])
            if tick is not None:
                tick(done)
        return torch.nan_to_num(torch.cat(losses), nan=math.inf).view(values.shape)

    with torch.no_grad():
        current = torch.nan_to_num(torch.cat([losses_of(chunk) for chunk in theta.split(SCAN_CHUNK)]), nan=math.inf)
        for column in columns:
            coarse = grid.expand(rows, -1)
            best, at = score(coarse, column).min(dim=1)
            fine = (grid[at][:, None] + offsets).clamp(1e-3, 1.0 - 1e-3)
            fine_best, fine_at = score(fine, column).min(dim=1)
            value = torch.where(fine_best < best, fine[index, fine_at], grid[at])
            best = torch.minimum(best, fine_best)
            better = best < current
            theta[:, column] = torch.where(better, value, theta[:, column])
            current = torch.where(better, best, current)
            done += 1
    return theta


def fit_columns(synth, patterns: Sequence[str]) -> list[int]:
    """The columns of theta that `patterns` name, in theta's order: a parameter's full name as written
    ("mixer/level[0]"), a module ("adsr_1": all its parameters) or a shell pattern of either ("adsr_*", "lfo_1/*";
    fnmatch, so "[...]" in a pattern is a character class). ValueError for a pattern that names nothing, saying what
    the names look like."""
    if isinstance(patterns, str):
        raise ValueError(f"fit must be a list of parameter names or patterns, not one string: fit=[{patterns!r}]")
    patterns = list(patterns)
    if not patterns:
        raise ValueError("fit names no parameter: give at least one name or pattern (fit=None fits every parameter)")
    if not all(isinstance(p, str) for p in patterns):
        raise ValueError(f"fit must be a list of parameter names or patterns (strings, e.g. ['adsr_1', 'mixer/*']), "
                         f"got {patterns!r}")
    names = synth.param_names
    modules = [spec.module for spec in synth.param_specs]

    def hits(pattern: str) -> set[int]:
        return {j for j, (name, module) in enumerate(zip(names, modules))
                if pattern in (name, module) or fnmatch.fnmatchcase(name, pattern)
                or fnmatch.fnmatchcase(module, pattern)}

    columns: set[int] = set()
    for pattern in patterns:
        if not pattern.strip():
            raise ValueError("fit: an empty pattern names no parameter (give a name such as mixer or 'adsr_*')")
        found = hits(pattern)
        if not found:
            hint = f"; did you mean {pattern + '*'!r}?" if hits(pattern + "*") else ""
            shipped = type(synth) is SYNTHS.get(synth.patch.name)  # not a user's patch that took a shipped name
            lister = f"--synth {synth.patch.name}" if shipped else "--patch FILE.py (your patch's file)"
            raise ValueError(f"fit: {pattern!r} names no parameter of {synth.patch.name}{hint} (its modules: "
                             f"{', '.join(dict.fromkeys(modules))}; `doppel-torch info {lister}` lists every "
                             "parameter)")
        columns |= found
    return sorted(columns)


def describe_columns(synth, columns: Sequence[int]) -> str:
    """Columns in few words: a module whose parameters are all in it by its name, other parameters by theirs."""
    names = synth.param_names
    chosen = set(columns)
    if len(chosen) == len(names):
        return f"all {len(names)}"
    by_module: dict[str, list[int]] = {}
    for j, spec in enumerate(synth.param_specs):
        by_module.setdefault(spec.module, []).append(j)
    parts = []
    for module, cols in by_module.items():
        if chosen.issuperset(cols):
            parts.append(module)
        else:
            parts.extend(names[j] for j in cols if j in chosen)
    return ", ".join(parts)


def starts_refitting(theta: torch.Tensor, columns: Sequence[int], restarts: int, seed: int) -> torch.Tensor:
    """Restarts that keep one theta (m,) but for `columns` (indices: `fit_columns` turns names into them): row 0 is
    theta itself, rows 1.. draw those columns at random (`starting_points` keyed by seed), for `match(fit=...)`."""
    if theta.dim() != 1:
        raise ValueError(f"theta must be (m,), got {tuple(theta.shape)}")
    columns = list(columns)
    m = theta.shape[0]
    if not all(isinstance(j, int) and not isinstance(j, bool) and 0 <= j < m for j in columns):
        raise ValueError(f"columns must be column indices in [0, {m}) (fit_columns(synth, names) gives them), got "
                         f"{columns!r}")
    starts = theta.repeat(restarts, 1)
    fresh = starting_points(m, restarts, seed, dtype=theta.dtype, device=theta.device)
    starts[1:, columns] = fresh[1:, columns]
    return starts


def match(
    synth,
    target: torch.Tensor,
    *,
    restarts: int = 16,
    steps: int = 200,
    lr: float = 0.05,
    seed: int = 0,
    fft_sizes: Sequence[int] = FFT_SIZES,
    candidates: int | None = None,
    init: torch.Tensor | None = None,
    pitch_step: float = 1.0,
    pitch_scans: int | None = None,
    fit: Sequence[str] | None = None,
    progress: bool | Callable[[int, float], None] = False,
    snapshot: Callable[[int, torch.Tensor, float], None] | None = None,
    snapshot_seconds: float = SNAPSHOT_SECONDS,
) -> MatchResult:
    """Fit theta to `target` (N,) = (synth.n_samples,) at synth.sample_rate, with `restarts` random starts in one batch.

    Adam (lr on the logits of theta) for `steps` steps on `spectral_loss`; rendering uses the synth's backend, which
    must be differentiable (see `default_backend`).
    candidates: score this many random thetas first (rendered without gradients, in batches of `restarts`) and start
        from the best `restarts` of them; None or <= restarts: start from the first `restarts` random thetas.
        Measured (voice, 0.25 s, 20 targets x 16 restarts x 200 steps): 256 candidates end the median restart at 1.13
        vs 1.27, the best restart per target at a median 0.72 vs 0.69: no gain for the best, so it is off by default.
    init: (restarts, m) starting thetas instead of random ones.
    pitch_step: the pitch parameters' step (keyboard note, tunings, pitch modulation depths: `pitch_columns`) as a
        fraction of the others' (Adam holds their logits / pitch_step). Their basins are a fraction of a semitone
        wide, where lr 0.05 moves a tuning by ~0.6 semitones a step. Measured (voice, 0.25 s, 16 targets x 16
        restarts x 200 steps, bench/results/match-recovery-2026-12-02/): from starts near the target (theta +
        0.05 z, the pitch columns + 0.1 semitone z) 0.05 brings 5 of 16 targets under 0.1 and 11 under 0.5 (1.0: 1
        and 5); from random starts the best restart ends at a median 1.04 (1.0: 0.95), so 1.0 is the default and
        0.05 the choice for refining a start you trust (`init`).
    pitch_scans: how many times the pitch columns (`scan_columns`; the fitted ones with `fit`) are set by a grid
        search (`scan_pitch`), each scan opening an equal share of the steps with a fresh Adam and cosine schedule;
        a restart takes a scan's values only where they lower its loss, and after the first scan the pitch columns
        step SCANNED_PITCH_STEP (at most pitch_step) to refine what it found. 0: no scan, one schedule over all
        steps; at most one scan a step. None (default): PITCH_SCANS from random starts, 0 from starts you give
        (`init`: a scan's greedy moves took starts near a target out of its valleys: 1000 steps ended at 0.05-0.16
        instead of 0.008). A scan scores 80 values per pitch column and restart (voice: 5 columns, 6,400 sounds for
        16 restarts) forward only on frames of SCAN_FFT_SIZES (`_ScanTarget`); two scans took a 1 s, 200-step
        match from 5.8 s to 8.9 s. Measured (voice, 16 restarts x 200 steps, bench/match_bench.py recovery
        --pitch-scans 0 2): at 0.25 s, 2 scans end the best restart lower on all 20 targets (median 0.63, none:
        0.82; 40 restarts without a scan, which take 1.7x as long: 0.69, and 2 scans are lower on 19 of 20); at 1 s
        lower on all 10 (mean 0.81 vs 1.00).
    fit: fit only these parameters (names, modules or shell patterns: `fit_columns`); every other column keeps its
        starting value exactly, so give the values to keep in `init`: `starts_refitting(theta, fit_columns(synth,
        fit), restarts, seed)` keeps one theta and draws the fitted columns at random. For a patch you know but for,
        say, its envelopes. Adam moves every column it holds by about lr a step however small its gradient, which
        throws pitch-like columns that are already right out of their narrow valleys (voice, a target's own theta
        with only its 3 mixer levels moved by 0.05 z: 100 steps end at a median 0.17 with every column free, 0.0000
        with the rest held). Measured (voice, 0.25 s, 8 targets, 16 restarts x 200 steps, the fitted columns random
        and the others the target's; bench/results/match-recovery-cpu-2026-12-07.json): restarts under 0.05: mixer
        102 of 128 (all 8 targets), the two ADSRs 14 (3 targets), the modulation matrix 16 (3), the LFOs 13 (1),
        keyboard and VCOs 0; all 78 columns from random restarts 0.
    progress: True shows a tqdm bar with the best loss; a callable gets (step, best loss) after each step.
    snapshot: gets (steps taken, best theta (m,), its loss) after a step once `snapshot_seconds` have passed since the
        start or the previous call, so a caller can keep the best so far on disk (`doppel-torch match` rewrites
        theta.json) against a process that is killed outright.
    Ctrl-C stops early and returns what was found so far (interrupted=True).
    """
    n = synth.n_samples
    if isinstance(target, torch.Tensor) and not target.is_floating_point():
        raise ValueError(f"target must be a floating-point tensor (audio in [-1, 1]), got {target.dtype}")
    if not isinstance(target, torch.Tensor) or target.dim() != 1 or target.shape[0] != n:
        shape = tuple(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__
        raise ValueError(f"target must be a ({n},) tensor ({synth.duration:g} s at {synth.sample_rate} Hz), got {shape}")
    target = target.detach()
    if not torch.isfinite(target).all():
        raise ValueError("target contains NaN or infinite samples")
    if float(target.abs().max()) == 0.0:
        raise ValueError("target is silent (every sample is 0): there is nothing to match")
    for name, value in (("restarts", restarts), ("steps", steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "restarts" else 0):
            raise ValueError(f"{name} must be an integer >= {1 if name == 'restarts' else 0}, got {value!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    rng.check_seed(seed)
    if not synth._backend.differentiable:
        raise ValueError(f"backend='{synth.backend}' is not differentiable; match needs gradients: use "
                         f"backend='{default_backend(target.device)}'")
    if isinstance(pitch_step, bool) or not (isinstance(pitch_step, (int, float)) and math.isfinite(pitch_step)
                                            and 0 < pitch_step <= 1):
        raise ValueError(f"pitch_step must be in (0, 1], got {pitch_step!r}")
    if pitch_scans is not None and (isinstance(pitch_scans, bool) or not isinstance(pitch_scans, int)
                                    or pitch_scans < 0):
        raise ValueError(f"pitch_scans must be an integer >= 0 (or None), got {pitch_scans!r}")
    held = None
    if fit is not None:
        held = torch.ones(synth.num_params, dtype=torch.bool)
        held[fit_columns(synth, fit)] = False
        if init is None:
            raise ValueError("fit holds the other parameters at their starting values: give them in init (e.g. "
                             "starts_refitting(theta, fit_columns(synth, fit), restarts, seed))")
    if init is not None and candidates:
        raise ValueError("candidates picks random starts and init gives the starts: pass one of them")
    dtype, device = target.dtype, target.device
    noise = None
    if synth.program.rows("noise"):
        noise = rng.noise(seed, torch.zeros(1, dtype=torch.int64, device=device), n, dtype=dtype)

    scorer = SpectralTarget(target.detach(), fft_sizes)

    def losses_of(theta: torch.Tensor) -> torch.Tensor:
        return scorer.loss(synth(theta, noise=noise, validate=False))

    fitted = None if held is None else (~held).nonzero().flatten().tolist()
    pitch_scans, scanned = _planned_scans(synth, pitch_scans, init is not None, fitted, steps)
    if scanned:
        scan_scorer = _ScanTarget(target.detach())

        def scan_losses(theta: torch.Tensor) -> torch.Tensor:
            return scan_scorer.loss(synth(theta, noise=noise, validate=False))
    # the steps at which a schedule (Adam, cosine) starts: after each scan, or once
    phase_starts = sorted({min(round(k * steps / pitch_scans), steps - 1) for k in range(pitch_scans)}
                          if scanned else {0})
    scans_done = 0

    if init is None:
        theta0 = starting_points(synth.num_params, max(restarts, candidates or 0), seed, dtype=dtype, device=device)
        if theta0.shape[0] > restarts:
            scores = []
            with torch.no_grad(), _bar(progress, theta0.shape[0], "candidates", "theta") as bar:
                for chunk in theta0.split(restarts):
                    scores.append(losses_of(chunk))
                    bar.update(chunk.shape[0])
            scores = torch.cat(scores)
            theta0 = theta0[torch.argsort(torch.nan_to_num(scores, nan=math.inf))[:restarts]]
    else:
        if init.shape != (restarts, synth.num_params):
            one = (" (one theta: starts_refitting or starts_around make restarts from it)"
                   if tuple(init.shape) == (synth.num_params,) else "")
            raise ValueError(f"init must have shape ({restarts}, {synth.num_params}), got {tuple(init.shape)}{one}")
        given = init.detach().to(dtype=dtype, device=device)
        if not bool(((given >= 0) & (given <= 1)).all()):
            raise ValueError("init must lie in [0, 1] (normalised parameters, as synth.random_params gives): clamp "
                             "it, or map human values with synth.to_unit")
        theta0 = given.clamp(INIT_MARGIN, 1.0 - INIT_MARGIN)
    # Adam holds z = logits / column_step, so a column's logit moves by about lr * column_step a step
    column_step = torch.ones(synth.num_params, dtype=dtype, device=device)
    column_step[pitch_columns(synth)] = pitch_step
    z = (torch.logit(theta0) / column_step).requires_grad_(True)
    if held is not None:  # the held columns exactly as given, not clamped (they need no logit)
        held = held.to(device)
        theta0 = torch.where(held, given, theta0)
    best_loss = torch.full((restarts,), math.inf, dtype=dtype, device=device)
    best_theta = theta0.clone()
    history: list[float] = []
    bar = _bar(progress, steps, "match", "step") if progress is True else None
    start = time.perf_counter()
    last_snapshot = start
    initial = None
    taken, interrupted = 0, False

    def theta_of(z: torch.Tensor) -> torch.Tensor:
        theta = torch.sigmoid(z * column_step)
        # the held columns exactly as given (sigmoid(logit(x)) is x only to rounding)
        return theta if held is None else torch.where(held, theta0, theta)

    def scanned_theta(theta: torch.Tensor) -> torch.Tensor:
        """theta with a pitch scan's values where the match's own loss agrees, counted among the best (and as
        done) before anything else can interrupt."""
        nonlocal best_loss, best_theta, scans_done

        def tick(done: int, scan: int = scans_done + 1) -> None:
            if bar is not None:  # the scan in the match's bar (a bar of its own garbles a pipe)
                bar.set_postfix_str(f"pitch scan {scan}, {done}/{len(scanned)} parameters")
            keep_snapshot()  # the best before the scan: a killed scan loses at most its own time

        proposed = scan_pitch(scan_losses, theta, scanned, tick=tick)
        with torch.no_grad():
            after, before = losses_of(proposed), losses_of(theta)
            keep = after < before
            theta = torch.where(keep[:, None], proposed, theta.detach())
            best_loss, best_theta = _better(torch.where(keep, after, before), theta, best_loss, best_theta)
        scans_done += 1
        return theta

    def keep_snapshot() -> None:
        """The best theta so far to `snapshot`, once snapshot_seconds have passed since the last one."""
        nonlocal last_snapshot
        if snapshot is not None and time.perf_counter() - last_snapshot >= snapshot_seconds:
            k = int(torch.argmin(torch.nan_to_num(best_loss, nan=math.inf)))
            snapshot(taken, best_theta[k].detach().clone(), float(best_loss[k]))
            last_snapshot = time.perf_counter()

    try:
        for step in range(steps + 1):  # the last pass only scores the final update
            theta = theta_of(z)
            if step in phase_starts:
                if scanned:
                    if initial is None:  # the starting points' own losses, before the first scan moves them
                        with torch.no_grad():
                            initial = losses_of(theta).detach().clone()
                            best_loss, best_theta = _better(initial, theta, best_loss, best_theta)
                    theta = scanned_theta(theta)
                    if step > 0:  # later scans: refine the pitch they found
                        column_step[pitch_columns(synth)] = min(pitch_step, SCANNED_PITCH_STEP)
                    z = (torch.logit(theta.clamp(INIT_MARGIN, 1.0 - INIT_MARGIN)) / column_step).requires_grad_(True)
                    theta = theta_of(z)
                length = min([s for s in phase_starts if s > step] + [steps]) - step
                optimizer = torch.optim.Adam([z], lr=lr)
                schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(length, 1),
                                                                      eta_min=lr * COSINE_FLOOR)
            losses = losses_of(theta)
            with torch.no_grad():
                if initial is None:
                    initial = losses.detach().clone()
                best_loss, best_theta = _better(losses, theta, best_loss, best_theta)
            if step == steps:
                if bar is not None:  # the final update's score, so the bar ends on the loss the run reports
                    bar.set_postfix(loss=f"{float(best_loss.min()):.4f}")
                break
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            if z.grad is not None:
                z.grad.nan_to_num_(0.0, 0.0, 0.0)  # a non-finite gradient must not poison a restart
            optimizer.step()
            schedule.step()
            taken = step + 1
            best = float(best_loss.min())
            history.append(best)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{best:.4f}")
            elif callable(progress):
                progress(taken, best)
            keep_snapshot()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if bar is not None:
            bar.close()
    if initial is None:  # interrupted before the first render
        raise KeyboardInterrupt
    k = int(torch.argmin(torch.nan_to_num(best_loss, nan=math.inf)))
    theta = best_theta[k].detach()
    with torch.no_grad():
        audio = synth(theta[None], noise=noise)[0]
    return MatchResult(theta=theta, loss=float(best_loss[k]), audio=audio, restart_losses=best_loss.detach(),
                       initial_losses=initial, restart_thetas=best_theta.detach(), best_restart=k, history=history,
                       steps=taken, pitch_scans=scans_done, interrupted=interrupted,
                       seconds=time.perf_counter() - start)


def _column(value) -> int:
    """A column index from an int, a numpy integer or a one-element integer tensor (TypeError for a bool too)."""
    if isinstance(value, bool):
        raise TypeError(f"{value!r} is not a column index")
    return operator.index(value)


def _better(losses, theta, best_loss, best_theta):
    """The best loss and theta of each restart so far, with this step's (NaN never counts as better)."""
    better = losses < best_loss
    return torch.where(better, losses, best_loss), torch.where(better[:, None], theta.detach(), best_theta)


def _bar(progress, total: int, desc: str, unit: str):
    """A tqdm bar (rate and ETA) where `progress` is True, else one that shows nothing."""
    from doppel_torch.progress import progress_bar

    return progress_bar(total=total, desc=desc, unit=unit, dynamic_ncols=True, disable=progress is not True)


# ---- files: the target in, the result out ---------------------------------------------------------------------
def prepare_target(audio: torch.Tensor, sample_rate: int, synth,
                   seconds: float | None = None) -> tuple[torch.Tensor, list[str]]:
    """Mono audio (N,) at `sample_rate` -> (synth.n_samples,) float32 at synth.sample_rate, and what was done to it
    (resampled, padded with silence, cut), one sentence each; `seconds`: the whole file's length, where `audio` is
    only its beginning."""
    from doppel_torch.functional import resample

    notes = []
    audio = audio.to(torch.float32)
    if int(sample_rate) != synth.sample_rate:
        audio = resample(audio, int(sample_rate), synth.sample_rate)
        notes.append(f"resampled from {sample_rate} Hz to {synth.sample_rate} Hz")
    n, have = synth.n_samples, audio.shape[0]
    if have < n:
        audio = torch.nn.functional.pad(audio, (0, n - have))
        notes.append(f"the target is {have / synth.sample_rate:.3f} s, shorter than the {synth.duration:g} s matched: "
                     f"padded with {(n - have) / synth.sample_rate:.3f} s of silence")
    elif have > n:
        audio = audio[:n]
        length = seconds if seconds is not None else have / synth.sample_rate
        if length > synth.duration:
            notes.append(f"the target is {length:.3f} s: matching its first {synth.duration:g} s (--duration)")
    return audio.contiguous(), notes


def describe_theta(synth, theta: torch.Tensor) -> list[dict]:
    """One entry per parameter: name, normalised value, value in human units and the unit's name."""
    human = synth.to_human(theta.detach().to(torch.float64).clamp(synth.eps, 1.0))
    return [
        {"name": name, "value": float(u), "human": float(h), "unit": unit}
        for name, unit, u, h in zip(synth.param_names, synth.param_units, theta.tolist(), human.tolist())
    ]


def write_theta_json(path: Path, synth, theta: torch.Tensor, loss: float, steps: int, *, extra: dict | None = None,
                     partial: bool = False) -> None:
    """theta.json: the synth, the loss, every parameter by name (normalised and in human units) and theta, written
    whole or not at all (a temporary file renamed over it). partial: a snapshot taken while the match still runs."""
    doc = {
        **(extra or {}),
        "synth": synth.patch.name,
        "sample_rate": synth.sample_rate,
        "duration_s": synth.duration,
        "backend": synth.backend,
        "loss": loss,
        "steps": steps,
        **({"partial": True} if partial else {}),
        "params": describe_theta(synth, theta),
        "theta": [float(v) for v in theta],
    }
    write_text_whole(path, json.dumps(doc, indent=1) + "\n")


def read_theta_json(path: Path, synth) -> torch.Tensor:
    """theta (m,) from a theta.json that `doppel-torch match` wrote for this synth; ValueError saying what is wrong."""
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file (give the theta.json of an earlier `doppel-torch match --out`)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a theta.json ({err})") from None
    theta = doc.get("theta") if isinstance(doc, dict) else None
    if not isinstance(theta, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in theta):
        raise ValueError(f"{path}: no \"theta\" list of numbers in it (give the theta.json of an earlier match)")
    params = doc.get("params", [])
    if not isinstance(params, list):
        raise ValueError(f"{path}: \"params\" must be the list of parameters an earlier match wrote")
    names = [p.get("name") for p in params if isinstance(p, dict)]
    if len(theta) != synth.num_params:
        if doc.get("synth") == synth.patch.name:  # the right synth, an edited list
            raise ValueError(f"{path}: its theta has {len(theta)} values, {synth.patch.name} has {synth.num_params} "
                             "parameters (was the file edited?)")
        raise ValueError(f"{path} holds a theta of {doc.get('synth', 'another synth')} ({len(theta)} parameters), "
                         f"not of {synth.patch.name} ({synth.num_params}): pass the same --synth / --patch")
    if names and names != synth.param_names:
        k = next((i for i, (a, b) in enumerate(zip(names, synth.param_names)) if a != b),
                 min(len(names), len(synth.param_names)))
        got, want = (seq[k] if k < len(seq) else None for seq in (names, synth.param_names))
        raise ValueError(f"{path}: its parameter names are not {synth.patch.name}'s (parameter {k} is {got!r}, "
                         f"expected {want!r}): pass the same --synth / --patch, and keep the file's \"params\" as "
                         "the match wrote them")
    bad = next((i for i, v in enumerate(theta) if not (math.isfinite(v) and 0.0 <= v <= 1.0)), None)
    if bad is not None:
        raise ValueError(f"{path}: theta must lie in [0, 1] (normalised values); entry {bad} "
                         f"({synth.param_names[bad]}) is {theta[bad]!r}")
    # The match writes "theta" and each parameter's "value" and "human" from one tensor: a field that disagrees was
    # edited by hand. --init reads "theta" alone, so an edit elsewhere would be ignored without a word.
    remedy = ("--init reads \"theta\", the normalised values: edit it (synth.to_unit maps human values to it) and "
              "drop that parameter's \"value\" and \"human\" fields, or make them agree")
    edited = next((p.get("name") for p, v in zip(params, theta)
                   if isinstance(p, dict) and "value" in p and p["value"] != v), None)
    if edited is not None:
        raise ValueError(f"{path}: {edited}'s \"value\" differs from its entry in \"theta\"; {remedy}")
    theta = torch.tensor(theta, dtype=torch.float32)
    if len(params) == len(theta):
        for p, h in zip(params, describe_theta(synth, theta)):
            w = p.get("human") if isinstance(p, dict) else None
            if w is not None and not (isinstance(w, (int, float)) and not isinstance(w, bool)
                                      and math.isclose(w, h["human"], rel_tol=1e-5, abs_tol=1e-9)):
                raise ValueError(f"{path}: {h['name']}'s \"human\" value is not what its \"theta\" entry maps to; "
                                 f"{remedy}")
    return theta


def write_result(result: MatchResult, synth, target: torch.Tensor, out_dir: str | Path, *,
                 meta: dict | None = None) -> dict[str, Path]:
    """theta.json, match.wav, target.wav (the target as matched: resampled, padded) and match.png in `out_dir`."""
    from doppel_torch.viz import save_spectrogram_grid, write_wav

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        **(meta or {}),
        "seconds": round(result.seconds, 3),
        "interrupted": result.interrupted,
        "best_restart": result.best_restart,
        "restart_losses": [float(v) for v in result.restart_losses],  # in restart order: best_restart indexes them
        "initial_losses": [float(v) for v in result.initial_losses],
    }
    paths = {"json": out / "theta.json", "wav": out / "match.wav", "target": out / "target.wav", "png": out / "match.png"}
    write_theta_json(paths["json"], synth, result.theta, result.loss, result.steps, extra=doc)
    write_wav(paths["wav"], result.audio, synth.sample_rate)
    # a target beyond full scale is written as float, unclipped: the file is the target as matched
    write_wav(paths["target"], target, synth.sample_rate,
              subtype="FLOAT" if float(target.abs().max()) > 1.0 else "PCM_16")
    save_spectrogram_grid([[target, result.audio]], synth.sample_rate, paths["png"], col_labels=["target", "match"],
                          title=f"{synth.patch.name} match: spectral loss {result.loss:.4f} after {result.steps} "
                                f"steps, {len(result.restart_losses)} restarts")
    return paths


# ---- the command ----------------------------------------------------------------------------------------------
TARGET_MARGIN_S = 0.05  # read past the matched seconds, so that resampling sees the samples beyond the cut


def _read_target(path: Path, duration: float | None) -> tuple[torch.Tensor, int, int, float]:
    """The target file's mono samples (its first `duration` seconds or DEFAULT_DURATION, and a margin), rate,
    channel count (averaged) and whole length in seconds, or click.ClickException with one line saying what to do."""
    import soundfile as sf

    from doppel_torch.audio import AudioReadError, read_audio

    if not path.exists():
        raise click.ClickException(f"{path}: no such file (give the path of a wav, flac or ogg file)")
    if path.is_dir():
        raise click.ClickException(f"{path} is a folder: give one audio file")
    try:
        channels, rate = read_audio(path, max_seconds=(duration or DEFAULT_DURATION) + TARGET_MARGIN_S)
        info = sf.info(str(path))
    except (AudioReadError, sf.SoundFileError, RuntimeError) as err:
        raise click.ClickException(f"cannot read the target: {err} (give a wav, flac or ogg file)") from None
    if not torch.isfinite(channels).all():
        raise click.ClickException(f"{path}: the audio contains NaN or infinite samples (fix or re-export the file: "
                                   "there is no sound to match there)")
    seconds = info.frames / info.samplerate if info.frames > 0 else channels.shape[1] / rate
    return channels.mean(dim=0), rate, channels.shape[0], seconds


QUIET_PEAK = 2.0 ** -15  # one step of 16-bit audio (-90 dBFS): a target whose peak is below it is silence


def _load_target(path: Path, audio: torch.Tensor, rate: int, synth, channels: int = 1,
                 seconds: float | None = None) -> tuple[torch.Tensor, list[str]]:
    """The target as (synth.n_samples,) float32 at the synth's rate, and what was done to it."""
    audio, notes = prepare_target(audio, rate, synth, seconds)
    peak = float(audio.abs().max())
    if peak < QUIET_PEAK:  # 1e-7 noise was matched to a loss of 6069 (found from outside)
        level = "every sample is 0" if peak == 0.0 else f"its peak, {peak:.2g}, is below one 16-bit step"
        mono = f" once its {channels} channels are averaged to mono (they cancel)" if channels > 1 else ""
        raise click.ClickException(f"{path}: the target is silent over the first {synth.duration:g} s{mono} "
                                   f"({level}): nothing to match (check the file, or --duration)")
    return audio, notes


class _Signals:
    """Ctrl-C and SIGTERM (a scheduler, `timeout`, `kill`) while the command runs: the first one stops the descent
    (KeyboardInterrupt: `match` returns the best so far); any further one, while `match` finishes and the files are
    written (a second or so), is noted and waits, so none of them is left unwritten. The first one received sets
    the exit status, 128 + its number, as `doppel-torch train`. A signal the process was started with ignored (a
    background job's SIGINT, nohup) stays ignored."""

    def __init__(self):
        self.received: list[int] = []
        self.holding = False
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def hold(self) -> None:
        """From here on a signal is only noted: `match` has returned and the files are being written."""
        self.holding = True

    def _on_signal(self, signum, frame):
        self.received.append(signum)
        if self.holding or len(self.received) > 1:
            click.echo("\nwriting the result; it stops once the files are written", err=True)
            return
        raise KeyboardInterrupt


def _a_number(ctx, param, value):
    """click's FloatRange lets NaN through (every comparison with it is false): refuse it before any work."""
    if value is not None and math.isnan(value):
        raise click.BadParameter("must be a number, not NaN")
    return value


@click.command("match")
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--synth", "synth_name", type=click.Choice(list(SYNTHS)), default=None,
              help="A shipped synthesizer (default: voice; or --patch).")
@click.option("--patch", "patch_spec", default=None, metavar="FILE.py[:NAME] | MODULE[:NAME]",
              help="Match with your own Patch instead of --synth (see examples/subtractive.py).")
@click.option("--backend", type=click.Choice(list(BACKENDS)), default=None,
              help="Rendering backend; it must be differentiable. Default: the fastest differentiable one on "
                   "the device ('cpu' on the CPU, 'triton' on CUDA; see doppel_torch.matching.default_backend).")
@click.option("--device", default=None, help="torch device, e.g. cpu or cuda (default: cuda when available).")
@click.option("--restarts", type=click.IntRange(1, 1024), default=16, show_default=True,
              help="Random starting points, optimised together in one batch.")
@click.option("--steps", type=click.IntRange(0, 100_000), default=200, show_default=True,
              help="Adam steps (0: only score the starting points).")
@click.option("--lr", type=click.FloatRange(min=0.0, min_open=True, max=10.0), default=0.05, show_default=True,
              callback=_a_number,
              help="Adam learning rate on the logits of theta.")
@click.option("--candidates", type=click.IntRange(0, 65_536), default=0, show_default=True,
              help="Score this many random thetas first and start from the best --restarts of them (0: none).")
@click.option("--init", "init_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="THETA.json",
              help="Continue from an earlier match: its theta.json (the same synth) is restart 0, the other "
                   f"restarts start {AROUND_SPREAD:g} around it (with --fit: they draw the fitted parameters at "
                   "random).")
@click.option("--fit", "fit", multiple=True, metavar="PATTERN",
              help="With --init: fit only these parameters and keep the others at --init's values. A name as "
                   "`doppel-torch info --synth NAME` (or --patch FILE.py) lists it, a module (adsr_1: all its parameters) or a shell "
                   "pattern ('lfo_*'); repeat --fit for more. Restart 0 starts at --init, the others draw the fitted "
                   "parameters at random.")
@click.option("--pitch-step", type=click.FloatRange(min=0.0, min_open=True, max=1.0), default=1.0, show_default=True,
              callback=_a_number,
              help="The pitch parameters' step as a fraction of the others' (0.05 refines a start near the answer).")
@click.option("--pitch-scans", type=click.IntRange(0, 100), default=None,
              help=f"Grid searches of the pitch parameters, each opening an equal share of the steps (0: none). "
                   f"Default: {PITCH_SCANS} from random starts, 0 with --init.")
@click.option("--seed", type=int, default=0, show_default=True, help="Keys the starting points and the noise.")
@click.option("--duration", type=click.FloatRange(min=MIN_DURATION, max=30.0), default=None, callback=_a_number,
              help=f"Seconds matched: a longer target is cut, a shorter one padded with silence. Default: the "
                   f"target's length, at most {DEFAULT_DURATION:g} s, at least {MIN_DURATION:g} s.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for theta.json, match.wav, target.wav and match.png (created if missing).")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="A progress bar with the best loss, the rate and the time left.")
def match_command(target, synth_name, patch_spec, backend, device, restarts, steps, lr, candidates, init_path, fit,
                  pitch_step, pitch_scans, seed, duration, out_dir, progress) -> None:
    """Fit a synth's parameters to TARGET (an audio file) by gradient descent on a multi-resolution spectral loss.

    All restarts run in one batch; the best one is written: theta.json (every parameter by name, normalised
    and in human units), match.wav, target.wav (the target as matched) and match.png (target vs match
    spectrograms). Ctrl-C or SIGTERM stops early, writes the best found so far and exits 130 / 143; while it
    runs, theta.json holds the best so far (rewritten every 10 s), so --init out/theta.json continues even a
    killed run.
    """
    from doppel_torch.options import device_option, out_folder
    from doppel_torch.synths.base import synth_from_options

    device = device_option(device)
    if backend is None:
        backend = default_backend(device)
    samples, rate, channels, seconds = _read_target(target, duration)
    if duration is None:  # the target's length (no padding to score), capped; at least --duration's minimum
        duration = max(MIN_DURATION, min(DEFAULT_DURATION, seconds))
    try:
        synth = synth_from_options(synth_name, patch_spec, default="voice", backend=backend, duration=duration)
    except (RuntimeError, ValueError) as err:
        raise click.UsageError(str(err)) from None
    if not synth._backend.differentiable:
        raise click.UsageError(f"--backend {backend} is not differentiable yet and match needs gradients: use "
                               f"--backend {default_backend(device)} (or leave --backend out)")
    audio, notes = _load_target(target, samples, rate, synth, channels, seconds)
    if 0 < candidates <= restarts:
        raise click.UsageError(f"--candidates {candidates} picks the best --restarts ({restarts}) of that many random "
                               "starts: give more than --restarts, or 0")
    init = None
    if fit and init_path is None:
        raise click.UsageError("--fit keeps the other parameters at the values of --init THETA.json: give one (an "
                               "earlier match's theta.json, or one you wrote)")
    if init_path is not None:
        if candidates:
            raise click.UsageError("--candidates picks random starts and --init starts around a theta: give one")
        try:
            theta = read_theta_json(init_path, synth)
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="--init") from None
        try:
            columns = fit_columns(synth, fit) if fit else None
        except ValueError as err:
            message = str(err).removeprefix("fit: ")
            if patch_spec is not None:
                message = message.replace("--patch FILE.py (your patch's file)", f"--patch {shlex.quote(patch_spec)}")
            raise click.BadParameter(message, param_hint="--fit") from None
        if columns is None:
            init = starts_around(theta, restarts, seed).to(device)
        else:
            init = starts_refitting(theta, columns, restarts, seed).to(device)
    if channels > 1:
        notes.insert(0, f"averaged its {channels} channels to mono")
    for note in notes:
        click.echo(f"note: {note}")
    if fit:
        starts = (f"fitting {len(columns)} of the {synth.num_params} parameters ({describe_columns(synth, columns)}), "
                  f"the others kept at {init_path}, seed {seed}")
    else:
        starts = f"around {init_path}" if init is not None else f"seed {seed}"
    click.echo(f"matching {synth.duration:g} s of {target} with {synth.patch.name} ({synth.num_params} parameters, "
               f"backend={backend}, {device}): {restarts} restarts x {steps} steps, {starts}")
    # match's own count, written down (theta.json) and carried on (the continue line)
    pitch_scans = _planned_scans(synth, pitch_scans, init is not None, columns if fit else None, steps)[0]
    meta = {"target": str(target), "seed": seed, "lr": lr, "pitch_step": pitch_step, "pitch_scans": pitch_scans,
            **({"init": str(init_path)} if init is not None else {}), **({"fit": list(fit)} if fit else {}),
            "notes": notes}
    out_folder(out_dir)
    lock = runlock.try_lock(out_dir)
    if lock is None:
        raise click.UsageError(f"--out {out_dir} is being written by another run ({runlock.holder(out_dir)}): wait "
                               "for it to finish, or choose another --out")
    try:
        _replacing_note(out_dir / "theta.json", target, init_path)
        _run_match(synth, audio.to(device), target, out_dir, init, fit, patch_spec, meta, restarts, steps, lr, seed,
                   candidates, pitch_step, pitch_scans, progress)
    finally:
        lock.release()


def _replacing_note(previous: Path, target: Path, init_path: Path | None) -> None:
    """Say so where --out holds the match of another target, which this one replaces."""
    try:
        was = json.loads(previous.read_text()).get("target")
    except (OSError, ValueError, AttributeError):
        return
    if was is not None and was != str(target) and (init_path is None or init_path.resolve() != previous.resolve()):
        click.echo(f"note: replacing the match of {was} in {previous.parent}")


def _pitch_options(asked: int, done: int, pitch_step: float) -> str:
    """The continue line's pitch options after `done` of `asked` scans: the scans left (an --init run does none
    unless told), and the pitch step the descent goes on with: finer after a later scan, and after the first where
    one is left (the continued run does that one at its start, as a later scan)."""
    words = f" --pitch-scans {asked - done}" if asked > done else ""
    finer = done >= 2 or (done == 1 and asked > done)
    step = min(pitch_step, SCANNED_PITCH_STEP) if finer else pitch_step
    return words + (f" --pitch-step {step:g}" if step != 1.0 else "")


def _given(*names: str) -> list[str]:
    """The options among `names` (click parameter names) that this command line set, as they would be written."""
    ctx = click.get_current_context()
    words = []
    for name in names:
        if ctx.get_parameter_source(name) in (click.core.ParameterSource.COMMANDLINE,
                                              click.core.ParameterSource.ENVIRONMENT):
            value = ctx.params[name]
            words.append(f"--{name.replace('_', '-')} {shlex.quote(str(value))}")
    return words


def _run_match(synth, audio, target, out_dir, init, fit, patch_spec, meta, restarts, steps, lr, seed, candidates,
               pitch_step, pitch_scans, progress) -> None:
    """The descent, the result's files and the exit status of `match_command` (its --out held); audio: the target
    on the device."""
    from doppel_torch.options import out_of_memory

    snapshot_failed = []

    def snapshot(taken: int, theta: torch.Tensor, loss: float) -> None:
        try:
            write_theta_json(out_dir / "theta.json", synth, theta.cpu(), loss, taken, extra=meta, partial=True)
        except OSError as err:  # the match goes on; the final write says so again if it still cannot write
            if not snapshot_failed:
                snapshot_failed.append(err)
                click.echo(f"\nwarning: cannot write the snapshot {out_dir / 'theta.json'} "
                           f"({err.strerror or err}); the match goes on", err=True)

    with _Signals() as signals:
        try:
            result = match(synth, audio, restarts=restarts, steps=steps, lr=lr, seed=seed,
                           candidates=candidates or None, init=init, fit=list(fit) or None,
                           pitch_step=pitch_step, pitch_scans=pitch_scans, progress=progress, snapshot=snapshot,
                           snapshot_seconds=SNAPSHOT_SECONDS)
        except ValueError as err:
            raise click.ClickException(str(err)) from None
        except (MemoryError, RuntimeError) as err:
            if not out_of_memory(err):
                raise
            raise click.ClickException(f"out of memory for {restarts} restarts of {synth.duration:g} s: use fewer "
                                       "--restarts or a shorter --duration") from None
        except KeyboardInterrupt:
            click.echo("interrupted before the first step: nothing to write", err=True)
            sys.exit(128 + (signals.received[0] if signals.received else signal.SIGINT))
        signals.hold()
        try:
            paths = write_result(result, synth, audio, out_dir, meta={**meta, "pitch_scans_done": result.pitch_scans})
        except OSError as err:
            best = ", ".join(f"{v:.6g}" for v in result.theta.tolist())
            raise click.ClickException(f"cannot write the result in {out_dir} ({err.strerror or err}); the best "
                                       f"theta (loss {result.loss:.4f}) was: [{best}]") from None
        found = (result.restart_losses < 0.1 * result.initial_losses.median()).sum().item()
        status = f"interrupted after {result.steps} steps: " if result.interrupted else ""
        click.echo(f"{status}best spectral loss {result.loss:.4f} (restart {result.best_restart}), from starting "
                   f"points of median loss {float(result.initial_losses.median()):.4f}; {found} of {restarts} "
                   f"restarts ended below a tenth of that; {result.seconds:.1f} s")
        click.echo(f"wrote {paths['json']}, {paths['wav']}, {paths['target']} and {paths['png']}")
        if result.interrupted:  # the whole command that goes on from here
            which = f"--patch {shlex.quote(patch_spec)}" if patch_spec else f"--synth {synth.patch.name}"
            again = "".join(f" --fit {shlex.quote(f)}" for f in fit)
            kept = "".join(f" {w}" for w in _given("restarts", "lr", "seed", "backend", "device"))
            kept += _pitch_options(pitch_scans, result.pitch_scans, pitch_step)
            left = steps - result.steps
            click.echo(f"continue with: doppel-torch match {shlex.quote(str(target))} {which} --duration "
                       f"{synth.duration:g}{kept} --steps {left} --init "
                       f"{shlex.quote(str(paths['json']))}{again} --out {shlex.quote(str(out_dir))}")
    if signals.received:  # stopped by a signal: say so in the exit status too (128 + its number, as train)
        sys.exit(128 + signals.received[0])


__all__ = ["FFT_SIZES", "MatchResult", "SpectralTarget", "default_backend", "describe_columns", "describe_theta",
           "fit_columns", "match", "pitch_columns", "prepare_target", "read_theta_json", "scan_columns", "scan_pitch",
           "spectral_loss", "starting_points", "starts_around", "starts_refitting", "write_result", "write_theta_json",
           "match_command"]
