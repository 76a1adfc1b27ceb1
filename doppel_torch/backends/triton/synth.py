"""Fused Triton rendering of any lowered `Program`: two kernels per batch, no per-module audio buffer.

Both kernels read the program's tables (doppel_torch.spec.program) through the generated column constants of
`columns.py`; nothing here knows an architecture.
1. `_control_kernel`, one program = one sound: every modulation-matrix input row (an ADSR in closed form, or an
   LFO with its rate and amplitude ADSRs and a wrapped, carried phase) on chunks of BLOCK_C control samples, then
   the matrix product -> ctrl (B, n_out, C). Equals `backends.torch.functional.adsr`, `lfo` and the matmul of
   `backends.torch.render`.
2. `_audio_kernel`, one program = one sound, looping over chunks of BLOCK_T samples and, within a chunk, over the
   oscillators in table order: endpoint-aligned upsampling of ctrl, VCO frequency, phase in cycles (in-chunk
   `tl.cumsum` plus a wrapped carry per oscillator), sine / square-saw waveform, VCA; an FM operator reads its
   source's chunk (any source, so chains and one modulator driving several carriers) from a per-sound scratch
   row, written by oscillators whose `slot` is set; a filter on an oscillator or on the mix runs as a chunked
   scan (`tl.associative_scan` of (1 - a, a x) pairs plus a carried state); keyed noise (`rng.noise` bits, drawn
   in the kernel) and the mixer; the per-sound peak is tracked and, when it exceeds 1, a second pass over the
   sound divides by it (`normalize_if_clipping`).

Precision: phase_dtype (float64 by default) is the dtype of the control signals, frequencies, phase, FM
modulators and filter states; waveforms, VCAs and the mix run in the output dtype. The float32 error against
float64 comes almost entirely from float32 pitch signals and increments (a relative pitch error e drifts the
phase by e x f0 x t cycles, FM multiplies it by the modulation index; the LFO's saw and square jump where the
phase wraps), not from float32 waveforms. Measured (TRITON_INTERPRET=1, per-sound relative L2 vs the float64
render of the same float32 theta, worst case): SynthAX reference parameters: voice 1.4e-6, voicefm 2.7e-5
(SynthAX float32: 1.07), parametric 1.0e-4 (SynthAX float32: 0.23); with phase_dtype=torch.float32: voice 5.7e-3
(as the eager float32 reference). The float64 output equals the reference to ~1e-11.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton as _wrap_triton

from doppel_torch import rng
from doppel_torch.backends.triton import _math as m
from doppel_torch.backends.triton import columns as C

NOISE_NONE, NOISE_KEYED, NOISE_GIVEN = 0, 1, 2
LFO_PHASE_BITS = 44  # functional.LFO_PHASE_BITS
LFO_SCALE = tl.constexpr(float(2**LFO_PHASE_BITS))
LFO_MASK = tl.constexpr(2**LFO_PHASE_BITS - 1)
ROUND_MAGIC = tl.constexpr(6755399441055744.0)  # 1.5 * 2^52


def wrap_triton(kernel):
    """torch.library.wrap_triton, so that torch.compile traces the launch; the interpreter's kernels are plain
    Python functions that wrap_triton refuses, and are launched as they are."""
    return kernel if m.INTERPRET else _wrap_triton(kernel)


@triton.jit
def _param(h_row, tab_ptr, rows, mask, COL: tl.constexpr, N_COLS: tl.constexpr, other):
    """h_row[tab[rows, COL]]: the parameters named by one theta column of a table, for a vector of rows."""
    cols = tl.load(tab_ptr + rows * N_COLS + COL, mask=mask, other=0)
    return tl.load(h_row + cols, mask=mask, other=other)


@triton.jit
def _scalar(h_row, tab_ptr, row, COL: tl.constexpr, N_COLS: tl.constexpr):
    """h_row[tab[row, COL]] for one row."""
    return tl.load(h_row + tl.load(tab_ptr + row * N_COLS + COL))


@triton.jit
def _ramp(t, dur_s, start_s, alpha, control_rate, eps, INVERSE: tl.constexpr):
    dur = dur_s * control_rate
    r = tl.maximum(t - start_s * control_rate, 0.0)
    positive = dur > 0
    safe = tl.where(positive, dur, 1.0)
    r = tl.where(positive, tl.minimum((r + eps) / safe + eps, 1.0), 1.0)
    if INVERSE:
        r = tl.where(positive, 1.0 - r, r)
    return m.pow_nonneg(r, alpha)


@triton.jit
def _adsr(t, h_row, env_ptr, kb_ptr, env, mask_s, control_rate, eps):
    """The ADSRs of envelope rows `env` -> [BLOCK_S, BLOCK_C]; t: [1, BLOCK_C]."""
    attack = _param(h_row, env_ptr, env, mask_s, C.ENVELOPES_ATTACK, C.ENVELOPES_N_COLS, 1.0)[:, None]
    decay = _param(h_row, env_ptr, env, mask_s, C.ENVELOPES_DECAY, C.ENVELOPES_N_COLS, 1.0)[:, None]
    sustain = _param(h_row, env_ptr, env, mask_s, C.ENVELOPES_SUSTAIN, C.ENVELOPES_N_COLS, 1.0)[:, None]
    release = _param(h_row, env_ptr, env, mask_s, C.ENVELOPES_RELEASE, C.ENVELOPES_N_COLS, 1.0)[:, None]
    alpha = _param(h_row, env_ptr, env, mask_s, C.ENVELOPES_ALPHA, C.ENVELOPES_N_COLS, 1.0)[:, None]
    keyboard = tl.load(env_ptr + env * C.ENVELOPES_N_COLS + C.ENVELOPES_KEYBOARD, mask=mask_s, other=0)
    note_on = _param(h_row, kb_ptr, keyboard, mask_s, C.KEYBOARDS_DURATION, C.KEYBOARDS_N_COLS, 1.0)[:, None]
    new_attack = tl.minimum(attack, note_on)
    new_decay = tl.minimum(tl.maximum(note_on - attack, 0.0), decay)
    attack_sig = _ramp(t, new_attack, 0.0 * new_attack, alpha, control_rate, eps, False)
    decay_sig = (1.0 - sustain) * _ramp(t, new_decay, new_attack, alpha, control_rate, eps, True) + sustain
    release_sig = _ramp(t, release, note_on, alpha, control_rate, eps, True)
    return attack_sig * decay_sig * release_sig


# Loop bounds and counts are constexpr: one compile per (patch, duration), and Triton 3.5's interpreter
# cannot iterate `range` over a runtime scalar argument with numpy 2.4 (it wraps scalars as 1-element arrays).
@triton.jit
def _control_kernel(
    h_ptr, stride_hb, kb_ptr, env_ptr, lfo_ptr, in_ptr, mat_ptr, consts_ptr, ctrl_ptr, stride_cb, stride_co,
    n_in: tl.constexpr, n_out: tl.constexpr, n_control: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_b = tl.program_id(0)
    h_row = h_ptr + pid_b * stride_hb
    two_pi = tl.load(consts_ptr + C.CONST_TWO_PI)
    control_rate = tl.load(consts_ptr + C.CONST_CONTROL_RATE)
    eps = tl.load(consts_ptr + C.CONST_EPS)
    lfo_exponent = tl.load(consts_ptr + C.CONST_LFO_EXPONENT)
    offs_s = tl.arange(0, BLOCK_S)
    mask_s = offs_s < n_in
    kind = tl.load(in_ptr + offs_s * C.MOD_INPUTS_N_COLS + C.MOD_INPUTS_KIND, mask=mask_s, other=0)
    index = tl.load(in_ptr + offs_s * C.MOD_INPUTS_N_COLS + C.MOD_INPUTS_INDEX, mask=mask_s, other=0)
    is_lfo = kind == C.INPUT_LFO
    mask_l = mask_s & is_lfo
    # An envelope row is its own amplitude envelope; an LFO row is scaled by its amp_env and driven by its rate_env.
    amp_env_row = tl.where(is_lfo, tl.load(lfo_ptr + index * C.LFOS_N_COLS + C.LFOS_AMP_ENV, mask=mask_l, other=0),
                           index)
    rate_env_row = tl.where(is_lfo, tl.load(lfo_ptr + index * C.LFOS_N_COLS + C.LFOS_RATE_ENV, mask=mask_l, other=0),
                            index)
    freq = _param(h_row, lfo_ptr, index, mask_l, C.LFOS_FREQUENCY, C.LFOS_N_COLS, 0.0)[:, None]
    depth = _param(h_row, lfo_ptr, index, mask_l, C.LFOS_MOD_DEPTH, C.LFOS_N_COLS, 0.0)[:, None]
    phase0 = _param(h_row, lfo_ptr, index, mask_l, C.LFOS_INITIAL_PHASE, C.LFOS_N_COLS, 0.0)[:, None]
    w_sin = m.pow_nonneg(_param(h_row, lfo_ptr, index, mask_l, C.LFOS_SIN, C.LFOS_N_COLS, 1.0), lfo_exponent)
    w_tri = m.pow_nonneg(_param(h_row, lfo_ptr, index, mask_l, C.LFOS_TRI, C.LFOS_N_COLS, 1.0), lfo_exponent)
    w_saw = m.pow_nonneg(_param(h_row, lfo_ptr, index, mask_l, C.LFOS_SAW, C.LFOS_N_COLS, 1.0), lfo_exponent)
    w_rsaw = m.pow_nonneg(_param(h_row, lfo_ptr, index, mask_l, C.LFOS_RSAW, C.LFOS_N_COLS, 1.0), lfo_exponent)
    w_sqr = m.pow_nonneg(_param(h_row, lfo_ptr, index, mask_l, C.LFOS_SQR, C.LFOS_N_COLS, 1.0), lfo_exponent)
    total = w_sin + w_tri + w_saw + w_rsaw + w_sqr
    w_sin = (w_sin / total)[:, None]
    w_tri = (w_tri / total)[:, None]
    w_saw = (w_saw / total)[:, None]
    w_rsaw = (w_rsaw / total)[:, None]
    w_sqr = (w_sqr / total)[:, None]
    # The LFO phase in fixed point (functional.fixed_point_phase): int64 sums are exact in any order, so the
    # in-chunk tree scan lands on the same side of the square's and saw's jumps as the other backends.
    start = (((phase0.to(tl.float64) / two_pi.to(tl.float64)) * LFO_SCALE + ROUND_MAGIC) - ROUND_MAGIC).to(tl.int64)
    carry = tl.zeros((BLOCK_S,), dtype=tl.int64)
    ctrl_row = ctrl_ptr + pid_b * stride_cb
    for c0 in range(0, n_control, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < n_control
        t = offs_c.to(two_pi.dtype)[None, :]
        amp_env = _adsr(t, h_row, env_ptr, kb_ptr, amp_env_row, mask_s, control_rate, eps)
        rate_env = _adsr(t, h_row, env_ptr, kb_ptr, rate_env_row, mask_s, control_rate, eps)
        inc = tl.maximum(freq + depth * rate_env, 0.0) / control_rate
        inc = tl.where(mask_c[None, :], inc, 0.0)
        steps = ((inc.to(tl.float64) * LFO_SCALE + ROUND_MAGIC) - ROUND_MAGIC).to(tl.int64)
        fixed = (carry[:, None] + tl.cumsum(steps, axis=1)) & LFO_MASK
        carry = (carry + tl.sum(steps, axis=1)) & LFO_MASK
        u = (((fixed + start) & LFO_MASK).to(tl.float64) * (1.0 / LFO_SCALE)).to(two_pi.dtype)
        cos = (1.0 - m.cos(two_pi * u)) / 2.0  # (cos(2 pi u + pi) + 1) / 2
        square = tl.where((u > 0.25) & (u < 0.75), 1.0, tl.where((u == 0.25) | (u == 0.75), 0.5, 0.0))
        saw = u
        rsaw = 1.0 - saw
        tri = 2.0 * saw
        tri = tl.where(tri > 1.0, 2.0 - tri, tri)
        lfo = w_sin * cos + w_tri * tri + w_saw * saw + w_rsaw * rsaw + w_sqr * square
        sig = tl.where(is_lfo[:, None], lfo * amp_env, amp_env)
        sig = tl.where(mask_s[:, None], sig, 0.0)
        for o in range(n_out):
            cols = tl.load(mat_ptr + o * n_in + offs_s, mask=mask_s, other=0)
            weight = tl.load(h_row + cols, mask=mask_s, other=0.0)
            row = tl.sum(weight[:, None] * sig, axis=0)
            tl.store(ctrl_row + o * stride_co + offs_c, row, mask=mask_c)


@triton.jit
def _upsample(row_ptr, i0, i1, w0, w1, mask):
    """Linear, endpoint-aligned control -> audio rate (F.interpolate(align_corners=True))."""
    x0 = tl.load(row_ptr + i0, mask=mask, other=0.0)
    x1 = tl.load(row_ptr + i1, mask=mask, other=0.0)
    return w0 * x0 + w1 * x1


@triton.jit
def _cycles(inc, carry_v, offs_v, i):
    """Wrapped phase in cycles for this chunk and the updated carry of oscillator i (inclusive cumsum)."""
    carry = tl.sum(tl.where(offs_v == i, carry_v, 0.0), axis=0)
    cycles = m.frac(carry + tl.cumsum(inc, axis=0))
    carry_v = tl.where(offs_v == i, m.frac(carry + tl.sum(inc, axis=0)), carry_v)
    return cycles, carry_v


@triton.jit
def _reduced_angle(cycles, phase0, two_pi, pi):
    """2 pi cycles + phase0 - pi, reduced to [-pi, pi): cos and sin of the full argument are minus those."""
    u = m.frac(cycles + phase0 / two_pi)
    return two_pi * u - pi


@triton.jit
def _pick(vec, offs, i):
    """vec[i] of a small register vector (an oscillator's or filter's carried state)."""
    return tl.sum(tl.where(offs == i, vec, 0.0), axis=0)


@triton.jit
def _scan_combine(a1, b1, a2, b2):
    """(y -> a1 y + b1) then (y -> a2 y + b2) is y -> a1 a2 y + (a2 b1 + b2)."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _lowpass(x, h_row, flt_ptr, f, ctrl_row, stride_co, i0, i1, w0, w1, mask_t, state, two_pi, sample_rate, nyquist,
             BLOCK_T: tl.constexpr):
    """One chunk of filters row f over x (phase dtype): y[n] = a[n] x[n] + (1 - a[n]) y[n - 1], y[-1] = `state`,
    as an associative scan; returns (y, the state after the chunk). Equals `functional.lowpass`."""
    cutoff = _scalar(h_row, flt_ptr, f, C.FILTERS_CUTOFF, C.FILTERS_N_COLS)
    depth = _scalar(h_row, flt_ptr, f, C.FILTERS_MOD_DEPTH, C.FILTERS_N_COLS)
    control_row = tl.load(flt_ptr + f * C.FILTERS_N_COLS + C.FILTERS_CONTROL)
    control = _upsample(ctrl_row + control_row * stride_co, i0, i1, w0, w1, mask_t)
    hz = tl.minimum(440.0 * m.exp2((cutoff + depth * control - 69.0) / 12.0), nyquist)
    w = (two_pi / sample_rate) * hz
    a = w / (1.0 + w)
    decay, total = tl.associative_scan((1.0 - a, a * x), 0, _scan_combine)
    y = decay * state + total
    last = tl.sum(tl.where(tl.arange(0, BLOCK_T) == BLOCK_T - 1, y, 0.0), axis=0)
    return y, last


@triton.jit
def audio_constants(consts_ptr):
    """The audio rate's constants from the CONSTS row (columns.py), in the phase dtype: (two_pi, pi, sample_rate,
    log10_2, ctrl_scale, nyquist, log2e). Shared by the forward and the backward kernels."""
    return (tl.load(consts_ptr + C.CONST_TWO_PI), tl.load(consts_ptr + C.CONST_PI),
            tl.load(consts_ptr + C.CONST_SAMPLE_RATE), tl.load(consts_ptr + C.CONST_LOG10_2),
            tl.load(consts_ptr + C.CONST_CTRL_SCALE), tl.load(consts_ptr + C.CONST_NYQUIST),
            tl.load(consts_ptr + C.CONST_LOG2E))


@triton.jit
def noise_chunk(noise_ptr, stride_nb, pid_b, k1, k2, offs_t, mask_t, NOISE: tl.constexpr, dtype: tl.constexpr):
    """The noise source over one chunk, in `dtype`: the given row (NOISE == 2) or the keyed draw, uniform in
    [-1, 1) on a 2 ** -24 grid (`rng.uniform`'s rule). Shared by the forward and the backward kernels."""
    if NOISE == 2:
        noise = tl.load(noise_ptr + pid_b * stride_nb + offs_t, mask=mask_t, other=0.0).to(dtype)
    else:
        bits = m.mix32(m.mix32(offs_t.to(tl.uint32) + k1) ^ k2)
        noise = 2.0 * ((bits >> 8).to(dtype) * 5.9604644775390625e-08) - 1.0
    return noise


@triton.jit
def _audio_kernel(
    h_ptr, stride_hb, ctrl_ptr, stride_cb, stride_co, kb_ptr, osc_ptr, flt_ptr, noise_tab_ptr, mix_ptr, consts_ptr,
    keys_ptr, noise_ptr, stride_nb, scratch_ptr, stride_sb, out_ptr, stride_ob, mix_filter,
    n_osc: tl.constexpr, n_mix: tl.constexpr, n_samples: tl.constexpr, n_control: tl.constexpr,
    NOISE: tl.constexpr, NORMALIZE: tl.constexpr, FM: tl.constexpr, FILTERS: tl.constexpr, BLOCK_T: tl.constexpr,
    BLOCK_V: tl.constexpr, BLOCK_F: tl.constexpr,
):
    pid_b = tl.program_id(0)
    h_row = h_ptr + pid_b * stride_hb
    ctrl_row = ctrl_ptr + pid_b * stride_cb
    out_row = out_ptr + pid_b * stride_ob
    scratch_row = scratch_ptr + pid_b * stride_sb
    two_pi, pi, sample_rate, log10_2, ctrl_scale, nyquist, log2e = audio_constants(consts_ptr)
    out_dtype = out_ptr.dtype.element_ty
    phase_dtype = two_pi.dtype
    # Mixer levels gathered per oscillator (a register vector over oscillator rows) and for the noise.
    offs_v = tl.arange(0, BLOCK_V)
    levels_v = tl.zeros((BLOCK_V,), dtype=out_dtype)
    noise_level = 0.0 * two_pi
    for j in range(n_mix):
        source = tl.load(mix_ptr + j * C.MIXER_N_COLS + C.MIXER_SOURCE)
        index = tl.load(mix_ptr + j * C.MIXER_N_COLS + C.MIXER_INDEX)
        level = _scalar(h_row, mix_ptr, j, C.MIXER_LEVEL, C.MIXER_N_COLS)
        levels_v = tl.where((offs_v == index) & (source == C.MIX_OSCILLATOR), level.to(out_dtype), levels_v)
        if source == C.MIX_NOISE:
            noise_level = level
    k1 = tl.zeros((), tl.uint32)  # the keyed noise's two keys (unused unless NOISE == 1)
    k2 = tl.zeros((), tl.uint32)
    if NOISE == 1:
        k1 = tl.load(keys_ptr + 2 * pid_b).to(tl.uint32)
        k2 = tl.load(keys_ptr + 2 * pid_b + 1).to(tl.uint32)
    carry_v = tl.zeros((BLOCK_V,), dtype=phase_dtype)
    offs_f = tl.arange(0, BLOCK_F)
    state_f = tl.zeros((BLOCK_F,), dtype=phase_dtype)
    peak = tl.zeros((BLOCK_T,), dtype=out_dtype)
    for t0 in range(0, n_samples, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        mask_t = offs_t < n_samples
        pos = offs_t.to(phase_dtype) * ctrl_scale
        i0 = pos.to(tl.int32)
        w1 = pos - i0.to(phase_dtype)
        w0 = 1.0 - w1
        i1 = tl.minimum(i0 + 1, n_control - 1)
        mix = tl.zeros((BLOCK_T,), dtype=out_dtype)
        if NOISE != 0:
            noise = noise_chunk(noise_ptr, stride_nb, pid_b, k1, k2, offs_t, mask_t, NOISE, out_dtype)
            noise_row = tl.load(noise_tab_ptr + C.NOISE_AMP)
            noise_amp = _upsample(ctrl_row + noise_row * stride_co, i0, i1, w0, w1, mask_t)
            mix += (noise_level * (noise.to(phase_dtype) * noise_amp)).to(out_dtype)
        if FM:
            tl.debug_barrier()  # the previous chunk's FM operators have read the scratch rows rewritten below
        for i in range(n_osc):
            osc = osc_ptr + i * C.OSCILLATORS_N_COLS
            kind = tl.load(osc + C.OSCILLATORS_KIND)
            keyboard = tl.load(osc + C.OSCILLATORS_KEYBOARD)
            midi_f0 = _scalar(h_row, kb_ptr, keyboard, C.KEYBOARDS_MIDI_F0, C.KEYBOARDS_N_COLS)
            tuning = tl.load(h_row + tl.load(osc + C.OSCILLATORS_TUNING))
            depth = tl.load(h_row + tl.load(osc + C.OSCILLATORS_MOD_DEPTH))
            phase0 = tl.load(h_row + tl.load(osc + C.OSCILLATORS_INITIAL_PHASE))
            if kind == C.OSC_FM:
                source = tl.load(osc + C.OSCILLATORS_SOURCE)
                slot = tl.load(osc_ptr + source * C.OSCILLATORS_N_COLS + C.OSCILLATORS_SLOT)
                modulator = tl.load(scratch_row + slot * BLOCK_T + tl.arange(0, BLOCK_T))
                f0_hz = 440.0 * m.exp2(((midi_f0 + tuning) - 69.0) / 12.0)
                freq = tl.minimum(tl.maximum(f0_hz + depth * f0_hz * modulator, 0.0), nyquist)
                inc = tl.where(mask_t, freq / sample_rate, 0.0)
                cycles, carry_v = _cycles(inc, carry_v, offs_v, i)
                angle = _reduced_angle(cycles, phase0, two_pi, pi).to(out_dtype)
                signal = (-m.cos(angle)).to(phase_dtype)
            else:
                pitch = _upsample(ctrl_row + tl.load(osc + C.OSCILLATORS_PITCH) * stride_co, i0, i1, w0, w1, mask_t)
                amp = _upsample(ctrl_row + tl.load(osc + C.OSCILLATORS_AMP) * stride_co, i0, i1, w0, w1, mask_t)
                midi = tl.minimum(tl.maximum((midi_f0 + tuning) + depth * pitch, 0.0), 127.0)
                inc = tl.where(mask_t, 440.0 * m.exp2((midi - 69.0) / 12.0) / sample_rate, 0.0)
                cycles, carry_v = _cycles(inc, carry_v, offs_v, i)
                angle = _reduced_angle(cycles, phase0, two_pi, pi).to(out_dtype)
                if kind == C.OSC_SINE:
                    wave = -m.cos(angle)
                else:
                    shape = tl.load(h_row + tl.load(osc + C.OSCILLATORS_SHAPE))
                    max_f0 = 440.0 * m.exp2(((midi_f0 + tuning) + tl.maximum(depth, 0.0) - 69.0) / 12.0)
                    partials = 12000.0 / (max_f0 * (m.log2(max_f0) * log10_2))
                    sharp = (pi * partials / 2.0).to(out_dtype)
                    square = m.tanh(sharp * -m.sin(angle), log2e.to(out_dtype))
                    shape = shape.to(out_dtype)
                    wave = (1.0 - shape / 2.0) * square * (1.0 + shape * -m.cos(angle))
                signal = wave.to(phase_dtype) * amp
            if FILTERS:  # constexpr: the scan is compiled only into programs that have filters
                f = tl.load(osc + C.OSCILLATORS_FILTER)
                if f >= 0:
                    state = _pick(state_f, offs_f, f)
                    signal, state = _lowpass(signal, h_row, flt_ptr, f, ctrl_row, stride_co, i0, i1, w0, w1, mask_t,
                                             state, two_pi, sample_rate, nyquist, BLOCK_T)
                    state_f = tl.where(offs_f == f, state, state_f)
            if FM:
                own_slot = tl.load(osc + C.OSCILLATORS_SLOT)
                if own_slot >= 0:  # an FM operator later in the table reads this chunk
                    tl.store(scratch_row + own_slot * BLOCK_T + tl.arange(0, BLOCK_T), signal)
                    tl.debug_barrier()
            mix += _pick(levels_v, offs_v, i) * signal.to(out_dtype)
        if FILTERS:
            if mix_filter >= 0:
                state = _pick(state_f, offs_f, mix_filter)
                filtered, state = _lowpass(mix.to(phase_dtype), h_row, flt_ptr, mix_filter, ctrl_row, stride_co, i0,
                                           i1, w0, w1, mask_t, state, two_pi, sample_rate, nyquist, BLOCK_T)
                state_f = tl.where(offs_f == mix_filter, state, state_f)
                mix = filtered.to(out_dtype)
        tl.store(out_row + offs_t, mix, mask=mask_t)
        peak = tl.maximum(peak, tl.where(mask_t, tl.abs(mix), 0.0))
    if NORMALIZE:
        top = tl.max(peak, axis=0)
        if top > 1.0:
            tl.debug_barrier()
            for t0 in range(0, n_samples, BLOCK_T):
                offs_t = t0 + tl.arange(0, BLOCK_T)
                mask_t = offs_t < n_samples
                x = tl.load(out_row + offs_t, mask=mask_t, other=0.0)
                tl.store(out_row + offs_t, x / top, mask=mask_t)


def n_rows(table: torch.Tensor) -> int:
    """A device table's rows: 0 for the one -1 that stands for a table without rows (`_device_tables`). A noise-only
    patch had its empty oscillator table read as one oscillator: theta's column -1 (a segfault in the interpreter,
    a read out of bounds on a GPU; found from outside)."""
    return table.shape[0] if table.dim() == 2 else 0


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def block_sizes(n_samples: int, phase_dtype: torch.dtype) -> dict[str, int]:
    """Audio chunk length and warps. A float32 phase keeps chunks at 256 samples: in-chunk partial sums of
    up to 256 x 0.8 cycles lose ~1e-5 cycles to rounding (the reference's float32 blocks are 128)."""
    block_t = 1024 if phase_dtype == torch.float64 else 256
    block_t = min(block_t, max(64, _next_pow2(n_samples)))
    return {"BLOCK_T": block_t, "num_warps": 4}


# Control tiles are (BLOCK_S inputs) x (BLOCK_C samples) with ~20 float64 temporaries per element (two ADSRs with
# pow, five LFO shapes). Compiled for sm_90 (python -m doppel_torch.backends.triton.aot), parametric (BLOCK_S 16)
# at BLOCK_C = 128 needs 255 registers + 1,352 B of spills and 1.7 MB of code; tiles of 256 elements need 128
# registers, no spills and 270 KB. Chosen from the compiler's resource usage, not yet timed on a GPU.
CONTROL_TILE = 256


def control_block_c(block_s: int) -> int:
    return max(16, CONTROL_TILE // block_s)


def n_slots(program) -> int:
    """Scratch rows per sound: the oscillators whose output an FM operator reads."""
    return max([-1, *program.column("oscillators", "slot")]) + 1  # (max's default= is not traceable by torch.compile)


def launch_config(program, phase_dtype: torch.dtype, noise: int, normalize: bool) -> dict[str, dict]:
    """Compile-time arguments (constexprs and launch options) of both kernels for one program: what `render`
    passes and what `aot` compiles ahead of time. One program instance per sound for both kernels.
    noise: NOISE_NONE (the patch has none), NOISE_KEYED (drawn in the kernel) or NOISE_GIVEN (a tensor)."""
    return _launch(program.rows("mod_inputs"), program.rows("mod_outputs"), program.rows("oscillators"),
                   program.rows("mixer"), program.rows("filters"), n_slots(program), program.n_samples,
                   program.n_control, phase_dtype, noise, normalize)


def _launch(n_in: int, n_out: int, n_osc: int, n_mix: int, n_filters: int, slots: int, n_samples: int,
            n_control: int, phase_dtype: torch.dtype, noise: int, normalize: bool) -> dict[str, dict]:
    cfg = block_sizes(n_samples, phase_dtype)
    block_s = max(2, _next_pow2(n_in))
    return {
        "control": dict(n_in=n_in, n_out=n_out, n_control=n_control, BLOCK_S=block_s, BLOCK_C=control_block_c(block_s)),
        "audio": dict(n_osc=n_osc, n_mix=n_mix, n_samples=n_samples, n_control=n_control, NOISE=int(noise),
                      NORMALIZE=bool(normalize), FM=slots > 0, FILTERS=n_filters > 0, BLOCK_T=cfg["BLOCK_T"], BLOCK_V=max(2, _next_pow2(n_osc)),
                      BLOCK_F=max(2, _next_pow2(n_filters)), num_warps=cfg["num_warps"]),
    }


@torch.library.triton_op("doppel_torch::triton_render", mutates_args={"out"})
def triton_render(human: torch.Tensor, keyboards: torch.Tensor, envelopes: torch.Tensor, lfos: torch.Tensor,
                  mod_inputs: torch.Tensor, matrix: torch.Tensor, oscillators: torch.Tensor, filters: torch.Tensor,
                  noise_table: torch.Tensor, mixer: torch.Tensor, consts: torch.Tensor, keys: torch.Tensor,
                  noise: Optional[torch.Tensor], out: torch.Tensor, n_control: int, n_filters: int, n_slots: int,
                  mix_filter: int, noise_mode: int, normalize: bool) -> None:
    """Both kernels on one batch, as a torch op (`torch.compile` sees the launches through `wrap_triton`).

    human: (B, m) parameters in human units, phase dtype; the program's int32 tables (a table without rows as one
    -1); consts: `columns.CONSTS` in the phase dtype; keys: (B, 2) int64 noise keys; noise: (B or 1, N) or None;
    writes out (B, N)."""
    batch, n_samples = out.shape
    n_out, n_in = matrix.shape
    phase_dtype = human.dtype
    launch = _launch(n_in, n_out, n_rows(oscillators), mixer.shape[0], n_filters, n_slots, n_samples, n_control,
                     phase_dtype, noise_mode, normalize)
    ctrl = torch.empty(batch, n_out, n_control, dtype=phase_dtype, device=out.device)
    wrap_triton(_control_kernel)[(batch,)](
        human, human.stride(0), keyboards, envelopes, lfos, mod_inputs, matrix, consts, ctrl, ctrl.stride(0),
        ctrl.stride(1), **launch["control"],
    )
    noise_arg = keys if noise is None else noise
    stride_nb = 0 if noise is None or noise.shape[0] == 1 else noise.stride(0)
    scratch = torch.empty(batch, max(1, n_slots) * launch["audio"]["BLOCK_T"], dtype=phase_dtype, device=out.device)
    wrap_triton(_audio_kernel)[(batch,)](
        human, human.stride(0), ctrl, ctrl.stride(0), ctrl.stride(1), keyboards, oscillators, filters, noise_table,
        mixer, consts, keys, noise_arg, stride_nb, scratch, scratch.stride(0), out, out.stride(0), mix_filter,
        **launch["audio"],
    )


def render(program, theta, *, noise, seed, indices, normalize, out, phase_dtype=None):
    """Render validated theta (B, m), clamped to [eps, 1], to audio (B, N) in theta's dtype (the backend contract of
    `doppel_torch.backends.base`).

    noise: None draws `rng.noise(seed, indices, N)` inside the kernel (bit-identical to the torch backend); or a
        (B, N) / (1, N) tensor. phase_dtype: dtype of control signals, frequencies and phase (default float64;
        float32 is faster and as inaccurate as an all-float32 render, see the module docstring).
    """
    device, out_dtype = theta.device, theta.dtype
    phase_dtype = torch.float64 if phase_dtype is None else phase_dtype
    if phase_dtype not in (torch.float32, torch.float64) or (out_dtype == torch.float64 and phase_dtype != torch.float64):
        raise ValueError(f"phase_dtype must be torch.float64 or (for float32 theta) torch.float32, got {phase_dtype}")
    batch, n_samples, n_control = theta.shape[0], program.n_samples, program.n_control
    if out is None:
        out = torch.empty(batch, n_samples, dtype=out_dtype, device=device)
    if batch == 0:
        return out
    tables = _device_tables(program, device)
    human = program.layout.table.to_human(theta.detach().to(phase_dtype)).contiguous()
    consts = _device_consts(program, device, phase_dtype)
    keys = torch.zeros(1, 2, dtype=torch.int64, device=device)
    if not program.rows("noise"):
        mode = NOISE_NONE
    elif noise is None:
        mode = NOISE_KEYED
        k1, k2 = rng.sound_keys(seed, rng.Stream.NOISE, indices)
        keys = torch.stack([k1, k2], dim=1).contiguous()
    else:
        mode = NOISE_GIVEN
        noise = noise.detach().contiguous()
    triton_render(human, tables["keyboards"], tables["envelopes"], tables["lfos"], tables["mod_inputs"],
                  tables["matrix"], tables["oscillators"], tables["filters"], tables["noise"], tables["mixer"], consts,
                  keys, noise if mode == NOISE_GIVEN else None, out, n_control, program.rows("filters"),
                  n_slots(program), program.mix_filter, mode, normalize)
    return out


def _device_cache(program) -> dict:
    """{(device, dtype): consts, device: padded tables}: what a render needs on the device, made once and kept on the
    program; while torch.compile traces, a fresh dict (the tensors become constants of the graph: Dynamo cannot
    trace a cache keyed by, or stored in, the frozen Program)."""
    if torch.compiler.is_compiling():
        return {}
    return program.__dict__.setdefault("_triton_device", {})


def _device_consts(program, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """`columns.CONSTS` of a program as a tensor on `device`, made once: a host-to-device copy per render would
    wait for the GPU's queued work (a host synchronisation)."""
    per_program = _device_cache(program)
    key = (device, dtype)
    if key not in per_program:
        per_program[key] = torch.tensor(_consts(program), dtype=dtype, device=device)
    return per_program[key]


def _consts(program) -> list[float]:
    n_samples, n_control = program.n_samples, program.n_control
    values = dict(
        two_pi=2.0 * math.pi, pi=math.pi, control_rate=program.control_rate, sample_rate=program.sample_rate,
        eps=program.eps, lfo_exponent=math.e, log10_2=math.log10(2.0),
        ctrl_scale=(n_control - 1) / (n_samples - 1) if n_samples > 1 else 0.0,
        nyquist=program.sample_rate / 2.0, log2e=math.log2(math.e),
    )
    return [values[k] for k in C.CONSTS]


def _device_tables(program, device: torch.device) -> dict[str, torch.Tensor]:
    """The program's tables on `device` (made once); a table without rows is never read, but Triton wants a real
    pointer: it gets one -1."""
    per_program = _device_cache(program)
    if device not in per_program:
        tables = {name: table.to(device) for name, table in program.tables.items()}
        for name, table in tables.items():
            if table.numel() == 0:
                tables[name] = torch.full((1,), -1, dtype=torch.int32, device=device)
        per_program[device] = tables
    return per_program[device]
