"""backend="triton"'s backward, in Triton: dL/d(human parameters) and dL/d noise from dL/d(mix), recomputed from
the parameters (no per-module audio is kept). The math is that of `backends/cpu/csrc/synth_cpu_grad.inc` (its header
writes out the adjoint of every stage); both kernels run one program per sound, in float64.

`_audio_grad_kernel` (chunks of BLOCK_T samples): pass 0 runs the forward (`_block`, as `synth._audio_kernel`) and
stores a checkpoint per chunk: every oscillator's wrapped phase carry and every filter's state at its start. Then the
chunks from last to first: the chunk recomputed from its checkpoint (FM sources' chunks to per-sound scratch rows),
then its adjoint: the mix filter and oscillator filters by a reverse `tl.associative_scan` of the recurrence with
the adjoint state mu = (1 - a) lambda carried into the earlier chunk; the mixer, the noise (dL/d noise for a given
tensor) and the VCAs; the waveforms; the phase by `tl.cumsum(reverse=True)` plus the sum carried from the later
chunks; VCO pitch and FM frequency, an FM operator's gradient to its source added to the source's gradient row
(the oscillators walked backwards in table order, so a source's row is complete when its turn comes); the
upsampling's adjoint into dL/d mods (B, n_out, C) by `tl.atomic_add`.

`_control_grad_kernel`: dL/d mods -> dL/d human for the mod matrix, LFOs and ADSRs, vectorised:
1. mod-input rows as (BLOCK_S, BLOCK_C) tiles, chunks of the control row from last to first: the forward
   recomputed (ADSRs, fixed-point LFO phase), insig bar = sum_o a_oi mods_o bar, a_oi bar = sum_t mods_o bar in_i;
   an LFO row's shape, weight and phase adjoint, its frequency adjoint by `tl.cumsum(reverse=True)` (the reversed
   cumulative sum of the phase); the envelope gradients of each row (its own signal, or an LFO's amplitude and
   rate envelopes) go to a per-sound scratch (n_in, 2, C);
2. envelope rows as (BLOCK_E, BLOCK_C) tiles: their gradients gathered from the scratch, then the ramps'
   adjoints (pow, the min / max clamps with torch's tie rules: a tie of torch.minimum sends half each way).
Gradients are accumulated into gh (B, m) float64 with `tl.atomic_add` (a keyboard's note duration is shared by
its envelopes; on a GPU the order of these float64 sums, and so their last bits, can vary between runs).
The peak normalisation and `to_human` are differentiated by torch (`render_differentiable`).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from doppel_torch import rng
from doppel_torch.backends import base
from doppel_torch.backends.triton import _math as m
from doppel_torch.backends.triton import columns as C
from doppel_torch.backends.triton import synth as kernels
from doppel_torch.backends.triton.synth import (LFO_MASK, LFO_SCALE, ROUND_MAGIC, _adsr, _next_pow2, _param, _pick,
                                                _ramp, _reduced_angle, _scalar, _scan_combine, _upsample, wrap_triton)


@triton.jit
def _ramp_grad(t, g, dur_s, start_s, alpha, control_rate, eps, log2e, INVERSE: tl.constexpr):
    """Adjoint of `synth._ramp` for gout g [R, CC] -> (d dur_s, d start_s, d alpha), each [R] (summed over t)."""
    dur = dur_s * control_rate
    shifted = t - start_s * control_rate
    r0 = tl.maximum(shifted, 0.0)
    positive = dur > 0
    safe = tl.where(positive, dur, 1.0)
    v = (r0 + eps) / safe + eps
    r = tl.minimum(v, 1.0)
    if INVERSE:
        r = 1.0 - r
    live = positive & (r > 0)
    safe_r = tl.where(live, r, 1.0)
    pw = m.pow_nonneg(safe_r, alpha)
    g_alpha = tl.where(live, g * pw * (m.log2(safe_r) / log2e), 0.0)
    gr = tl.where(live & (v <= 1.0), g * alpha * pw / safe_r, 0.0)
    if INVERSE:
        gr = -gr
    g_dur = gr * (-(r0 + eps) / (safe * safe)) * control_rate
    g_start = tl.where(shifted >= 0, gr * (-control_rate / safe), 0.0)
    return tl.sum(g_dur, axis=1), tl.sum(g_start, axis=1), tl.sum(g_alpha, axis=1)


@triton.jit
def _min_grad(a, b, g):
    """torch.minimum(a, b)'s gradient split (to a, to b)."""
    to_a = tl.where(a < b, g, tl.where(b < a, 0.0, 0.5 * g))
    return to_a, g - to_a


@triton.jit
def _lfo_chunk(t, mask_c, h_row, kb_ptr, env_ptr, lfo_ptr, index, mask_s, mask_l, amp_env_row, rate_env_row,
               control_rate, eps):
    """An LFO row's rate, its fixed-point steps and both envelopes over one chunk of control samples."""
    freq = _param(h_row, lfo_ptr, index, mask_l, C.LFOS_FREQUENCY, C.LFOS_N_COLS, 0.0)[:, None]
    depth = _param(h_row, lfo_ptr, index, mask_l, C.LFOS_MOD_DEPTH, C.LFOS_N_COLS, 0.0)[:, None]
    amp_env = _adsr(t, h_row, env_ptr, kb_ptr, amp_env_row, mask_s, control_rate, eps)
    rate_env = _adsr(t, h_row, env_ptr, kb_ptr, rate_env_row, mask_s, control_rate, eps)
    rate = freq + depth * rate_env
    inc = tl.where(mask_c[None, :], tl.maximum(rate, 0.0) / control_rate, 0.0)
    steps = ((inc.to(tl.float64) * LFO_SCALE + ROUND_MAGIC) - ROUND_MAGIC).to(tl.int64)
    return rate, steps, amp_env, rate_env, depth


@triton.jit
def _control_grad_kernel(
    h_ptr, stride_hb, kb_ptr, env_ptr, lfo_ptr, in_ptr, mat_ptr, consts_ptr, gmods_ptr, stride_gb, stride_go,
    scratch_ptr, stride_sb, gh_ptr, stride_ghb,
    n_in: tl.constexpr, n_out: tl.constexpr, n_env: tl.constexpr, n_control: tl.constexpr, BLOCK_S: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr, N_CHUNKS: tl.constexpr,
):
    pid_b = tl.program_id(0)
    h_row = h_ptr + pid_b * stride_hb
    gh_row = gh_ptr + pid_b * stride_ghb
    scratch_row = scratch_ptr + pid_b * stride_sb
    width = N_CHUNKS * BLOCK_C  # scratch row length per (input row, target)
    two_pi = tl.load(consts_ptr + C.CONST_TWO_PI)
    pi = tl.load(consts_ptr + C.CONST_PI)
    control_rate = tl.load(consts_ptr + C.CONST_CONTROL_RATE)
    eps = tl.load(consts_ptr + C.CONST_EPS)
    lfo_exponent = tl.load(consts_ptr + C.CONST_LFO_EXPONENT)
    log2e = tl.load(consts_ptr + C.CONST_LOG2E)

    # 1. Mod-input rows, chunks from last to first (the LFO phase's reversed cumulative sum carries backwards).
    offs_s = tl.arange(0, BLOCK_S)
    mask_s = offs_s < n_in
    kind = tl.load(in_ptr + offs_s * C.MOD_INPUTS_N_COLS + C.MOD_INPUTS_KIND, mask=mask_s, other=0)
    index = tl.load(in_ptr + offs_s * C.MOD_INPUTS_N_COLS + C.MOD_INPUTS_INDEX, mask=mask_s, other=0)
    is_lfo = kind == C.INPUT_LFO
    mask_l = mask_s & is_lfo
    amp_env_row = tl.where(is_lfo, tl.load(lfo_ptr + index * C.LFOS_N_COLS + C.LFOS_AMP_ENV, mask=mask_l, other=0),
                           index)
    rate_env_row = tl.where(is_lfo, tl.load(lfo_ptr + index * C.LFOS_N_COLS + C.LFOS_RATE_ENV, mask=mask_l, other=0),
                            index)
    phase0 = _param(h_row, lfo_ptr, index, mask_l, C.LFOS_INITIAL_PHASE, C.LFOS_N_COLS, 0.0)[:, None]
    raw_sin = _param(h_row, lfo_ptr, index, mask_l, C.LFOS_SIN, C.LFOS_N_COLS, 1.0)
    raw_tri = _param(h_row, lfo_ptr, index, mask_l, C.LFOS_TRI, C.LFOS_N_COLS, 1.0)
    raw_saw = _param(h_row, lfo_ptr, index, mask_l, C.LFOS_SAW, C.LFOS_N_COLS, 1.0)
    raw_rsaw = _param(h_row, lfo_ptr, index, mask_l, C.LFOS_RSAW, C.LFOS_N_COLS, 1.0)
    raw_sqr = _param(h_row, lfo_ptr, index, mask_l, C.LFOS_SQR, C.LFOS_N_COLS, 1.0)
    p_sin = m.pow_nonneg(raw_sin, lfo_exponent)
    p_tri = m.pow_nonneg(raw_tri, lfo_exponent)
    p_saw = m.pow_nonneg(raw_saw, lfo_exponent)
    p_rsaw = m.pow_nonneg(raw_rsaw, lfo_exponent)
    p_sqr = m.pow_nonneg(raw_sqr, lfo_exponent)
    total = p_sin + p_tri + p_saw + p_rsaw + p_sqr
    w_sin = (p_sin / total)[:, None]
    w_tri = (p_tri / total)[:, None]
    w_saw = (p_saw / total)[:, None]
    w_rsaw = (p_rsaw / total)[:, None]
    w_sqr = (p_sqr / total)[:, None]
    start = (((phase0.to(tl.float64) / two_pi.to(tl.float64)) * LFO_SCALE + ROUND_MAGIC) - ROUND_MAGIC).to(tl.int64)
    # The fixed-point phase steps of the whole row (exact int64 sums in any order, as the forward kernel).
    all_steps = tl.zeros((BLOCK_S,), dtype=tl.int64)
    for c in range(N_CHUNKS):
        offs_c = c * BLOCK_C + tl.arange(0, BLOCK_C)
        mask_c = offs_c < n_control
        _r, steps, _a, _e, _d = _lfo_chunk(offs_c.to(two_pi.dtype)[None, :], mask_c, h_row, kb_ptr, env_ptr, lfo_ptr,
                                           index, mask_s, mask_l, amp_env_row, rate_env_row, control_rate, eps)
        all_steps += tl.sum(steps, axis=1)
    later_steps = tl.zeros((BLOCK_S,), dtype=tl.int64)
    g_sin = tl.zeros((BLOCK_S,), dtype=two_pi.dtype)
    g_tri = tl.zeros((BLOCK_S,), dtype=two_pi.dtype)
    g_saw = tl.zeros((BLOCK_S,), dtype=two_pi.dtype)
    g_rsaw = tl.zeros((BLOCK_S,), dtype=two_pi.dtype)
    g_sqr = tl.zeros((BLOCK_S,), dtype=two_pi.dtype)
    g_later = tl.zeros((BLOCK_S,), dtype=two_pi.dtype)  # sum of u bar over the later chunks
    g_freq = tl.zeros((BLOCK_S,), dtype=two_pi.dtype)
    g_depth = tl.zeros((BLOCK_S,), dtype=two_pi.dtype)
    for cc in range(N_CHUNKS):
        c = N_CHUNKS - 1 - cc
        offs_c = c * BLOCK_C + tl.arange(0, BLOCK_C)
        mask_c = offs_c < n_control
        t = offs_c.to(two_pi.dtype)[None, :]
        rate, steps, amp_env, rate_env, depth = _lfo_chunk(t, mask_c, h_row, kb_ptr, env_ptr, lfo_ptr, index, mask_s,
                                                           mask_l, amp_env_row, rate_env_row, control_rate, eps)
        chunk_steps = tl.sum(steps, axis=1)
        before = all_steps - later_steps - chunk_steps
        later_steps += chunk_steps
        fixed = (before[:, None] + tl.cumsum(steps, axis=1)) & LFO_MASK
        u = (((fixed + start) & LFO_MASK).to(tl.float64) * (1.0 / LFO_SCALE)).to(two_pi.dtype)
        s_cos = (1.0 - m.cos(two_pi * u)) / 2.0
        s_sqr = tl.where((u > 0.25) & (u < 0.75), 1.0, tl.where((u == 0.25) | (u == 0.75), 0.5, 0.0))
        fold = 2.0 * u > 1.0
        s_tri = tl.where(fold, 2.0 - 2.0 * u, 2.0 * u)
        lfo = w_sin * s_cos + w_tri * s_tri + w_saw * u + w_rsaw * (1.0 - u) + w_sqr * s_sqr
        mask_sc = mask_s[:, None] & mask_c[None, :]
        sig = tl.where(mask_sc, tl.where(is_lfo[:, None], lfo * amp_env, amp_env), 0.0)
        gsig = tl.zeros((BLOCK_S, BLOCK_C), dtype=two_pi.dtype)
        for o in range(n_out):
            grow = tl.load(gmods_ptr + pid_b * stride_gb + o * stride_go + offs_c, mask=mask_c, other=0.0)
            cols = tl.load(mat_ptr + o * n_in + offs_s, mask=mask_s, other=0)
            weight = tl.load(h_row + cols, mask=mask_s, other=0.0)
            gsig += weight[:, None] * grow[None, :]
            tl.atomic_add(gh_row + cols, tl.sum(grow[None, :] * sig, axis=1), mask=mask_s)
        # LFO rows: sig = lfo * amp_env.
        g_raw = gsig * amp_env
        g_sin += tl.sum(g_raw * s_cos, axis=1)
        g_tri += tl.sum(g_raw * s_tri, axis=1)
        g_saw += tl.sum(g_raw * u, axis=1)
        g_rsaw += tl.sum(g_raw * (1.0 - u), axis=1)
        g_sqr += tl.sum(g_raw * s_sqr, axis=1)
        g_u = g_raw * (w_sin * pi * m.sin(two_pi * u) + w_tri * tl.where(fold, -2.0, 2.0) + w_saw - w_rsaw)
        g_u = tl.where(mask_l[:, None] & mask_c[None, :], g_u, 0.0)
        # u = frac(phase0 / 2 pi + sum_{s <= t} inc[s]): inc bar[s] = sum_{t >= s} u bar[t], carried backwards.
        g_inc = (tl.cumsum(g_u, axis=1, reverse=True) + g_later[:, None]) / control_rate
        g_later += tl.sum(g_u, axis=1)
        g_inc = tl.where(rate >= 0, g_inc, 0.0)
        g_freq += tl.sum(g_inc, axis=1)
        g_depth += tl.sum(g_inc * rate_env, axis=1)
        # Envelope gradients of each row: to its amplitude envelope (itself for an envelope row), to its rate envelope.
        rows = scratch_row + offs_s[:, None] * (2 * width) + offs_c[None, :]
        tl.store(rows, tl.where(is_lfo[:, None], gsig * lfo, gsig), mask=mask_sc)
        tl.store(rows + width, tl.where(is_lfo[:, None], g_inc * depth, 0.0), mask=mask_sc)
    dot = (g_sin * p_sin + g_tri * p_tri + g_saw * p_saw + g_rsaw * p_rsaw + g_sqr * p_sqr) / total
    e1 = lfo_exponent - 1.0
    lfo_cols = lfo_ptr + index * C.LFOS_N_COLS
    tl.atomic_add(gh_row + tl.load(lfo_cols + C.LFOS_SIN, mask=mask_l, other=0),
                  (g_sin - dot) / total * lfo_exponent * m.pow_nonneg(raw_sin, e1), mask=mask_l)
    tl.atomic_add(gh_row + tl.load(lfo_cols + C.LFOS_TRI, mask=mask_l, other=0),
                  (g_tri - dot) / total * lfo_exponent * m.pow_nonneg(raw_tri, e1), mask=mask_l)
    tl.atomic_add(gh_row + tl.load(lfo_cols + C.LFOS_SAW, mask=mask_l, other=0),
                  (g_saw - dot) / total * lfo_exponent * m.pow_nonneg(raw_saw, e1), mask=mask_l)
    tl.atomic_add(gh_row + tl.load(lfo_cols + C.LFOS_RSAW, mask=mask_l, other=0),
                  (g_rsaw - dot) / total * lfo_exponent * m.pow_nonneg(raw_rsaw, e1), mask=mask_l)
    tl.atomic_add(gh_row + tl.load(lfo_cols + C.LFOS_SQR, mask=mask_l, other=0),
                  (g_sqr - dot) / total * lfo_exponent * m.pow_nonneg(raw_sqr, e1), mask=mask_l)
    tl.atomic_add(gh_row + tl.load(lfo_cols + C.LFOS_INITIAL_PHASE, mask=mask_l, other=0), g_later / two_pi,
                  mask=mask_l)
    tl.atomic_add(gh_row + tl.load(lfo_cols + C.LFOS_FREQUENCY, mask=mask_l, other=0), g_freq, mask=mask_l)
    tl.atomic_add(gh_row + tl.load(lfo_cols + C.LFOS_MOD_DEPTH, mask=mask_l, other=0), g_depth, mask=mask_l)
    tl.debug_barrier()

    # 2. Envelope rows: their gradients gathered from the scratch chunk by chunk, then the ADSR's adjoint.
    offs_e = tl.arange(0, BLOCK_E)
    mask_e = offs_e < n_env
    attack = _param(h_row, env_ptr, offs_e, mask_e, C.ENVELOPES_ATTACK, C.ENVELOPES_N_COLS, 1.0)
    decay = _param(h_row, env_ptr, offs_e, mask_e, C.ENVELOPES_DECAY, C.ENVELOPES_N_COLS, 1.0)
    sustain = _param(h_row, env_ptr, offs_e, mask_e, C.ENVELOPES_SUSTAIN, C.ENVELOPES_N_COLS, 1.0)
    release = _param(h_row, env_ptr, offs_e, mask_e, C.ENVELOPES_RELEASE, C.ENVELOPES_N_COLS, 1.0)
    alpha = _param(h_row, env_ptr, offs_e, mask_e, C.ENVELOPES_ALPHA, C.ENVELOPES_N_COLS, 1.0)
    keyboard = tl.load(env_ptr + offs_e * C.ENVELOPES_N_COLS + C.ENVELOPES_KEYBOARD, mask=mask_e, other=0)
    note_on = _param(h_row, kb_ptr, keyboard, mask_e, C.KEYBOARDS_DURATION, C.KEYBOARDS_N_COLS, 1.0)
    new_attack = tl.minimum(attack, note_on)
    held = note_on - attack
    new_decay = tl.minimum(tl.maximum(held, 0.0), decay)
    a2, na2, nd2, s2, r2, d2 = (alpha[:, None], new_attack[:, None], new_decay[:, None], sustain[:, None],
                                release[:, None], note_on[:, None])
    g_sustain = tl.zeros((BLOCK_E,), dtype=two_pi.dtype)
    gn_attack = tl.zeros((BLOCK_E,), dtype=two_pi.dtype)
    gn_decay = tl.zeros((BLOCK_E,), dtype=two_pi.dtype)
    g_release = tl.zeros((BLOCK_E,), dtype=two_pi.dtype)
    g_note = tl.zeros((BLOCK_E,), dtype=two_pi.dtype)
    g_alpha = tl.zeros((BLOCK_E,), dtype=two_pi.dtype)
    for c in range(N_CHUNKS):
        offs_c = c * BLOCK_C + tl.arange(0, BLOCK_C)
        mask_c = offs_c < n_control
        t = offs_c.to(two_pi.dtype)[None, :]
        g_env = tl.zeros((BLOCK_E, BLOCK_C), dtype=two_pi.dtype)
        for i in range(n_in):
            kind_i = tl.load(in_ptr + i * C.MOD_INPUTS_N_COLS + C.MOD_INPUTS_KIND)
            index_i = tl.load(in_ptr + i * C.MOD_INPUTS_N_COLS + C.MOD_INPUTS_INDEX)
            lfo_i = kind_i == C.INPUT_LFO
            lfo_row = tl.where(lfo_i, index_i, 0)
            amp_i = tl.where(lfo_i, tl.load(lfo_ptr + lfo_row * C.LFOS_N_COLS + C.LFOS_AMP_ENV), index_i)
            rate_i = tl.where(lfo_i, tl.load(lfo_ptr + lfo_row * C.LFOS_N_COLS + C.LFOS_RATE_ENV), -1)
            r_amp = tl.load(scratch_row + i * (2 * width) + offs_c, mask=mask_c, other=0.0)
            r_rate = tl.load(scratch_row + i * (2 * width) + width + offs_c, mask=mask_c, other=0.0)
            g_env += tl.where(offs_e[:, None] == amp_i, r_amp[None, :], 0.0)
            g_env += tl.where(offs_e[:, None] == rate_i, r_rate[None, :], 0.0)
        attack_sig = _ramp(t, na2, 0.0 * na2, a2, control_rate, eps, False)
        decay_ramp = _ramp(t, nd2, na2, a2, control_rate, eps, True)
        decay_sig = (1.0 - s2) * decay_ramp + s2
        release_sig = _ramp(t, r2, d2, a2, control_rate, eps, True)
        g_dec = g_env * attack_sig * release_sig
        g_sustain += tl.sum(g_dec * (1.0 - decay_ramp), axis=1)
        g_a, _unused, g_al = _ramp_grad(t, g_env * decay_sig * release_sig, na2, 0.0 * na2, a2, control_rate, eps,
                                        log2e, False)
        gn_attack += g_a
        g_alpha += g_al
        g_d, g_start, g_al = _ramp_grad(t, g_dec * (1.0 - s2), nd2, na2, a2, control_rate, eps, log2e, True)
        gn_decay += g_d
        gn_attack += g_start
        g_alpha += g_al
        g_r, g_n, g_al = _ramp_grad(t, g_env * attack_sig * decay_sig, r2, d2, a2, control_rate, eps, log2e, True)
        g_release += g_r
        g_note += g_n
        g_alpha += g_al
    g_held, g_decay = _min_grad(tl.maximum(held, 0.0), decay, gn_decay)
    g_held = tl.where(held >= 0, g_held, 0.0)  # torch.clamp(min=0) passes the gradient at 0
    g_attack, g_note_a = _min_grad(attack, note_on, gn_attack)
    g_attack -= g_held
    g_note += g_note_a + g_held
    env_cols = env_ptr + offs_e * C.ENVELOPES_N_COLS
    tl.atomic_add(gh_row + tl.load(env_cols + C.ENVELOPES_ATTACK, mask=mask_e, other=0), g_attack, mask=mask_e)
    tl.atomic_add(gh_row + tl.load(env_cols + C.ENVELOPES_DECAY, mask=mask_e, other=0), g_decay, mask=mask_e)
    tl.atomic_add(gh_row + tl.load(env_cols + C.ENVELOPES_SUSTAIN, mask=mask_e, other=0), g_sustain, mask=mask_e)
    tl.atomic_add(gh_row + tl.load(env_cols + C.ENVELOPES_RELEASE, mask=mask_e, other=0), g_release, mask=mask_e)
    tl.atomic_add(gh_row + tl.load(env_cols + C.ENVELOPES_ALPHA, mask=mask_e, other=0), g_alpha, mask=mask_e)
    tl.atomic_add(gh_row + tl.load(kb_ptr + keyboard * C.KEYBOARDS_N_COLS + C.KEYBOARDS_DURATION, mask=mask_e,
                                   other=0), g_note, mask=mask_e)


def control_grad(program, human: torch.Tensor, gmods: torch.Tensor, gh: torch.Tensor, tables, consts) -> None:
    """Accumulate into gh (B, m) float64 the adjoint of the control rate for gmods = dL/d mods (B, n_out, C)."""
    batch = human.shape[0]
    launch = grad_launch_config(program, kernels.NOISE_NONE)["control_grad"]
    scratch = torch.empty(batch, launch["n_in"] * 2 * launch["BLOCK_C"] * launch["N_CHUNKS"], dtype=human.dtype,
                          device=human.device)
    wrap_triton(_control_grad_kernel)[(batch,)](
        human, human.stride(0), tables["keyboards"], tables["envelopes"], tables["lfos"], tables["mod_inputs"],
        tables["matrix"], consts, gmods, gmods.stride(0), gmods.stride(1), scratch, scratch.stride(0), gh,
        gh.stride(0), **launch,
    )


LN2_12 = tl.constexpr(0.057762265046662105)  # ln(2) / 12: d midi_to_hz(m) / dm = midi_to_hz(m) ln(2) / 12


@triton.jit
def _lpf_coef(h_row, flt_ptr, f, ctrl_row, stride_co, i0, i1, w0, w1, mask_t, two_pi, sample_rate, nyquist):
    """Filters row f over one chunk: (a, the cutoff's unclamped mask, w, the control signal, depth)."""
    cutoff = _scalar(h_row, flt_ptr, f, C.FILTERS_CUTOFF, C.FILTERS_N_COLS)
    depth = _scalar(h_row, flt_ptr, f, C.FILTERS_MOD_DEPTH, C.FILTERS_N_COLS)
    control_row = tl.load(flt_ptr + f * C.FILTERS_N_COLS + C.FILTERS_CONTROL)
    control = _upsample(ctrl_row + control_row * stride_co, i0, i1, w0, w1, mask_t)
    raw_hz = 440.0 * m.exp2((cutoff + depth * control - 69.0) / 12.0)
    hz = tl.minimum(raw_hz, nyquist)
    w = (two_pi / sample_rate) * hz
    return w / (1.0 + w), raw_hz <= nyquist, w, control, depth


@triton.jit
def _lpf_run(a, x, state):
    decay, total = tl.associative_scan((1.0 - a, a * x), 0, _scan_combine)
    y = decay * state + total
    return y


@triton.jit
def _lpf_adjoint(gy, a, x, y, unclamped, w, control, depth, lam, mask_t):
    """Adjoint of y[n] = a x + (1 - a) y[n - 1] over one chunk, from gy and the carry lam (mu of the later chunk's
    first sample, mu[n] = (1 - a[n]) lambda[n]): (gx, mu of this chunk's first sample, d cutoff, d depth, d control).
    lambda[n] = gy[n] + mu[n + 1] = mu[n] / (1 - a[n]); x[n] - y[n - 1] = (x[n] - y[n]) / (1 - a[n])."""
    d = 1.0 - a
    prod, part = tl.associative_scan((d, d * gy), 0, _scan_combine, reverse=True)
    mu = prod * lam + part
    lmb = mu / d
    gx = a * lmb
    g_w = lmb * (x - y) * d  # abar (1 - a)^2, abar = lambda (x - y) / (1 - a)
    g_m = tl.where(unclamped & mask_t, g_w * w * LN2_12, 0.0)
    first = tl.sum(tl.where(tl.arange(0, gy.shape[0]) == 0, mu, 0.0), axis=0)
    return gx, first, tl.sum(g_m, axis=0), tl.sum(g_m * control, axis=0), g_m * depth


@triton.jit
def _up_adjoint(g_row_ptr, g, i0, i1, w0, w1, mask):
    """Adjoint of `_upsample`: g (chunk) into the control row's gradient."""
    tl.atomic_add(g_row_ptr + i0, w0 * g, mask=mask)
    tl.atomic_add(g_row_ptr + i1, w1 * g, mask=mask)


@triton.jit
def _osc(i, osc_ptr, h_row, kb_ptr, ctrl_row, stride_co, scratch_row, i0, i1, w0, w1, mask_t, carry, two_pi, pi,
         sample_rate, log10_2, nyquist, log2e, BLOCK_T: tl.constexpr):
    """Oscillator i over one chunk from its phase carry: (signal before its filter, next carry, inc, sin theta,
    cos theta, wave, pitch or modulator, amp, tanh, A, unclamped mask), theta = 2 pi cycles + phase0."""
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
        drive = tl.load(scratch_row + slot * BLOCK_T + tl.arange(0, BLOCK_T))
        f0_hz = 440.0 * m.exp2(((midi_f0 + tuning) - 69.0) / 12.0)
        raw = f0_hz + depth * f0_hz * drive
        unclamped = (raw >= 0) & (raw <= nyquist)
        inc = tl.where(mask_t, tl.minimum(tl.maximum(raw, 0.0), nyquist) / sample_rate, 0.0)
        amp = 1.0 + 0.0 * inc
    else:
        drive = _upsample(ctrl_row + tl.load(osc + C.OSCILLATORS_PITCH) * stride_co, i0, i1, w0, w1, mask_t)
        amp = _upsample(ctrl_row + tl.load(osc + C.OSCILLATORS_AMP) * stride_co, i0, i1, w0, w1, mask_t)
        raw = (midi_f0 + tuning) + depth * drive
        unclamped = (raw >= 0) & (raw <= 127.0)
        midi = tl.minimum(tl.maximum(raw, 0.0), 127.0)
        inc = tl.where(mask_t, 440.0 * m.exp2((midi - 69.0) / 12.0) / sample_rate, 0.0)
    carry_next = m.frac(carry + tl.sum(inc, axis=0))
    cycles = m.frac(carry + tl.cumsum(inc, axis=0))
    angle = _reduced_angle(cycles, phase0, two_pi, pi)
    sin_t = -m.sin(angle)
    cos_t = -m.cos(angle)
    sharp = 0.0 * phase0
    square = 0.0 * inc
    if kind == C.OSC_SQUARE_SAW:
        shape = tl.load(h_row + tl.load(osc + C.OSCILLATORS_SHAPE))
        max_f0 = 440.0 * m.exp2(((midi_f0 + tuning) + tl.maximum(depth, 0.0) - 69.0) / 12.0)
        partials = 12000.0 / (max_f0 * (m.log2(max_f0) * log10_2))
        sharp = pi * partials / 2.0
        square = m.tanh(sharp * sin_t, log2e)
        wave = (1.0 - shape / 2.0) * square * (1.0 + shape * cos_t)
    else:
        wave = cos_t
    return wave * amp, carry_next, inc, sin_t, cos_t, wave, drive, amp, square, sharp, unclamped


@triton.jit
def _block(h_row, ctrl_row, stride_co, kb_ptr, osc_ptr, flt_ptr, noise_tab_ptr, scratch_row, levels_v, noise_level,
           noise, t0, carry_v, state_f, mix_filter, two_pi, pi, sample_rate, log10_2, ctrl_scale, nyquist, log2e,
           n_osc: tl.constexpr, n_samples: tl.constexpr, n_control: tl.constexpr, NOISE: tl.constexpr,
           FM: tl.constexpr, FILTERS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr,
           BLOCK_F: tl.constexpr):
    """The forward of the chunk at t0 from its carries (float64), as `synth._audio_kernel`; writes the FM sources'
    chunks to the scratch slots. Returns (mix before the mix filter, output, carries, filter states, noise amp)."""
    offs_t = t0 + tl.arange(0, BLOCK_T)
    mask_t = offs_t < n_samples
    pos = offs_t.to(two_pi.dtype) * ctrl_scale
    i0 = pos.to(tl.int32)
    w1 = pos - i0.to(two_pi.dtype)
    w0 = 1.0 - w1
    i1 = tl.minimum(i0 + 1, n_control - 1)
    offs_v = tl.arange(0, BLOCK_V)
    offs_f = tl.arange(0, BLOCK_F)
    mix = tl.zeros((BLOCK_T,), dtype=two_pi.dtype)
    noise_amp = 0.0 * mix
    if NOISE != 0:
        noise_row = tl.load(noise_tab_ptr + C.NOISE_AMP)
        noise_amp = _upsample(ctrl_row + noise_row * stride_co, i0, i1, w0, w1, mask_t)
        mix += noise_level * (noise * noise_amp)
    if FM:
        tl.debug_barrier()
    next_v = carry_v
    for i in range(n_osc):
        osc = osc_ptr + i * C.OSCILLATORS_N_COLS
        signal, carry, _a, _b, _c, _d, _e, _f, _g, _h, _k = _osc(
            i, osc_ptr, h_row, kb_ptr, ctrl_row, stride_co, scratch_row, i0, i1, w0, w1, mask_t,
            _pick(carry_v, offs_v, i), two_pi, pi, sample_rate, log10_2, nyquist, log2e, BLOCK_T)
        next_v = tl.where(offs_v == i, carry, next_v)
        if FILTERS:
            f = tl.load(osc + C.OSCILLATORS_FILTER)
            if f >= 0:
                a, _u, _w, _ct, _dp = _lpf_coef(h_row, flt_ptr, f, ctrl_row, stride_co, i0, i1, w0, w1, mask_t, two_pi,
                                                sample_rate, nyquist)
                signal = _lpf_run(a, signal, _pick(state_f, offs_f, f))
                last = tl.sum(tl.where(tl.arange(0, BLOCK_T) == BLOCK_T - 1, signal, 0.0), axis=0)
                state_f = tl.where(offs_f == f, last, state_f)
        if FM:
            own_slot = tl.load(osc + C.OSCILLATORS_SLOT)
            if own_slot >= 0:
                tl.store(scratch_row + own_slot * BLOCK_T + tl.arange(0, BLOCK_T), signal)
                tl.debug_barrier()
        mix += _pick(levels_v, offs_v, i) * signal
    post = mix
    if FILTERS:
        if mix_filter >= 0:
            a, _u, _w, _ct, _dp = _lpf_coef(h_row, flt_ptr, mix_filter, ctrl_row, stride_co, i0, i1, w0, w1, mask_t,
                                            two_pi, sample_rate, nyquist)
            post = _lpf_run(a, mix, _pick(state_f, offs_f, mix_filter))
            last = tl.sum(tl.where(tl.arange(0, BLOCK_T) == BLOCK_T - 1, post, 0.0), axis=0)
            state_f = tl.where(offs_f == mix_filter, last, state_f)
    return mix, post, next_v, state_f, noise_amp


@triton.jit
def _audio_grad_kernel(
    h_ptr, stride_hb, ctrl_ptr, stride_cb, stride_co, kb_ptr, osc_ptr, flt_ptr, noise_tab_ptr, mix_ptr, consts_ptr,
    keys_ptr, noise_ptr, stride_nb, scratch_ptr, gscratch_ptr, stride_sb, ckpt_ptr, stride_kb, grad_ptr, stride_gb,
    gctrl_ptr, stride_gcb, stride_gco, gh_ptr, stride_ghb, gnoise_ptr, stride_gnb, mix_filter,
    n_osc: tl.constexpr, n_mix: tl.constexpr, n_samples: tl.constexpr, n_control: tl.constexpr,
    NOISE: tl.constexpr, FM: tl.constexpr, FILTERS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr,
    BLOCK_F: tl.constexpr, N_BLOCKS: tl.constexpr,
):
    pid_b = tl.program_id(0)
    h_row = h_ptr + pid_b * stride_hb
    ctrl_row = ctrl_ptr + pid_b * stride_cb
    gctrl_row = gctrl_ptr + pid_b * stride_gcb
    gh_row = gh_ptr + pid_b * stride_ghb
    scratch_row = scratch_ptr + pid_b * stride_sb
    gscratch_row = gscratch_ptr + pid_b * stride_sb
    ckpt_row = ckpt_ptr + pid_b * stride_kb
    two_pi, pi, sample_rate, log10_2, ctrl_scale, nyquist, log2e = kernels.audio_constants(consts_ptr)
    offs_v = tl.arange(0, BLOCK_V)
    offs_f = tl.arange(0, BLOCK_F)
    levels_v = tl.zeros((BLOCK_V,), dtype=two_pi.dtype)
    level_cols = tl.full((BLOCK_V,), -1, tl.int32)
    noise_level = 0.0 * two_pi
    noise_col = -1
    for j in range(n_mix):
        source = tl.load(mix_ptr + j * C.MIXER_N_COLS + C.MIXER_SOURCE)
        index = tl.load(mix_ptr + j * C.MIXER_N_COLS + C.MIXER_INDEX)
        col = tl.load(mix_ptr + j * C.MIXER_N_COLS + C.MIXER_LEVEL)
        level = tl.load(h_row + col)
        hit = (offs_v == index) & (source == C.MIX_OSCILLATOR)
        levels_v = tl.where(hit, level, levels_v)
        level_cols = tl.where(hit, col, level_cols)
        if source == C.MIX_NOISE:
            noise_level = level
            noise_col = col
    k1 = tl.zeros((), tl.uint32)
    k2 = tl.zeros((), tl.uint32)
    if NOISE == 1:
        k1 = tl.load(keys_ptr + 2 * pid_b).to(tl.uint32)
        k2 = tl.load(keys_ptr + 2 * pid_b + 1).to(tl.uint32)
    # 0. Checkpoints: every oscillator's phase carry and every filter's state at each chunk's start.
    carry_v = tl.zeros((BLOCK_V,), dtype=two_pi.dtype)
    state_f = tl.zeros((BLOCK_F,), dtype=two_pi.dtype)
    for b in range(N_BLOCKS):
        t0 = b * BLOCK_T
        tl.store(ckpt_row + b * (BLOCK_V + BLOCK_F) + offs_v, carry_v)
        tl.store(ckpt_row + b * (BLOCK_V + BLOCK_F) + BLOCK_V + offs_f, state_f)
        offs_t = t0 + tl.arange(0, BLOCK_T)
        mask_t = offs_t < n_samples
        noise = 0.0 * offs_t.to(two_pi.dtype)
        if NOISE != 0:
            noise = kernels.noise_chunk(noise_ptr, stride_nb, pid_b, k1, k2, offs_t, mask_t, NOISE, tl.float64)
        _m, _p, carry_v, state_f, _na = _block(
            h_row, ctrl_row, stride_co, kb_ptr, osc_ptr, flt_ptr, noise_tab_ptr, scratch_row, levels_v, noise_level,
            noise, t0, carry_v, state_f, mix_filter, two_pi, pi, sample_rate, log10_2, ctrl_scale, nyquist, log2e,
            n_osc, n_samples, n_control, NOISE, FM, FILTERS, BLOCK_T, BLOCK_V, BLOCK_F)
    tl.debug_barrier()
    # 1. The chunks from last to first: recomputed from their checkpoints, then run backwards.
    g_carry_v = tl.zeros((BLOCK_V,), dtype=two_pi.dtype)  # sum of thetabar over the later chunks, per oscillator
    lam_f = tl.zeros((BLOCK_F,), dtype=two_pi.dtype)      # mu = (1 - a) lambda at the later chunk's first sample
    for bb in range(N_BLOCKS):
        b = N_BLOCKS - 1 - bb
        t0 = b * BLOCK_T
        carry0 = tl.load(ckpt_row + b * (BLOCK_V + BLOCK_F) + offs_v)
        state0 = tl.load(ckpt_row + b * (BLOCK_V + BLOCK_F) + BLOCK_V + offs_f)
        offs_t = t0 + tl.arange(0, BLOCK_T)
        mask_t = offs_t < n_samples
        pos = offs_t.to(two_pi.dtype) * ctrl_scale
        i0 = pos.to(tl.int32)
        w1 = pos - i0.to(two_pi.dtype)
        w0 = 1.0 - w1
        i1 = tl.minimum(i0 + 1, n_control - 1)
        noise = 0.0 * pos
        if NOISE != 0:
            noise = kernels.noise_chunk(noise_ptr, stride_nb, pid_b, k1, k2, offs_t, mask_t, NOISE, tl.float64)
        mix, post, _cv, _sf, noise_amp = _block(
            h_row, ctrl_row, stride_co, kb_ptr, osc_ptr, flt_ptr, noise_tab_ptr, scratch_row, levels_v, noise_level,
            noise, t0, carry0, state0, mix_filter, two_pi, pi, sample_rate, log10_2, ctrl_scale, nyquist, log2e,
            n_osc, n_samples, n_control, NOISE, FM, FILTERS, BLOCK_T, BLOCK_V, BLOCK_F)
        g_mix = tl.load(grad_ptr + pid_b * stride_gb + offs_t, mask=mask_t, other=0.0)
        if FILTERS:
            if mix_filter >= 0:
                a, unc, w, ctl, dep = _lpf_coef(h_row, flt_ptr, mix_filter, ctrl_row, stride_co, i0, i1, w0, w1,
                                                mask_t, two_pi, sample_rate, nyquist)
                g_mix, lam, g_cut, g_dep, g_ctl = _lpf_adjoint(g_mix, a, mix, post, unc, w, ctl, dep,
                                                               _pick(lam_f, offs_f, mix_filter), mask_t)
                lam_f = tl.where(offs_f == mix_filter, lam, lam_f)
                flt = flt_ptr + mix_filter * C.FILTERS_N_COLS
                tl.atomic_add(gh_row + tl.load(flt + C.FILTERS_CUTOFF), g_cut)
                tl.atomic_add(gh_row + tl.load(flt + C.FILTERS_MOD_DEPTH), g_dep)
                _up_adjoint(gctrl_row + tl.load(flt + C.FILTERS_CONTROL) * stride_gco, g_ctl, i0, i1, w0, w1, mask_t)
        g_mix = tl.where(mask_t, g_mix, 0.0)
        if NOISE != 0:
            noise_row = tl.load(noise_tab_ptr + C.NOISE_AMP)
            tl.atomic_add(gh_row + noise_col, tl.sum(g_mix * noise * noise_amp, axis=0))
            _up_adjoint(gctrl_row + noise_row * stride_gco, noise_level * g_mix * noise, i0, i1, w0, w1, mask_t)
            if NOISE == 2:
                tl.store(gnoise_ptr + pid_b * stride_gnb + offs_t, noise_level * g_mix * noise_amp, mask=mask_t)
        if FM:
            for i in range(n_osc):
                own_slot = tl.load(osc_ptr + i * C.OSCILLATORS_N_COLS + C.OSCILLATORS_SLOT)
                if own_slot >= 0:
                    tl.store(gscratch_row + own_slot * BLOCK_T + tl.arange(0, BLOCK_T), 0.0 * pos)
            tl.debug_barrier()
        for ii in range(n_osc):
            i = n_osc - 1 - ii
            osc = osc_ptr + i * C.OSCILLATORS_N_COLS
            kind = tl.load(osc + C.OSCILLATORS_KIND)
            signal, _next, inc, sin_t, cos_t, wave, drive, amp, square, sharp, unclamped = _osc(
                i, osc_ptr, h_row, kb_ptr, ctrl_row, stride_co, scratch_row, i0, i1, w0, w1, mask_t,
                _pick(carry0, offs_v, i), two_pi, pi, sample_rate, log10_2, nyquist, log2e, BLOCK_T)
            g_out = _pick(levels_v, offs_v, i) * g_mix
            if FM:
                own_slot = tl.load(osc + C.OSCILLATORS_SLOT)
                if own_slot >= 0:
                    g_out += tl.load(gscratch_row + own_slot * BLOCK_T + tl.arange(0, BLOCK_T))
            out = signal
            if FILTERS:
                f = tl.load(osc + C.OSCILLATORS_FILTER)
                if f >= 0:
                    a, unc, w, ctl, dep = _lpf_coef(h_row, flt_ptr, f, ctrl_row, stride_co, i0, i1, w0, w1, mask_t,
                                                    two_pi, sample_rate, nyquist)
                    out = _lpf_run(a, signal, _pick(state0, offs_f, f))
                    g_out, lam, g_cut, g_dep, g_ctl = _lpf_adjoint(g_out, a, signal, out, unc, w, ctl, dep,
                                                                   _pick(lam_f, offs_f, f), mask_t)
                    lam_f = tl.where(offs_f == f, lam, lam_f)
                    flt = flt_ptr + f * C.FILTERS_N_COLS
                    tl.atomic_add(gh_row + tl.load(flt + C.FILTERS_CUTOFF), g_cut)
                    tl.atomic_add(gh_row + tl.load(flt + C.FILTERS_MOD_DEPTH), g_dep)
                    _up_adjoint(gctrl_row + tl.load(flt + C.FILTERS_CONTROL) * stride_gco, g_ctl, i0, i1, w0, w1,
                                mask_t)
            level_col = tl.sum(tl.where(offs_v == i, level_cols, 0), axis=0)
            if level_col >= 0:
                tl.atomic_add(gh_row + level_col, tl.sum(g_mix * out, axis=0))
            g_out = tl.where(mask_t, g_out, 0.0)
            keyboard = tl.load(osc + C.OSCILLATORS_KEYBOARD)
            f0_col = tl.load(kb_ptr + keyboard * C.KEYBOARDS_N_COLS + C.KEYBOARDS_MIDI_F0)
            tuning_col = tl.load(osc + C.OSCILLATORS_TUNING)
            depth_col = tl.load(osc + C.OSCILLATORS_MOD_DEPTH)
            midi_f0 = tl.load(h_row + f0_col)
            tuning = tl.load(h_row + tuning_col)
            depth = tl.load(h_row + depth_col)
            g_wave = g_out
            if kind != C.OSC_FM:  # VCA
                _up_adjoint(gctrl_row + tl.load(osc + C.OSCILLATORS_AMP) * stride_gco, g_out * wave, i0, i1, w0, w1,
                            mask_t)
                g_wave = g_out * amp
            if kind == C.OSC_SQUARE_SAW:
                shape_col = tl.load(osc + C.OSCILLATORS_SHAPE)
                shape = tl.load(h_row + shape_col)
                half = 1.0 - shape / 2.0
                sech2 = 1.0 - square * square
                body = 1.0 + shape * cos_t
                g_theta = g_wave * half * (sech2 * sharp * cos_t * body - square * shape * sin_t)
                tl.atomic_add(gh_row + shape_col, tl.sum(g_wave * (-0.5 * square * body + half * square * cos_t),
                                                         axis=0))
                g_sharp = tl.sum(g_wave * half * sech2 * sin_t * body, axis=0)
                max_f0 = 440.0 * m.exp2(((midi_f0 + tuning) + tl.maximum(depth, 0.0) - 69.0) / 12.0)
                log_f = m.log2(max_f0) * log10_2
                partials = 12000.0 / (max_f0 * log_f)
                g_max = g_sharp * (pi / 2.0) * (-partials * (log_f + log10_2 * log2e) / log_f * LN2_12)
                tl.atomic_add(gh_row + f0_col, g_max)
                tl.atomic_add(gh_row + tuning_col, g_max)
                if depth >= 0:  # torch.clamp(min=0) passes the gradient at 0
                    tl.atomic_add(gh_row + depth_col, g_max)
            else:
                g_theta = -sin_t * g_wave
            g_theta = tl.where(mask_t, g_theta, 0.0)
            tl.atomic_add(gh_row + tl.load(osc + C.OSCILLATORS_INITIAL_PHASE), tl.sum(g_theta, axis=0))
            later = _pick(g_carry_v, offs_v, i)
            g_inc = two_pi * (tl.cumsum(g_theta, axis=0, reverse=True) + later)
            g_carry_v = tl.where(offs_v == i, later + tl.sum(g_theta, axis=0), g_carry_v)
            g_inc = tl.where(mask_t & unclamped, g_inc, 0.0)
            if kind == C.OSC_FM:
                g_f = g_inc / sample_rate
                f0_hz = 440.0 * m.exp2(((midi_f0 + tuning) - 69.0) / 12.0)
                g_base = tl.sum(g_f * (1.0 + depth * drive), axis=0) * f0_hz * LN2_12
                tl.atomic_add(gh_row + depth_col, tl.sum(g_f * f0_hz * drive, axis=0))
                source = tl.load(osc + C.OSCILLATORS_SOURCE)
                slot = tl.load(osc_ptr + source * C.OSCILLATORS_N_COLS + C.OSCILLATORS_SLOT)
                g_src = gscratch_row + slot * BLOCK_T + tl.arange(0, BLOCK_T)
                tl.store(g_src, tl.load(g_src) + g_f * depth * f0_hz)
                tl.debug_barrier()
            else:
                g_midi = g_inc * inc * LN2_12
                g_base = tl.sum(g_midi, axis=0)
                tl.atomic_add(gh_row + depth_col, tl.sum(g_midi * drive, axis=0))
                _up_adjoint(gctrl_row + tl.load(osc + C.OSCILLATORS_PITCH) * stride_gco, g_midi * depth, i0, i1, w0,
                            w1, mask_t)
            tl.atomic_add(gh_row + f0_col, g_base)
            tl.atomic_add(gh_row + tuning_col, g_base)


# Control tiles (rows x BLOCK_C samples) of the backward: chunks from last to first keep the tile small (the whole
# 480-sample row as one tile spilled 1.3-6.4 KB per thread on sm_90).
CONTROL_GRAD_TILE = 128


def _grad_launch(n_in: int, n_out: int, n_env: int, n_osc: int, n_mix: int, n_filters: int, slots: int,
                 n_samples: int, n_control: int, noise_mode: int) -> dict[str, dict]:
    """Compile-time arguments of both backward kernels (float64 throughout)."""
    audio = kernels._launch(n_in, n_out, n_osc, n_mix, n_filters, slots, n_samples, n_control, torch.float64,
                            noise_mode, False)["audio"]
    audio.pop("NORMALIZE")
    # Chosen from sm_90 resource usage (aot --grad), not yet timed: stack per thread, voice / voicefm / parametric /
    # filtered / fm_chain: 1,024 samples at 8 warps 48 / 112 / 120 / 208 / - B; 512 at 8 warps: filtered 48, fm_chain
    # 144; 512 at 4 warps: filtered 200; 256 at 8: parametric 144; 512 at 16 warps: 48 / 72 / 48 / 120 / 48.
    audio["BLOCK_T"] = min(audio["BLOCK_T"], 512)
    audio["N_BLOCKS"] = -(-n_samples // audio["BLOCK_T"])
    block_s, block_e = max(2, _next_pow2(n_in)), max(2, _next_pow2(n_env))
    block_c = max(4, CONTROL_GRAD_TILE // max(block_s, block_e))
    control = dict(n_in=n_in, n_out=n_out, n_env=n_env, n_control=n_control, BLOCK_S=block_s, BLOCK_E=block_e,
                   BLOCK_C=block_c, N_CHUNKS=-(-n_control // block_c), num_warps=4)
    audio["num_warps"] = 16
    return {"control_grad": control, "audio_grad": audio}


def grad_launch_config(program, noise: int) -> dict[str, dict]:
    """`_grad_launch` for one program: what the backward passes and what `aot` compiles."""
    return _grad_launch(program.rows("mod_inputs"), program.rows("mod_outputs"), program.rows("envelopes"),
                        program.rows("oscillators"), program.rows("mixer"), program.rows("filters"),
                        kernels.n_slots(program), program.n_samples, program.n_control, noise)


@torch.library.triton_op("doppel_torch::triton_render_mix", mutates_args=())
def triton_render_mix(human: torch.Tensor, keyboards: torch.Tensor, envelopes: torch.Tensor, lfos: torch.Tensor,
                      mod_inputs: torch.Tensor, matrix: torch.Tensor, oscillators: torch.Tensor, filters: torch.Tensor,
                      noise_table: torch.Tensor, mixer: torch.Tensor, consts: torch.Tensor, keys: torch.Tensor,
                      noise: Optional[torch.Tensor], n_samples: int, n_control: int, n_filters: int, n_slots: int,
                      mix_filter: int, noise_mode: int) -> torch.Tensor:
    """The differentiable render: human (B, m) float64 -> the mix before normalisation (B, N) float64, by the
    forward kernels (`synth.triton_render`, normalize=False); its gradient is `triton_render_mix_backward`."""
    out = human.new_empty(human.shape[0], n_samples)
    kernels.triton_render(human, keyboards, envelopes, lfos, mod_inputs, matrix, oscillators, filters, noise_table,
                          mixer, consts, keys, noise, out, n_control, n_filters, n_slots, mix_filter, noise_mode, False)
    return out


@torch.library.triton_op("doppel_torch::triton_render_mix_backward", mutates_args=())
def triton_render_mix_backward(grad: torch.Tensor, human: torch.Tensor, keyboards: torch.Tensor,
                               envelopes: torch.Tensor, lfos: torch.Tensor, mod_inputs: torch.Tensor,
                               matrix: torch.Tensor, oscillators: torch.Tensor, filters: torch.Tensor,
                               noise_table: torch.Tensor, mixer: torch.Tensor, consts: torch.Tensor, keys: torch.Tensor,
                               noise: Optional[torch.Tensor], n_control: int, n_filters: int,
                               n_slots: int, mix_filter: int, noise_mode: int,
                               want_noise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """dL/d mix (B, N) -> dL/d human (B, m) float64 and dL/d noise (B, N) (one row per sound; empty unless
    want_noise): the control signals recomputed, the audio rate's adjoint chunk by chunk from checkpoints of the
    phase carries and filter states (`_audio_grad_kernel`), then the control rate's (`_control_grad_kernel`)."""
    batch, n_samples = grad.shape
    n_out, n_in = matrix.shape
    grad = grad.to(torch.float64).contiguous()
    grad_launch = _grad_launch(n_in, n_out, kernels.n_rows(envelopes), kernels.n_rows(oscillators), mixer.shape[0],
                               n_filters, n_slots, n_samples, n_control, noise_mode)
    launch = grad_launch["audio_grad"]
    control = kernels._launch(n_in, n_out, 1, 1, 0, 0, n_samples, n_control, torch.float64, 0, False)["control"]
    ctrl = human.new_empty(batch, n_out, n_control)
    wrap_triton(kernels._control_kernel)[(batch,)](
        human, human.stride(0), keyboards, envelopes, lfos, mod_inputs, matrix, consts, ctrl, ctrl.stride(0),
        ctrl.stride(1), **control)
    block_t = launch["BLOCK_T"]
    scratch = human.new_zeros(batch, max(1, n_slots) * block_t)
    gscratch = torch.zeros_like(scratch)
    ckpt = human.new_empty(batch, launch["N_BLOCKS"] * (launch["BLOCK_V"] + launch["BLOCK_F"]))
    gctrl = torch.zeros_like(ctrl)
    g_human = torch.zeros_like(human)
    g_noise = human.new_zeros(batch if want_noise else 0, n_samples)
    noise_arg = keys if noise is None else noise
    stride_nb = 0 if noise is None or noise.shape[0] == 1 else noise.stride(0)
    gnoise_arg = g_noise if want_noise else grad
    wrap_triton(_audio_grad_kernel)[(batch,)](
        human, human.stride(0), ctrl, ctrl.stride(0), ctrl.stride(1), keyboards, oscillators, filters, noise_table,
        mixer, consts, keys, noise_arg, stride_nb, scratch, gscratch, scratch.stride(0), ckpt, ckpt.stride(0), grad,
        grad.stride(0), gctrl, gctrl.stride(0), gctrl.stride(1), g_human, g_human.stride(0), gnoise_arg,
        gnoise_arg.stride(0), mix_filter, **launch)
    control_grad = grad_launch["control_grad"]
    cscratch = human.new_empty(batch, n_in * 2 * control_grad["BLOCK_C"] * control_grad["N_CHUNKS"])
    wrap_triton(_control_grad_kernel)[(batch,)](
        human, human.stride(0), keyboards, envelopes, lfos, mod_inputs, matrix, consts, gctrl, gctrl.stride(0),
        gctrl.stride(1), cscratch, cscratch.stride(0), g_human, g_human.stride(0), **control_grad)
    return g_human, g_noise


_TABLE_ARGS = 12  # human, 9 tables, consts, keys


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:_TABLE_ARGS], inputs[12])
    ctx.args = inputs[14:]  # n_control, n_filters, n_slots, mix_filter, noise_mode


def _backward(ctx, grad):
    base.refuse_create_graph("triton")
    *tensors, noise = ctx.saved_tensors
    n_control, n_filters, n_slots, mix_filter, noise_mode = ctx.args
    want_noise = noise is not None and ctx.needs_input_grad[12]
    g_human, g_noise = triton_render_mix_backward(grad, *tensors, noise, n_control, n_filters, n_slots,
                                                  mix_filter, noise_mode, want_noise)
    if not want_noise:
        g_noise = None
    elif noise.shape[0] != g_noise.shape[0]:  # one noise row shared by every sound
        g_noise = g_noise.sum(dim=0, keepdim=True)
    return (g_human,) + (None,) * 11 + (g_noise,) + (None,) * 6


torch.library.register_autograd("doppel_torch::triton_render_mix", _backward, setup_context=_setup_context)


def render_differentiable(program, theta, *, noise, seed, indices, normalize, out):
    """The same sound as `synth.render`, through autograd: float64 inside, written in theta's dtype; torch
    differentiates the clamp, `to_human` and the per-sound peak normalisation, (B, m) and (B, N) elementwise."""
    device = theta.device
    tables = kernels._device_tables(program, device)
    consts = kernels._device_consts(program, device, torch.float64)
    human = program.layout.table.to_human(theta.to(torch.float64)).contiguous()
    keys = torch.zeros(1, 2, dtype=torch.int64, device=device)
    if not program.rows("noise"):
        mode, noise = kernels.NOISE_NONE, None
    elif noise is None:
        mode = kernels.NOISE_KEYED
        k1, k2 = rng.sound_keys(seed, rng.Stream.NOISE, indices)
        keys = torch.stack([k1, k2], dim=1).contiguous()
    else:
        mode = kernels.NOISE_GIVEN
        noise = noise.to(torch.float64).contiguous()
    if theta.shape[0] == 0:  # no launch for no sounds; the empty result stays in the graph (backward() works)
        audio = human[:, :1].expand(0, program.n_samples) * 0.0
    else:
        audio = triton_render_mix(human, tables["keyboards"], tables["envelopes"], tables["lfos"],
                                  tables["mod_inputs"], tables["matrix"], tables["oscillators"], tables["filters"],
                                  tables["noise"], tables["mixer"], consts, keys, noise, program.n_samples,
                                  program.n_control, program.rows("filters"), kernels.n_slots(program),
                                  program.mix_filter, mode)
    if normalize:  # each sound by its own peak where that exceeds 1 (DESIGN.md quirk 1), as the reference
        peak = audio.abs().amax(dim=-1, keepdim=True)
        clipping = peak > 1.0
        audio = torch.where(clipping, audio / torch.where(clipping, peak, torch.ones_like(peak)), audio)
    audio = audio.to(theta.dtype)
    return audio if out is None else out.copy_(audio)
