"""Stateless synth building blocks in eager PyTorch: the specification every other backend equals.

All functions are batched over leading dimensions, compute in their inputs' dtype (float32 or float64),
work on any device and are differentiable. Parameters are in human units (seconds, Hz, MIDI, radians).
Shapes: B = batch, K = stacked modules of one kind, C = control-rate samples, N = audio samples.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd import forward_ad

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

    The whole blocks are a view and the last, shorter one a scan of its own, with no padding: torch 2.9's Inductor
    compiled the padded form (pad to whole blocks, scan, cut) wrong when the input requires grad and the length is
    not a multiple of `block` (the last block read memory it never wrote: values up to 3e35; found from outside,
    tests/backends/test_compile.py). The same values as the padded form, bit for bit, eagerly.
    """
    n = inc.shape[-1]
    whole = n // block * block
    parts = []
    offset = None  # the wrapped totals of the whole blocks, summed
    if whole:
        within = torch.cumsum(inc[..., :whole].reshape(*inc.shape[:-1], whole // block, block), dim=-1)
        totals = torch.cumsum(frac(within[..., -1]), dim=-1)  # wrapped totals, summed: <= n / block
        carry = frac(F.pad(totals[..., :-1], (1, 0)))  # exclusive: offset at each block start
        parts.append(frac(within + carry.unsqueeze(-1)).reshape(*inc.shape[:-1], whole))
        offset = frac(totals[..., -1:])
    if whole < n:
        tail = torch.cumsum(inc[..., whole:], dim=-1)
        parts.append(frac(tail if offset is None else tail + offset))
    return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]


def upsample(control: torch.Tensor, n_samples: int) -> torch.Tensor:
    """Control rate (..., C) -> audio rate (..., N), linear, endpoints aligned: sample n reads
    control position n (C - 1) / (N - 1) (SynthAX's `jnp.interp` on two linspaces; DESIGN.md quirk 4)."""
    shape = control.shape
    flat = control.reshape(-1, 1, shape[-1])
    out = F.interpolate(flat, size=n_samples, mode="linear", align_corners=True)
    return out.reshape(*shape[:-1], n_samples)


def _pow_safe(base: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
    """base ** exponent for base >= 0 with finite gradients at base = 0 (value 0 there, as exponent > 0)."""
    positive = base > 0
    safe = torch.where(positive, base, torch.ones_like(base))
    return torch.where(positive, safe**exponent, torch.zeros_like(base))


def adsr_ramp(
    duration_s: torch.Tensor,
    start_s: torch.Tensor | None,
    alpha: torch.Tensor,
    n_control: int,
    control_rate: float,
    eps: float,
    inverse: bool = False,
) -> torch.Tensor:
    """SynthAX/torchsynth ADSR ramp: (...,) -> (..., C).

    r_t = min((max(t - start, 0) + eps) / duration + eps, 1) in control samples; inverse: 1 - r where
    duration > 0; then r ** alpha. A zero duration gives an all-ones ramp (SynthAX gets there by
    dividing by zero; here the division is guarded so that gradients stay finite).
    """
    t = torch.arange(n_control, device=alpha.device, dtype=alpha.dtype)
    dur = (duration_s * control_rate).unsqueeze(-1)
    ramp = t if start_s is None else torch.clamp(t - (start_s * control_rate).unsqueeze(-1), min=0.0)
    positive = dur > 0
    safe_dur = torch.where(positive, dur, torch.ones_like(dur))
    ramp = torch.where(positive, torch.clamp((ramp + eps) / safe_dur + eps, max=1.0), torch.ones_like(ramp))
    if inverse:
        ramp = torch.where(positive, 1.0 - ramp, ramp)
    return _pow_safe(ramp, alpha.unsqueeze(-1))


def adsr(
    attack_s: torch.Tensor,
    decay_s: torch.Tensor,
    sustain: torch.Tensor,
    release_s: torch.Tensor,
    alpha: torch.Tensor,
    note_on_s: torch.Tensor,
    n_control: int,
    control_rate: float,
    eps: float = 1e-6,
) -> torch.Tensor:
    """ADSR envelope at control rate: parameters (...,) -> (..., C) in [0, 1].

    A note held for `note_on_s` seconds cuts the attack/decay short; the release starts at note-off.
    """
    new_attack = torch.minimum(attack_s, note_on_s)
    new_decay = torch.minimum(torch.clamp(note_on_s - attack_s, min=0.0), decay_s)
    ramp = lambda d, s, inv: adsr_ramp(d, s, alpha, n_control, control_rate, eps, inv)  # noqa: E731
    attack_sig = ramp(new_attack, None, False)
    sus = sustain.unsqueeze(-1)
    decay_sig = (1.0 - sus) * ramp(new_decay, new_attack, True) + sus
    release_sig = ramp(release_s, note_on_s, True)
    return attack_sig * decay_sig * release_sig


LFO_EXPONENT = math.e  # soft-max sharpness of the shape selector (SynthAX/torchsynth default)
# The LFO phase is accumulated in fixed point, LFO_PHASE_BITS fractional bits of a cycle in int64: integer sums are
# exact in any order, so every backend lands on the same side of the square's and saw's jumps, even where clipped
# parameters put the phase exactly on one (a frequency of 20 Hz at 480 Hz is 1/24 cycle per step; with the initial
# phase at pi, float sums in different orders put step 6 on either side of the square's edge). Increments are
# rounded to 2^-44 cycles (5.7e-14), far below float32 and SynthAX's float64 differences.
LFO_PHASE_BITS = 44
_ROUND = 6755399441055744.0  # 1.5 * 2^52: (x + _ROUND) - _ROUND rounds |x| < 2^51 to an integer, half to even


def _may_differentiate(*tensors: torch.Tensor) -> bool:
    """Some derivative of these may be taken: reverse mode (requires_grad, torch.func's grad) or forward mode (a
    dual level is open: its tangents do not set requires_grad). Traced by torch.compile: assume so."""
    return (torch.compiler.is_compiling() or forward_ad._current_level >= 0 or any(t.requires_grad for t in tensors)
            or any(torch._C._functorch.is_functorch_wrapped_tensor(t) for t in tensors))


def fixed_point_phase(increment: torch.Tensor, phase0_cycles: torch.Tensor) -> torch.Tensor:
    """Wrapped phase in cycles, u[t] = frac(phase0 + sum_{s <= t} increment[s]), in [0, 1), evaluated exactly in fixed
    point (the value every backend computes bit for bit). increment: (..., C) cycles per step >= 0; phase0: (...,).
    Returned in float64; its gradient is that of the float sum (straight through the rounding)."""
    scale = float(2**LFO_PHASE_BITS)
    mask = 2**LFO_PHASE_BITS - 1
    inc = increment.detach().to(torch.float64)
    steps = ((inc * scale + _ROUND) - _ROUND).to(torch.int64)
    start = (((phase0_cycles.detach().to(torch.float64) * scale + _ROUND) - _ROUND).to(torch.int64)) & mask
    # blocks of 1024 steps keep the running int64 sums far from overflow (each step is < 2^51 / 2^44 = 128 cycles)
    acc = torch.zeros_like(start)
    parts = []
    for block in torch.split(steps, 1024, dim=-1):
        sums = (torch.cumsum(block, dim=-1) + acc.unsqueeze(-1)) & mask
        acc = sums[..., -1]
        parts.append(sums)
    fixed = (torch.cat(parts, dim=-1) + start.unsqueeze(-1)) & mask
    u = fixed.to(torch.float64) * (1.0 / scale)
    if _may_differentiate(increment, phase0_cycles):  # the float phase's derivative, the exact phase's value
        float_phase = torch.cumsum(increment.to(torch.float64), dim=-1) + phase0_cycles.to(torch.float64).unsqueeze(-1)
        u = u + (float_phase - float_phase.detach())
    return u


def lfo(
    frequency_hz: torch.Tensor,
    mod_depth_hz: torch.Tensor,
    initial_phase: torch.Tensor,
    shape_weights: torch.Tensor,
    rate_env: torch.Tensor,
    control_rate: float,
) -> torch.Tensor:
    """Low-frequency oscillator at control rate (before its amplitude envelope).

    frequency_hz, mod_depth_hz, initial_phase: (...,); shape_weights: (..., 5) for (sin, tri, saw, rsaw, sqr)
    in [0, 1]; rate_env: (..., C). Instantaneous rate max(f + depth * rate_env, 0); the shapes are mixed
    with weights w ** e / sum(w ** e) (all-zero weights divide 0 by 0: DESIGN.md quirk 5; theta >= eps avoids it).
    The shapes are SynthAX's, written on the wrapped phase u in cycles (argument = 2 pi u): cos(argument + pi),
    a square that is 1 where that cosine is positive (0.5 where it is exactly 0), saw = u, rsaw = 1 - u, triangle.
    """
    freq = torch.clamp(frequency_hz.unsqueeze(-1) + mod_depth_hz.unsqueeze(-1) * rate_env, min=0.0)
    u = fixed_point_phase(freq / control_rate, initial_phase / TWO_PI).to(freq.dtype)
    cos = (1.0 - torch.cos(TWO_PI * u)) / 2.0  # (cos(2 pi u + pi) + 1) / 2
    inside = (u > 0.25) & (u < 0.75)
    edge = (u == 0.25) | (u == 0.75)
    square = torch.where(inside, 1.0, torch.where(edge, 0.5, 0.0)).to(u.dtype)
    saw = u
    rsaw = 1.0 - saw
    tri = 2.0 * saw
    tri = torch.where(tri > 1.0, 2.0 - tri, tri)
    shapes = torch.stack((cos, tri, saw, rsaw, square), dim=-2)  # (..., 5, C)
    mode = shape_weights**LFO_EXPONENT
    mode = mode / mode.sum(dim=-1, keepdim=True)
    return (mode.unsqueeze(-1) * shapes).sum(dim=-2)


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


def lowpass(x: torch.Tensor, cutoff_hz: torch.Tensor, sample_rate: float, block: int = 128) -> torch.Tensor:
    """Time-varying one-pole low-pass (SynthAX's `LPF`): y[n] = a[n] x[n] + (1 - a[n]) y[n - 1], y[-1] = 0,
    a = dt / (tau + dt) with tau = 1 / (2 pi cutoff), dt = 1 / sample_rate; x, cutoff_hz: (..., N).

    Evaluated in blocks: within a block y = P * cumsum(a x / P) with P the running product of (1 - a), then the
    block's end value carried into the next. With the cutoff at most Nyquist, 1 - a >= 1 / (1 + pi), so P stays
    above 0.24 ** 128 = 1e-79: the scan runs in float64 (no underflow, ~1e-15 relative) whatever x's dtype, and so
    does its autograd, whose a x / P ** 2 stays below 1e158 (with blocks of 256, P ** 2 reached 1e-316 and the
    gradient of 10-15 % of random filtered sounds overflowed to inf / NaN).
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
