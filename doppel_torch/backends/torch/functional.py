"""Stateless synth building blocks in eager PyTorch: the specification every other backend equals.

All functions are batched over leading dimensions, compute in their inputs' dtype (float32 or float64),
work on any device and are differentiable. Parameters are in human units (seconds, Hz, MIDI, radians).
Shapes: B = batch, K = stacked modules of one kind, C = control-rate samples, N = audio samples.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from doppel_torch.spec.control import (  # noqa: F401  (re-exported: the reference's control-rate half)
    LFO_EXPONENT, LFO_PHASE_BITS, adsr, adsr_ramp, control_signals, fixed_point_phase, lfo)

TWO_PI = 2.0 * math.pi


def midi_to_hz(midi: torch.Tensor) -> torch.Tensor:
    return 440.0 * torch.exp2((midi - 69.0) / 12.0)


def frac(x: torch.Tensor) -> torch.Tensor:
    """x - floor(x) in [0, 1); gradient 1."""
    return x - torch.floor(x).detach()


def wrapped_cumsum(inc: torch.Tensor, block: int = 128) -> torch.Tensor:
    """Inclusive cumulative sum along the last dim, wrapped to [0, 1) (phase in cycles).

    A plain float32 cumsum of 16,000 phase increments loses ~1e-3 cycles (the reason SynthAX float32 drifts
    7-47 % on its FM synths, DESIGN.md quirk 6). Summing within blocks of `block` samples and carrying the
    wrapped block totals keeps every partial sum small: the error stays ~1e-5 cycles in float32.
    In float64 the result equals frac(cumsum(inc)) to ~1e-13.
    """
    n = inc.shape[-1]
    n_blocks = -(-n // block)
    pad = n_blocks * block - n
    x = F.pad(inc, (0, pad)) if pad else inc
    x = x.reshape(*inc.shape[:-1], n_blocks, block)
    within = torch.cumsum(x, dim=-1)
    carry = torch.cumsum(frac(within[..., -1]), dim=-1)  # wrapped totals, summed: <= n_blocks
    carry = frac(F.pad(carry[..., :-1], (1, 0)))  # exclusive: offset at each block start
    phase = frac(within + carry.unsqueeze(-1))
    return phase.reshape(*inc.shape[:-1], n_blocks * block)[..., :n]


def upsample(control: torch.Tensor, n_samples: int) -> torch.Tensor:
    """Control rate (..., C) -> audio rate (..., N), linear, endpoints aligned: sample n reads
    control position n (C - 1) / (N - 1) (SynthAX's `jnp.interp` on two linspaces; DESIGN.md quirk 4)."""
    shape = control.shape
    flat = control.reshape(-1, 1, shape[-1])
    out = F.interpolate(flat, size=n_samples, mode="linear", align_corners=True)
    return out.reshape(*shape[:-1], n_samples)


def vco_frequency(
    midi_f0: torch.Tensor, tuning: torch.Tensor, mod_depth: torch.Tensor, pitch: torch.Tensor
) -> torch.Tensor:
    """Pitch-modulated VCO frequency (..., N) in Hz: midi_to_hz(clamp(f0 + tuning + depth * pitch, 0, 127))."""
    midi = (midi_f0 + tuning).unsqueeze(-1) + mod_depth.unsqueeze(-1) * pitch
    return midi_to_hz(torch.clamp(midi, 0.0, 127.0))


def fm_frequency(
    midi_f0: torch.Tensor, tuning: torch.Tensor, mod_depth: torch.Tensor, modulator: torch.Tensor, nyquist: float
) -> torch.Tensor:
    """FM operator frequency (..., N) in Hz: clamp(f0 (1 + index * modulator), 0, nyquist), f0 in Hz and
    the modulation depth read as a modulation index."""
    f0_hz = midi_to_hz(midi_f0 + tuning).unsqueeze(-1)
    return torch.clamp(f0_hz + mod_depth.unsqueeze(-1) * f0_hz * modulator, 0.0, nyquist)


def oscillator_argument(freq_hz: torch.Tensor, initial_phase: torch.Tensor, sample_rate: float) -> torch.Tensor:
    """Phase argument in radians: 2 pi * (wrapped cumulative cycles) + initial phase."""
    return TWO_PI * wrapped_cumsum(freq_hz / sample_rate) + initial_phase.unsqueeze(-1)


def square_saw_partials(midi_f0: torch.Tensor, tuning: torch.Tensor, mod_depth: torch.Tensor) -> torch.Tensor:
    """Anti-aliasing sharpness of the square/saw: 12000 / (f_max log10 f_max), f_max at the highest pitch."""
    max_f0 = midi_to_hz(midi_f0 + tuning + torch.clamp(mod_depth, min=0.0))
    return 12000.0 / (max_f0 * torch.log10(max_f0))


def square_saw(argument: torch.Tensor, partials: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    """Lazzarini-Timoney square/saw: shape 0 = square, 1 = saw. argument (..., N); partials, shape (...,)."""
    square = torch.tanh(math.pi * partials.unsqueeze(-1) * torch.sin(argument) / 2.0)
    shape = shape.unsqueeze(-1)
    return (1.0 - shape / 2.0) * square * (1.0 + shape * torch.cos(argument))


def lpf_cutoff(cutoff_midi: torch.Tensor, mod_depth: torch.Tensor, control: torch.Tensor, nyquist: float) -> torch.Tensor:
    """Filter cutoff (..., N) in Hz: midi_to_hz(cutoff + depth * control), clamped to [0, nyquist]."""
    midi = cutoff_midi.unsqueeze(-1) + mod_depth.unsqueeze(-1) * control
    return torch.clamp(midi_to_hz(midi), 0.0, nyquist)


def lowpass(x: torch.Tensor, cutoff_hz: torch.Tensor, sample_rate: float, block: int = 256) -> torch.Tensor:
    """Time-varying one-pole low-pass (SynthAX's `LPF`): y[n] = a[n] x[n] + (1 - a[n]) y[n - 1], y[-1] = 0,
    a = dt / (tau + dt) with tau = 1 / (2 pi cutoff), dt = 1 / sample_rate; x, cutoff_hz: (..., N).

    Evaluated in blocks: within a block y = P * cumsum(a x / P) with P the running product of (1 - a), then the
    block's end value carried into the next. With the cutoff at most Nyquist, 1 - a >= 1 / (1 + pi), so P stays
    above 0.24 ** 256 = 1e-158: the scan runs in float64 (no underflow, ~1e-15 relative) whatever x's dtype.
    """
    w = (2.0 * math.pi / sample_rate) * cutoff_hz.to(torch.float64)
    a = w / (1.0 + w)
    n = x.shape[-1]
    n_blocks = -(-n // block)
    pad = n_blocks * block - n
    u = F.pad(a * x.to(torch.float64), (0, pad)).reshape(*x.shape[:-1], n_blocks, block)
    decay = F.pad(1.0 - a, (0, pad), value=1.0).reshape(*x.shape[:-1], n_blocks, block)
    prod = torch.cumprod(decay, dim=-1)
    local = prod * torch.cumsum(u / prod, dim=-1)  # each block from a zero state
    carry = torch.zeros_like(local[..., 0, 0])
    blocks = []
    for b in range(n_blocks):
        y = local[..., b, :] + prod[..., b, :] * carry.unsqueeze(-1)
        blocks.append(y)
        carry = y[..., -1]
    return torch.cat(blocks, dim=-1)[..., :n].to(x.dtype)


def normalize_if_clipping(audio: torch.Tensor) -> torch.Tensor:
    """Divide each sound (last dim) by its own peak when that peak exceeds 1 (DESIGN.md quirk 1)."""
    peak = audio.abs().amax(dim=-1, keepdim=True)
    return torch.where(peak > 1.0, audio / torch.where(peak > 1.0, peak, torch.ones_like(peak)), audio)
