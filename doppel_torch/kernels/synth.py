"""Fused Triton rendering of any `Patch`: two kernels per batch, no per-module audio buffer.

1. `_control_kernel`, one program = one sound: every modulation-matrix input (ADSRs in closed form; LFOs
   with their rate and amplitude ADSRs and a wrapped, carried phase) on chunks of BLOCK_C control samples,
   then the matrix product -> ctrl (B, n_out, C). Equals `reference.functional.adsr`, `lfo` and the matmul
   of `reference.render`.
2. `_audio_kernel`, one program = one sound, looping over chunks of BLOCK_T samples: endpoint-aligned
   upsampling of ctrl, VCO frequency, phase in cycles (in-chunk `tl.cumsum` plus a wrapped carry per
   oscillator), sine / square-saw waveform, VCA, the FM operator fed by its modulator, keyed noise
   (`rng.noise` bits, drawn in the kernel) and the mixer; the per-sound peak is tracked and, when it
   exceeds 1, a second pass over the sound divides by it (`normalize_if_clipping`).

Precision: phase_dtype (float64 by default) is the dtype of the control signals, frequencies and phase
accumulation; waveforms, VCA and mix run in the output dtype. The float32 error against float64 comes almost
entirely from float32 pitch signals and increments (a relative pitch error e drifts the phase by e x f0 x t
cycles, FM multiplies it by the modulation index; the LFO's saw and square jump where the phase wraps), not
from float32 waveforms. Measured (TRITON_INTERPRET=1, per-sound relative L2 vs the float64 render of the same
float32 theta, worst case): SynthAX reference parameters: voice 1.4e-6, voicefm 2.7e-5 (SynthAX float32:
1.07), parametric 1.0e-4 (SynthAX float32: 0.23); with phase_dtype=torch.float32: voice 5.7e-3 (as the
eager float32 reference). The float64 output equals the reference to ~1e-11.
"""

from __future__ import annotations

import math
import weakref

import torch
import triton
import triton.language as tl

from doppel_torch import rng
from doppel_torch.kernels import _math as m

# Per-row columns of the modulation-input table: is_lfo, then the amplitude ADSR (A), the rate ADSR (R,
# LFO rows only) and the LFO's own parameters. Each entry is a column of the (B, m + 2) parameter matrix.
_ADSR = ("attack", "decay", "sustain", "release", "alpha")
_LFO = ("frequency", "mod_depth", "initial_phase", "sin", "tri", "saw", "rsaw", "sqr")
N_IN_COLS = 1 + 2 * (len(_ADSR) + 1) + len(_LFO)  # 21
# Per-VCO columns: kind, midi_f0, tuning, mod_depth, initial_phase, shape, pitch row, amp row, level,
# has_carrier, carrier midi_f0, tuning, mod_depth, initial_phase, level.
N_VCO_COLS = 15
KIND_SINE, KIND_SQUARE_SAW = 0, 1
# Constants in the phase dtype (float literals in Triton are float32; these must not be rounded).
_CONSTS = ("two_pi", "pi", "control_rate", "sample_rate", "eps", "lfo_exponent", "log10_2", "ctrl_scale", "nyquist", "log2e")


@triton.jit
def _gather(h_row, tab_ptr, offs, mask, k, N_COLS: tl.constexpr):
    cols = tl.load(tab_ptr + offs * N_COLS + k, mask=mask, other=0)
    return tl.load(h_row + cols, mask=mask, other=1.0)


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
def _adsr(t, h_row, tab_ptr, offs_s, mask_s, k0, control_rate, eps, N_COLS: tl.constexpr):
    """ADSR with parameters at table columns k0 .. k0 + 5 -> [BLOCK_S, BLOCK_C]; t: [1, BLOCK_C]."""
    attack = _gather(h_row, tab_ptr, offs_s, mask_s, k0 + 0, N_COLS)[:, None]
    decay = _gather(h_row, tab_ptr, offs_s, mask_s, k0 + 1, N_COLS)[:, None]
    sustain = _gather(h_row, tab_ptr, offs_s, mask_s, k0 + 2, N_COLS)[:, None]
    release = _gather(h_row, tab_ptr, offs_s, mask_s, k0 + 3, N_COLS)[:, None]
    alpha = _gather(h_row, tab_ptr, offs_s, mask_s, k0 + 4, N_COLS)[:, None]
    note_on = _gather(h_row, tab_ptr, offs_s, mask_s, k0 + 5, N_COLS)[:, None]
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
    h_ptr, stride_hb, in_tab_ptr, mat_ptr, consts_ptr, ctrl_ptr, stride_cb, stride_co,
    n_in: tl.constexpr, n_out: tl.constexpr, n_control: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, N_COLS: tl.constexpr,
):
    pid_b = tl.program_id(0)
    h_row = h_ptr + pid_b * stride_hb
    two_pi = tl.load(consts_ptr + 0)
    pi = tl.load(consts_ptr + 1)
    control_rate = tl.load(consts_ptr + 2)
    eps = tl.load(consts_ptr + 4)
    lfo_exponent = tl.load(consts_ptr + 5)
    offs_s = tl.arange(0, BLOCK_S)
    mask_s = offs_s < n_in
    is_lfo = tl.load(in_tab_ptr + offs_s * N_COLS, mask=mask_s, other=0)[:, None] != 0
    freq = _gather(h_row, in_tab_ptr, offs_s, mask_s, 13, N_COLS)[:, None]
    depth = _gather(h_row, in_tab_ptr, offs_s, mask_s, 14, N_COLS)[:, None]
    phase0 = _gather(h_row, in_tab_ptr, offs_s, mask_s, 15, N_COLS)[:, None]
    w_sin = m.pow_nonneg(_gather(h_row, in_tab_ptr, offs_s, mask_s, 16, N_COLS), lfo_exponent)
    w_tri = m.pow_nonneg(_gather(h_row, in_tab_ptr, offs_s, mask_s, 17, N_COLS), lfo_exponent)
    w_saw = m.pow_nonneg(_gather(h_row, in_tab_ptr, offs_s, mask_s, 18, N_COLS), lfo_exponent)
    w_rsaw = m.pow_nonneg(_gather(h_row, in_tab_ptr, offs_s, mask_s, 19, N_COLS), lfo_exponent)
    w_sqr = m.pow_nonneg(_gather(h_row, in_tab_ptr, offs_s, mask_s, 20, N_COLS), lfo_exponent)
    total = w_sin + w_tri + w_saw + w_rsaw + w_sqr
    w_sin = (w_sin / total)[:, None]
    w_tri = (w_tri / total)[:, None]
    w_saw = (w_saw / total)[:, None]
    w_rsaw = (w_rsaw / total)[:, None]
    w_sqr = (w_sqr / total)[:, None]
    carry = tl.zeros((BLOCK_S,), dtype=two_pi.dtype)
    ctrl_row = ctrl_ptr + pid_b * stride_cb
    for c0 in range(0, n_control, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < n_control
        t = offs_c.to(two_pi.dtype)[None, :]
        amp_env = _adsr(t, h_row, in_tab_ptr, offs_s, mask_s, 1, control_rate, eps, N_COLS)
        rate_env = _adsr(t, h_row, in_tab_ptr, offs_s, mask_s, 7, control_rate, eps, N_COLS)
        inc = tl.maximum(freq + depth * rate_env, 0.0) / control_rate
        inc = tl.where(mask_c[None, :], inc, 0.0)
        cycles = m.frac(carry[:, None] + tl.cumsum(inc, axis=1))
        carry = m.frac(carry + tl.sum(inc, axis=1))
        argument = two_pi * cycles + phase0
        cos = m.cos(argument + pi)
        square = (m.sign(cos) + 1.0) / 2.0
        cos = (cos + 1.0) / 2.0
        saw = argument % two_pi  # fmod, then made non-negative: torch.remainder
        saw = tl.where(saw < 0, saw + two_pi, saw) / two_pi
        rsaw = 1.0 - saw
        tri = 2.0 * saw
        tri = tl.where(tri > 1.0, 2.0 - tri, tri)
        lfo = w_sin * cos + w_tri * tri + w_saw * saw + w_rsaw * rsaw + w_sqr * square
        sig = tl.where(is_lfo, lfo * amp_env, amp_env)
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
def _audio_kernel(
    h_ptr, stride_hb, ctrl_ptr, stride_cb, stride_co, vco_ptr, consts_ptr, keys_ptr, noise_ptr, stride_nb,
    out_ptr, stride_ob,
    noise_row, noise_level_col, n_vco: tl.constexpr, n_samples: tl.constexpr, n_control: tl.constexpr,
    HAS_NOISE: tl.constexpr, NORMALIZE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr,
    N_COLS: tl.constexpr,
):
    pid_b = tl.program_id(0)
    h_row = h_ptr + pid_b * stride_hb
    ctrl_row = ctrl_ptr + pid_b * stride_cb
    out_row = out_ptr + pid_b * stride_ob
    two_pi = tl.load(consts_ptr + 0)
    pi = tl.load(consts_ptr + 1)
    sample_rate = tl.load(consts_ptr + 3)
    log10_2 = tl.load(consts_ptr + 6)
    ctrl_scale = tl.load(consts_ptr + 7)
    nyquist = tl.load(consts_ptr + 8)
    log2e = tl.load(consts_ptr + 9)
    out_dtype = out_ptr.dtype.element_ty
    phase_dtype = two_pi.dtype
    noise_level = tl.load(h_row + noise_level_col)
    if not HAS_NOISE:
        k1 = tl.load(keys_ptr + 2 * pid_b).to(tl.uint32)
        k2 = tl.load(keys_ptr + 2 * pid_b + 1).to(tl.uint32)
    offs_v = tl.arange(0, BLOCK_V)
    carry_v = tl.zeros((BLOCK_V,), dtype=phase_dtype)
    carry_c = tl.zeros((BLOCK_V,), dtype=phase_dtype)
    peak = tl.zeros((BLOCK_T,), dtype=out_dtype)
    for t0 in range(0, n_samples, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        mask_t = offs_t < n_samples
        pos = offs_t.to(phase_dtype) * ctrl_scale
        i0 = pos.to(tl.int32)
        w1 = pos - i0.to(phase_dtype)
        w0 = 1.0 - w1
        i1 = tl.minimum(i0 + 1, n_control - 1)
        if HAS_NOISE:
            noise = tl.load(noise_ptr + pid_b * stride_nb + offs_t, mask=mask_t, other=0.0).to(out_dtype)
        else:
            bits = m.mix32(m.mix32(offs_t.to(tl.uint32) + k1) ^ k2)
            noise = 2.0 * ((bits >> 8).to(out_dtype) * 5.9604644775390625e-08) - 1.0
        noise_amp = _upsample(ctrl_row + noise_row * stride_co, i0, i1, w0, w1, mask_t)
        mix = (noise_level * (noise.to(phase_dtype) * noise_amp)).to(out_dtype)
        for i in range(n_vco):
            vco = vco_ptr + i * N_COLS
            kind = tl.load(vco + 0)
            midi_f0 = tl.load(h_row + tl.load(vco + 1))
            tuning = tl.load(h_row + tl.load(vco + 2))
            depth = tl.load(h_row + tl.load(vco + 3))
            phase0 = tl.load(h_row + tl.load(vco + 4))
            pitch = _upsample(ctrl_row + tl.load(vco + 6) * stride_co, i0, i1, w0, w1, mask_t)
            amp = _upsample(ctrl_row + tl.load(vco + 7) * stride_co, i0, i1, w0, w1, mask_t)
            level = tl.load(h_row + tl.load(vco + 8)).to(out_dtype)
            midi = tl.minimum(tl.maximum((midi_f0 + tuning) + depth * pitch, 0.0), 127.0)
            inc = tl.where(mask_t, 440.0 * m.exp2((midi - 69.0) / 12.0) / sample_rate, 0.0)
            cycles, carry_v = _cycles(inc, carry_v, offs_v, i)
            angle = _reduced_angle(cycles, phase0, two_pi, pi).to(out_dtype)
            if kind == 0:
                wave = -m.cos(angle)
            else:
                shape = tl.load(h_row + tl.load(vco + 5))
                max_f0 = 440.0 * m.exp2(((midi_f0 + tuning) + tl.maximum(depth, 0.0) - 69.0) / 12.0)
                partials = 12000.0 / (max_f0 * (m.log2(max_f0) * log10_2))
                sharp = (pi * partials / 2.0).to(out_dtype)
                square = m.tanh(sharp * -m.sin(angle), log2e.to(out_dtype))
                shape = shape.to(out_dtype)
                wave = (1.0 - shape / 2.0) * square * (1.0 + shape * -m.cos(angle))
            out = wave * amp.to(out_dtype)
            mix += level * out
            if tl.load(vco + 9) != 0:
                modulator = wave.to(phase_dtype) * amp
                c_midi = tl.load(h_row + tl.load(vco + 10))
                c_tuning = tl.load(h_row + tl.load(vco + 11))
                c_depth = tl.load(h_row + tl.load(vco + 12))
                c_phase0 = tl.load(h_row + tl.load(vco + 13))
                c_level = tl.load(h_row + tl.load(vco + 14)).to(out_dtype)
                f0_hz = 440.0 * m.exp2(((c_midi + c_tuning) - 69.0) / 12.0)
                freq = tl.minimum(tl.maximum(f0_hz + c_depth * f0_hz * modulator, 0.0), nyquist)
                c_inc = tl.where(mask_t, freq / sample_rate, 0.0)
                c_cycles, carry_c = _cycles(c_inc, carry_c, offs_v, i)
                c_angle = _reduced_angle(c_cycles, c_phase0, two_pi, pi).to(out_dtype)
                mix += c_level * -m.cos(c_angle)
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


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def block_sizes(n_samples: int, phase_dtype: torch.dtype) -> dict[str, int]:
    """Audio chunk length and warps. A float32 phase keeps chunks at 256 samples: in-chunk partial sums of
    up to 256 x 0.8 cycles lose ~1e-5 cycles to rounding (the reference's float32 blocks are 128)."""
    block_t = 1024 if phase_dtype == torch.float64 else 256
    block_t = min(block_t, max(64, _next_pow2(n_samples)))
    return {"BLOCK_T": block_t, "num_warps": 4}


# Control tiles are (BLOCK_S inputs) x (BLOCK_C samples) with ~20 float64 temporaries per element (two ADSRs with
# pow, five LFO shapes). Compiled for sm_90 (python -m doppel_torch.kernels.aot), parametric (BLOCK_S 16) at
# BLOCK_C = 128 needs 255 registers + 1,352 B of spills and 1.7 MB of code; tiles of 256 elements need 128
# registers, no spills and 270 KB. Chosen from the compiler's resource usage, not yet timed on a GPU.
CONTROL_TILE = 256


def control_block_c(block_s: int) -> int:
    return max(16, CONTROL_TILE // block_s)

_TABLES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _tables(layout, device: torch.device) -> dict:
    """Index tables of a layout (cached per layout and device): columns into the (B, m + 2) parameters,
    whose last two columns hold 0 and 1."""
    per_layout = _TABLES.setdefault(layout, {})
    if device in per_layout:
        return per_layout[device]
    patch, idx = layout.patch, layout.index
    n_params = len(layout)
    zero, one = n_params, n_params + 1
    envs = {e.name: e for e in patch.envelopes}
    lfos = {lfo.name: lfo for lfo in patch.lfos}

    def env_cols(name: str) -> list[int]:
        return [idx[name][p] for p in _ADSR] + [idx[envs[name].keyboard]["duration"]]

    rows = []
    for name in patch.mod_inputs:
        if name in envs:
            rows.append([0] + env_cols(name) * 2 + [zero] * 3 + [one] * 5)
        elif name in lfos:
            lfo = lfos[name]
            rows.append([1] + env_cols(lfo.amp_env) + env_cols(lfo.rate_env) + [idx[name][p] for p in _LFO])
        else:
            raise ValueError(f"mod-matrix input {name!r} of patch {patch.name!r} is neither an envelope nor an LFO")
    out_index = {name: i for i, name in enumerate(patch.mod_outputs)}
    level_col = {name: layout.mixer_levels[k] for k, name in enumerate(patch.mixer_inputs)}
    oscs = {o.name: o for o in patch.oscillators}
    carriers = {}
    for osc in patch.oscillators:
        if osc.kind == "fm":
            source = oscs.get(osc.source)
            if source is None or source.kind == "fm" or osc.source in carriers:
                raise ValueError(
                    f"backend='triton' renders FM operators modulated by one sine or square_saw VCO each; "
                    f"{osc.name} of patch {patch.name!r} has source {osc.source!r}: use backend='torch'"
                )
            carriers[osc.source] = osc
    vcos = []
    for osc in patch.oscillators:
        if osc.kind == "fm":
            continue
        kind = KIND_SINE if osc.kind == "sine" else KIND_SQUARE_SAW
        row = [
            kind, idx[osc.keyboard]["midi_f0"], idx[osc.name]["tuning"], idx[osc.name]["mod_depth"],
            idx[osc.name]["initial_phase"], idx[osc.name]["shape"] if kind == KIND_SQUARE_SAW else zero,
            out_index[osc.pitch], out_index[osc.amp], level_col.get(osc.name, zero),
        ]
        carrier = carriers.get(osc.name)
        if carrier is None:
            row += [0] + [zero] * 5
        else:
            row += [1, idx[carrier.keyboard]["midi_f0"], idx[carrier.name]["tuning"], idx[carrier.name]["mod_depth"],
                    idx[carrier.name]["initial_phase"], level_col.get(carrier.name, zero)]
        vcos.append(row)
    tables = {
        "inputs": torch.tensor(rows, dtype=torch.int32, device=device),
        "matrix": torch.tensor(layout.mod_matrix, dtype=torch.int32, device=device),
        "vcos": torch.tensor(vcos, dtype=torch.int32, device=device).reshape(-1, N_VCO_COLS),
        "noise_row": out_index[patch.noise_amp],
        "noise_level_col": level_col.get("noise", zero),
    }
    per_layout[device] = tables
    return tables


def launch_config(synth, phase_dtype: torch.dtype, has_noise: bool, normalize: bool) -> dict[str, dict]:
    """Compile-time arguments (constexprs and launch options) of both kernels for one synth: what `render`
    passes and what `kernels.aot` compiles ahead of time. One program per sound for both kernels."""
    layout = synth.layout
    n_in, n_out = len(layout.patch.mod_inputs), len(layout.patch.mod_outputs)
    n_vco = sum(osc.kind != "fm" for osc in layout.patch.oscillators)
    cfg = block_sizes(synth.n_samples, phase_dtype)
    block_s = max(2, _next_pow2(n_in))
    return {
        "control": dict(n_in=n_in, n_out=n_out, n_control=synth.n_control, BLOCK_S=block_s,
                        BLOCK_C=control_block_c(block_s), N_COLS=N_IN_COLS),
        "audio": dict(n_vco=n_vco, n_samples=synth.n_samples, n_control=synth.n_control, HAS_NOISE=bool(has_noise),
                      NORMALIZE=bool(normalize), BLOCK_T=cfg["BLOCK_T"], BLOCK_V=max(2, _next_pow2(n_vco)),
                      N_COLS=N_VCO_COLS, num_warps=cfg["num_warps"]),
    }


def render(synth, theta, noise=None, seed=0, indices=None, normalize=True, phase_dtype=None, out=None):
    """Render theta (B, m), already validated and clamped to [eps, 1], to audio (B, N) in theta's dtype.

    noise: None draws `rng.noise(seed, indices, N)` inside the kernel (bit-identical to the torch backend);
        or a (B, N) / (1, N) tensor. indices: (B,) int64 global sound indices, default 0 .. B - 1.
    phase_dtype: dtype of control signals, frequencies and phase (default float64; float32 is faster and
        as inaccurate as an all-float32 render, see the module docstring).
    out: optional (B, N) contiguous tensor of theta's dtype and device to render into (every element is written).
    """
    layout = synth.layout
    device, out_dtype = theta.device, theta.dtype
    if device.type != "cuda" and not m.INTERPRET:
        raise RuntimeError(f"backend='triton' renders CUDA tensors; theta is on {device} (TRITON_INTERPRET=1 runs on CPU)")
    phase_dtype = torch.float64 if phase_dtype is None else phase_dtype
    if phase_dtype not in (torch.float32, torch.float64) or (out_dtype == torch.float64 and phase_dtype != torch.float64):
        raise ValueError(f"phase_dtype must be torch.float64 or (for float32 theta) torch.float32, got {phase_dtype}")
    batch, n_samples, n_control = theta.shape[0], synth.n_samples, synth.n_control
    if out is None:
        out = torch.empty(batch, n_samples, dtype=out_dtype, device=device)
    elif out.shape != (batch, n_samples) or out.dtype != out_dtype or out.device != device or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous ({batch}, {n_samples}) {out_dtype} tensor on {device}")
    if batch == 0:
        return out
    tables = _tables(layout, device)
    human = layout.table.to_human(theta.to(phase_dtype))
    pad = torch.tensor([0.0, 1.0], dtype=phase_dtype, device=device).expand(batch, 2)
    human = torch.cat([human, pad], dim=1).contiguous()
    consts = dict(
        two_pi=2.0 * math.pi, pi=math.pi, control_rate=float(synth.control_rate), sample_rate=float(synth.sample_rate),
        eps=float(synth.eps), lfo_exponent=math.e, log10_2=math.log10(2.0),
        ctrl_scale=(n_control - 1) / (n_samples - 1) if n_samples > 1 else 0.0,
        nyquist=synth.sample_rate / 2.0, log2e=math.log2(math.e),
    )
    consts = torch.tensor([consts[k] for k in _CONSTS], dtype=phase_dtype, device=device)
    launch = launch_config(synth, phase_dtype, has_noise=noise is not None, normalize=normalize)
    ctrl = torch.empty(batch, launch["control"]["n_out"], n_control, dtype=phase_dtype, device=device)
    _control_kernel[(batch,)](
        human, human.stride(0), tables["inputs"], tables["matrix"], consts, ctrl, ctrl.stride(0), ctrl.stride(1),
        **launch["control"],
    )
    if noise is None:
        if indices is None:
            indices = torch.arange(batch, dtype=torch.int64, device=device)
        k1, k2 = rng.sound_keys(seed, rng.Stream.NOISE, indices.to(device))
        keys = torch.stack([k1, k2], dim=1).contiguous()
        noise_arg, stride_nb = keys, 0
    else:
        keys = torch.zeros(2, dtype=torch.int64, device=device)
        noise_arg = noise.contiguous()
        stride_nb = 0 if noise_arg.shape[0] == 1 else noise_arg.stride(0)
    _audio_kernel[(batch,)](
        human, human.stride(0), ctrl, ctrl.stride(0), ctrl.stride(1), tables["vcos"], consts, keys, noise_arg,
        stride_nb, out, out.stride(0), tables["noise_row"], tables["noise_level_col"], **launch["audio"],
    )
    return out
