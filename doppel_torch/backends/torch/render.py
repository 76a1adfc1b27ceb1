"""The reference renderer: a lowered `Program` in eager PyTorch, table by table, as the patch diagram reads.

Modules of one kind (all ADSRs, all LFOs) are evaluated stacked, (B, K, C), so a patch costs a handful of
kernel launches per kind rather than per module; the oscillators are wired one by one, in table order.
"""

from __future__ import annotations

import torch

from doppel_torch.backends.torch import functional as F
from doppel_torch.spec.program import INPUT_LFO, MATRIX, MIX_NOISE, OSC_FM, OSC_SINE, Program, col


def _cols(tab: dict[str, torch.Tensor], table: str, *names: str) -> list[torch.Tensor]:
    """Columns of one table as index tensors (int32 indexes as well as int64)."""
    return [tab[table][:, col(table, name)] for name in names]


def render(program: Program, human: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
    """Mixer output before normalisation, (B, N), from parameters in human units (B, m) and noise (B or 1, N)."""
    sample_rate, control_rate = program.sample_rate, program.control_rate
    n_samples, n_control, eps = program.n_samples, program.n_control, program.eps
    tab = program.on(human.device)  # cached per device: no per-call copies of the index tables

    # Envelopes, stacked: (B, E, C).
    attack, decay, sustain, release, alpha, keyboard = _cols(
        tab, "envelopes", "attack", "decay", "sustain", "release", "alpha", "keyboard")
    (duration,) = _cols(tab, "keyboards", "duration")
    env_sig = F.adsr(attack_s=human[:, attack], decay_s=human[:, decay], sustain=human[:, sustain],
                     release_s=human[:, release], alpha=human[:, alpha], note_on_s=human[:, duration[keyboard]],
                     n_control=n_control, control_rate=control_rate, eps=eps)

    # LFOs with their rate and amplitude envelopes (control-rate VCA), stacked: (B, L, C).
    if program.rows("lfos"):
        freq, depth, phase0, rate_env, amp_env = _cols(
            tab, "lfos", "frequency", "mod_depth", "initial_phase", "rate_env", "amp_env")
        weights = _cols(tab, "lfos", "sin", "tri", "saw", "rsaw", "sqr")
        lfo_sig = F.lfo(frequency_hz=human[:, freq], mod_depth_hz=human[:, depth], initial_phase=human[:, phase0],
                        shape_weights=torch.stack([human[:, w] for w in weights], dim=-1),
                        rate_env=env_sig[:, rate_env], control_rate=control_rate) * env_sig[:, amp_env]
    else:
        lfo_sig = env_sig[:, :0]

    # Modulation matrix at control rate: (B, n_out, C), every row upsampled to audio rate.
    kind, index = _cols(tab, "mod_inputs", "kind", "index")
    inputs = torch.cat([env_sig, lfo_sig], dim=1)[:, index + (kind == INPUT_LFO) * env_sig.shape[1]]
    mods = torch.matmul(human[:, tab[MATRIX]], inputs)
    mod = F.upsample(mods, n_samples)

    # Oscillators in table order (an FM operator reads its source's output, filtered if its source is).
    osc_tab = program.lists["oscillators"]  # Python ints: no device sync, no tensor read
    filters = program.lists["filters"]
    c = {name: col("oscillators", name) for name in ("kind", "keyboard", "tuning", "mod_depth", "initial_phase",
                                                      "shape", "pitch", "amp", "source", "filter")}
    midi_f0 = human[:, tab["keyboards"][:, col("keyboards", "midi_f0")]]
    out: list[torch.Tensor] = []
    for row in osc_tab:
        f0, tuning, depth = midi_f0[:, row[c["keyboard"]]], human[:, row[c["tuning"]]], human[:, row[c["mod_depth"]]]
        phase0 = human[:, row[c["initial_phase"]]]
        if row[c["kind"]] == OSC_FM:
            freq = F.fm_frequency(f0, tuning, depth, out[row[c["source"]]], nyquist=sample_rate / 2.0)
            signal = torch.cos(F.oscillator_argument(freq, phase0, sample_rate))
        else:
            freq = F.vco_frequency(f0, tuning, depth, mod[:, row[c["pitch"]]])
            argument = F.oscillator_argument(freq, phase0, sample_rate)
            if row[c["kind"]] == OSC_SINE:
                wave = torch.cos(argument)
            else:
                partials = F.square_saw_partials(f0, tuning, depth)
                wave = F.square_saw(argument, partials, human[:, row[c["shape"]]])
            signal = wave * mod[:, row[c["amp"]]]
        if row[c["filter"]] >= 0:
            signal = _filter(program, human, mod, filters[row[c["filter"]]], signal)
        out.append(signal)

    if program.rows("noise"):
        noise_out = noise * mod[:, program.lists["noise"][0][col("noise", "amp")]]
    source, index = program.column("mixer", "source"), program.column("mixer", "index")
    (level,) = _cols(tab, "mixer", "level")
    levels = human[:, level]  # (B, n_mix)
    mix = None
    for k, (src, i) in enumerate(zip(source, index)):
        term = levels[:, k : k + 1] * (noise_out if src == MIX_NOISE else out[i])
        mix = term if mix is None else mix + term
    if program.mix_filter >= 0:
        mix = _filter(program, human, mod, filters[program.mix_filter], mix)
    return mix


def _filter(program: Program, human: torch.Tensor, mod: torch.Tensor, row: list[int], x: torch.Tensor) -> torch.Tensor:
    """The one-pole low-pass of a filters row applied to x (B, N)."""
    cutoff = human[:, row[col("filters", "cutoff")]]
    depth = human[:, row[col("filters", "mod_depth")]]
    cutoff_hz = F.lpf_cutoff(cutoff, depth, mod[:, row[col("filters", "control")]], nyquist=program.sample_rate / 2.0)
    return F.lowpass(x, cutoff_hz, program.sample_rate)

