"""The adjoint of the Triton render, in Triton: dL/d(human parameters) from dL/d(audio), recomputed from theta.

Work in progress (issue 11). Done: the control rate's adjoint, `_control_grad_kernel` (one program = one sound):
dL/d mods (B, n_out, C) -> dL/d human for every parameter the control rate reads (mod matrix, LFOs, ADSRs), the
math of `backends/cpu/csrc/synth_cpu_grad.inc` ("control rate: ... and its adjoint"), vectorised:
1. mod-input rows as one (BLOCK_S, BLOCK_CC) tile, the whole control row at once (C = 480 for 1 s): the forward
   recomputed (ADSRs, fixed-point LFO phase), insig bar = sum_o a_oi mods_o bar, a_oi bar = sum_t mods_o bar in_i;
   an LFO row's shape, weight and phase adjoint, its frequency adjoint by `tl.cumsum(reverse=True)` (the reversed
   cumulative sum of the phase); the envelope gradients of each row (its own signal, or an LFO's amplitude and
   rate envelopes) go to a per-sound scratch (n_in, 2, BLOCK_CC);
2. envelope rows as one (BLOCK_E, BLOCK_CC) tile: their gradients gathered from the scratch, then the ramps'
   adjoints (pow, the min / max clamps with torch's tie rules: a tie of torch.minimum sends half each way).
Gradients are accumulated into gh (B, m) float64 with `tl.atomic_add` (a keyboard's note duration is shared by
its envelopes). Missing: the audio rate's adjoint (oscillators, FM chains, filters, mixer, noise, normalisation).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from doppel_torch.backends.triton import _math as m
from doppel_torch.backends.triton import columns as C
from doppel_torch.backends.triton.synth import (LFO_MASK, LFO_SCALE, ROUND_MAGIC, _adsr, _next_pow2, _param, _ramp,
                                                wrap_triton)


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
def _control_grad_kernel(
    h_ptr, stride_hb, kb_ptr, env_ptr, lfo_ptr, in_ptr, mat_ptr, consts_ptr, gmods_ptr, stride_gb, stride_go,
    scratch_ptr, stride_sb, gh_ptr, stride_ghb,
    n_in: tl.constexpr, n_out: tl.constexpr, n_env: tl.constexpr, n_control: tl.constexpr, BLOCK_S: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_CC: tl.constexpr,
):
    pid_b = tl.program_id(0)
    h_row = h_ptr + pid_b * stride_hb
    gh_row = gh_ptr + pid_b * stride_ghb
    scratch_row = scratch_ptr + pid_b * stride_sb
    two_pi = tl.load(consts_ptr + C.CONST_TWO_PI)
    pi = tl.load(consts_ptr + C.CONST_PI)
    control_rate = tl.load(consts_ptr + C.CONST_CONTROL_RATE)
    eps = tl.load(consts_ptr + C.CONST_EPS)
    lfo_exponent = tl.load(consts_ptr + C.CONST_LFO_EXPONENT)
    log2e = tl.load(consts_ptr + C.CONST_LOG2E)
    offs_c = tl.arange(0, BLOCK_CC)
    mask_c = offs_c < n_control
    t = offs_c.to(two_pi.dtype)[None, :]

    # 1. Mod-input rows: forward recomputed over the whole control row, then the matrix's and the LFOs' adjoints.
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
    freq = _param(h_row, lfo_ptr, index, mask_l, C.LFOS_FREQUENCY, C.LFOS_N_COLS, 0.0)[:, None]
    depth = _param(h_row, lfo_ptr, index, mask_l, C.LFOS_MOD_DEPTH, C.LFOS_N_COLS, 0.0)[:, None]
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
    amp_env = _adsr(t, h_row, env_ptr, kb_ptr, amp_env_row, mask_s, control_rate, eps)
    rate_env = _adsr(t, h_row, env_ptr, kb_ptr, rate_env_row, mask_s, control_rate, eps)
    rate = freq + depth * rate_env
    inc = tl.where(mask_c[None, :], tl.maximum(rate, 0.0) / control_rate, 0.0)
    start = (((phase0.to(tl.float64) / two_pi.to(tl.float64)) * LFO_SCALE + ROUND_MAGIC) - ROUND_MAGIC).to(tl.int64)
    steps = ((inc.to(tl.float64) * LFO_SCALE + ROUND_MAGIC) - ROUND_MAGIC).to(tl.int64)
    fixed = tl.cumsum(steps, axis=1) & LFO_MASK
    u = (((fixed + start) & LFO_MASK).to(tl.float64) * (1.0 / LFO_SCALE)).to(two_pi.dtype)
    s_cos = (1.0 - m.cos(two_pi * u)) / 2.0
    s_sqr = tl.where((u > 0.25) & (u < 0.75), 1.0, tl.where((u == 0.25) | (u == 0.75), 0.5, 0.0))
    fold = 2.0 * u > 1.0
    s_tri = tl.where(fold, 2.0 - 2.0 * u, 2.0 * u)
    lfo = w_sin * s_cos + w_tri * s_tri + w_saw * u + w_rsaw * (1.0 - u) + w_sqr * s_sqr
    sig = tl.where(is_lfo[:, None], lfo * amp_env, amp_env)
    sig = tl.where(mask_s[:, None] & mask_c[None, :], sig, 0.0)
    gsig = tl.zeros((BLOCK_S, BLOCK_CC), dtype=two_pi.dtype)
    for o in range(n_out):
        grow = tl.load(gmods_ptr + pid_b * stride_gb + o * stride_go + offs_c, mask=mask_c, other=0.0)
        cols = tl.load(mat_ptr + o * n_in + offs_s, mask=mask_s, other=0)
        weight = tl.load(h_row + cols, mask=mask_s, other=0.0)
        gsig += weight[:, None] * grow[None, :]
        tl.atomic_add(gh_row + cols, tl.sum(grow[None, :] * sig, axis=1), mask=mask_s)
    # LFO rows: sig = lfo * amp_env.
    g_amp = gsig * lfo
    g_raw = gsig * amp_env
    g_sin = tl.sum(g_raw * s_cos, axis=1)
    g_tri = tl.sum(g_raw * s_tri, axis=1)
    g_saw = tl.sum(g_raw * u, axis=1)
    g_rsaw = tl.sum(g_raw * (1.0 - u), axis=1)
    g_sqr = tl.sum(g_raw * s_sqr, axis=1)
    g_u = g_raw * (w_sin * pi * m.sin(two_pi * u) + w_tri * tl.where(fold, -2.0, 2.0) + w_saw - w_rsaw)
    g_u = tl.where(mask_l[:, None] & mask_c[None, :], g_u, 0.0)
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
    # The phase: u = frac(phase0 / 2 pi + sum_{s <= t} inc[s]), inc bar[s] = sum_{t >= s} u bar[t].
    g_inc = tl.cumsum(g_u, axis=1, reverse=True) / control_rate
    g_inc = tl.where(rate >= 0, g_inc, 0.0)
    tl.atomic_add(gh_row + tl.load(lfo_cols + C.LFOS_INITIAL_PHASE, mask=mask_l, other=0),
                  tl.sum(g_u, axis=1) / two_pi, mask=mask_l)
    tl.atomic_add(gh_row + tl.load(lfo_cols + C.LFOS_FREQUENCY, mask=mask_l, other=0), tl.sum(g_inc, axis=1),
                  mask=mask_l)
    tl.atomic_add(gh_row + tl.load(lfo_cols + C.LFOS_MOD_DEPTH, mask=mask_l, other=0),
                  tl.sum(g_inc * rate_env, axis=1), mask=mask_l)
    g_rate_env = g_inc * depth
    # Envelope gradients of each row: to its amplitude envelope (itself for an envelope row), to its rate envelope.
    to_amp = tl.where(is_lfo[:, None], g_amp, gsig)
    to_rate = tl.where(is_lfo[:, None], g_rate_env, 0.0)
    mask_sc = mask_s[:, None] & mask_c[None, :]
    rows = scratch_row + offs_s[:, None] * (2 * BLOCK_CC) + offs_c[None, :]
    tl.store(rows, to_amp, mask=mask_sc)
    tl.store(rows + BLOCK_CC, to_rate, mask=mask_sc)
    tl.debug_barrier()

    # 2. Envelope rows: gather their gradients, then the ADSR's adjoint.
    offs_e = tl.arange(0, BLOCK_E)
    mask_e = offs_e < n_env
    g_env = tl.zeros((BLOCK_E, BLOCK_CC), dtype=two_pi.dtype)
    for i in range(n_in):
        kind_i = tl.load(in_ptr + i * C.MOD_INPUTS_N_COLS + C.MOD_INPUTS_KIND)
        index_i = tl.load(in_ptr + i * C.MOD_INPUTS_N_COLS + C.MOD_INPUTS_INDEX)
        lfo_i = kind_i == C.INPUT_LFO
        lfo_row = tl.where(lfo_i, index_i, 0)
        amp_i = tl.where(lfo_i, tl.load(lfo_ptr + lfo_row * C.LFOS_N_COLS + C.LFOS_AMP_ENV), index_i)
        rate_i = tl.where(lfo_i, tl.load(lfo_ptr + lfo_row * C.LFOS_N_COLS + C.LFOS_RATE_ENV), -1)
        r_amp = tl.load(scratch_row + i * (2 * BLOCK_CC) + offs_c, mask=mask_c, other=0.0)
        r_rate = tl.load(scratch_row + i * (2 * BLOCK_CC) + BLOCK_CC + offs_c, mask=mask_c, other=0.0)
        g_env += tl.where(offs_e[:, None] == amp_i, r_amp[None, :], 0.0)
        g_env += tl.where(offs_e[:, None] == rate_i, r_rate[None, :], 0.0)
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
    attack_sig = _ramp(t, na2, 0.0 * na2, a2, control_rate, eps, False)
    decay_ramp = _ramp(t, nd2, na2, a2, control_rate, eps, True)
    decay_sig = (1.0 - s2) * decay_ramp + s2
    release_sig = _ramp(t, r2, d2, a2, control_rate, eps, True)
    g_dec = g_env * attack_sig * release_sig
    g_sustain = tl.sum(g_dec * (1.0 - decay_ramp), axis=1)
    gn_attack, _unused, g_alpha = _ramp_grad(t, g_env * decay_sig * release_sig, na2, 0.0 * na2, a2, control_rate,
                                             eps, log2e, False)
    gn_decay, g_start, g_alpha_d = _ramp_grad(t, g_dec * (1.0 - s2), nd2, na2, a2, control_rate, eps, log2e, True)
    g_release, g_note, g_alpha_r = _ramp_grad(t, g_env * attack_sig * decay_sig, r2, d2, a2, control_rate, eps, log2e,
                                              True)
    gn_attack += g_start
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
    tl.atomic_add(gh_row + tl.load(env_cols + C.ENVELOPES_ALPHA, mask=mask_e, other=0), g_alpha + g_alpha_d + g_alpha_r,
                  mask=mask_e)
    tl.atomic_add(gh_row + tl.load(kb_ptr + keyboard * C.KEYBOARDS_N_COLS + C.KEYBOARDS_DURATION, mask=mask_e,
                                   other=0), g_note, mask=mask_e)


def control_grad(program, human: torch.Tensor, gmods: torch.Tensor, gh: torch.Tensor, tables, consts) -> None:
    """Accumulate into gh (B, m) float64 the adjoint of the control rate for gmods = dL/d mods (B, n_out, C)."""
    batch = human.shape[0]
    n_out, n_in = tables["matrix"].shape
    n_env = program.rows("envelopes")
    block_cc = max(16, _next_pow2(program.n_control))
    scratch = torch.empty(batch, n_in * 2 * block_cc, dtype=human.dtype, device=human.device)
    wrap_triton(_control_grad_kernel)[(batch,)](
        human, human.stride(0), tables["keyboards"], tables["envelopes"], tables["lfos"], tables["mod_inputs"],
        tables["matrix"], consts, gmods, gmods.stride(0), gmods.stride(1), scratch, scratch.stride(0), gh,
        gh.stride(0), n_in=n_in, n_out=n_out, n_env=n_env, n_control=program.n_control,
        BLOCK_S=max(2, _next_pow2(n_in)), BLOCK_E=max(2, _next_pow2(n_env)), BLOCK_CC=block_cc,
    )
