"""The control-rate half of the synth specification, in eager PyTorch: ADSRs, LFOs and the modulation matrix.

    mods = control_signals(program, human)       # (B, n_out, C): every modulation-matrix output at control rate

Shared by the torch reference (`backends.torch.render`) and the differentiable paths of the fused backends, whose
native kernels compute the audio-rate half and its adjoint and leave the control rate (~480 Hz, a few per cent of
the work) to torch autograd on these functions: one definition of the control-rate math, below every backend.
Batched over leading dimensions, in the inputs' dtype, any device, differentiable. Parameters in human units.
Shapes: B = batch, K = stacked modules of one kind, C = control-rate samples.
"""

from __future__ import annotations

import math

import torch

from doppel_torch.spec.program import INPUT_LFO, MATRIX, Program, col

TWO_PI = 2.0 * math.pi


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
    if increment.requires_grad or phase0_cycles.requires_grad:  # gradient of the float phase, value of the exact one
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


def _cols(tab: dict[str, torch.Tensor], table: str, *names: str) -> list[torch.Tensor]:
    """Columns of one table as index tensors (int32 indexes as well as int64)."""
    return [tab[table][:, col(table, name)] for name in names]


def control_signals(program: Program, human: torch.Tensor) -> torch.Tensor:
    """Every modulation-matrix output at control rate, (B, n_out, C), from parameters in human units (B, m):
    the ADSRs, the LFOs (with their rate envelopes, times their amplitude envelopes), and the matrix product."""
    n_control, control_rate, eps = program.n_control, program.control_rate, program.eps
    tab = program.on(human.device)  # cached per device: no per-call copies of the index tables

    # Envelopes, stacked: (B, E, C).
    attack, decay, sustain, release, alpha, keyboard = _cols(
        tab, "envelopes", "attack", "decay", "sustain", "release", "alpha", "keyboard")
    (duration,) = _cols(tab, "keyboards", "duration")
    env_sig = adsr(attack_s=human[:, attack], decay_s=human[:, decay], sustain=human[:, sustain],
                   release_s=human[:, release], alpha=human[:, alpha], note_on_s=human[:, duration[keyboard]],
                   n_control=n_control, control_rate=control_rate, eps=eps)

    # LFOs with their rate and amplitude envelopes (control-rate VCA), stacked: (B, L, C).
    if program.rows("lfos"):
        freq, depth, phase0, rate_env, amp_env = _cols(
            tab, "lfos", "frequency", "mod_depth", "initial_phase", "rate_env", "amp_env")
        weights = _cols(tab, "lfos", "sin", "tri", "saw", "rsaw", "sqr")
        lfo_sig = lfo(frequency_hz=human[:, freq], mod_depth_hz=human[:, depth], initial_phase=human[:, phase0],
                      shape_weights=torch.stack([human[:, w] for w in weights], dim=-1),
                      rate_env=env_sig[:, rate_env], control_rate=control_rate) * env_sig[:, amp_env]
    else:
        lfo_sig = env_sig[:, :0]

    # Modulation matrix at control rate: (B, n_out, C).
    kind, index = _cols(tab, "mod_inputs", "kind", "index")
    inputs = torch.cat([env_sig, lfo_sig], dim=1)[:, index + (kind == INPUT_LFO) * env_sig.shape[1]]
    return torch.matmul(human[:, tab[MATRIX]], inputs)
