"""The reference renderer: a `Patch` wired in eager PyTorch, module by module, as the patch diagram reads.

Modules of one kind (all ADSRs, all LFOs) are evaluated stacked, (B, K, C), so a patch costs a handful of
kernel launches per kind rather than per module; the oscillators are wired one by one.
"""

from __future__ import annotations

import torch

from doppel_torch.reference import functional as F
from doppel_torch.synths.layout import Layout


def render(
    layout: Layout,
    human: torch.Tensor,
    noise: torch.Tensor,
    *,
    sample_rate: float,
    control_rate: float,
    n_samples: int,
    n_control: int,
    eps: float,
) -> torch.Tensor:
    """Mixer output before normalisation, (B, N), from parameters in human units (B, m) and noise (B or 1, N)."""
    patch = layout.patch

    def col(module: str, param: str) -> torch.Tensor:  # (B,)
        return human[:, layout.index[module][param]]

    def stacked(modules, param: str) -> torch.Tensor:  # (B, K)
        return human[:, [layout.index[m.name][param] for m in modules]]

    midi_f0 = {k: col(k, "midi_f0") for k in patch.keyboards}
    note_on = {k: col(k, "duration") for k in patch.keyboards}

    # Envelopes, stacked: (B, E, C).
    envs = patch.envelopes
    env_sig = F.adsr(
        attack_s=stacked(envs, "attack"),
        decay_s=stacked(envs, "decay"),
        sustain=stacked(envs, "sustain"),
        release_s=stacked(envs, "release"),
        alpha=stacked(envs, "alpha"),
        note_on_s=torch.stack([note_on[e.keyboard] for e in envs], dim=1),
        n_control=n_control,
        control_rate=control_rate,
        eps=eps,
    )
    control = {e.name: env_sig[:, i] for i, e in enumerate(envs)}

    # LFOs with their rate and amplitude envelopes (control-rate VCA), stacked: (B, L, C).
    lfos = patch.lfos
    if lfos:
        lfo_sig = F.lfo(
            frequency_hz=stacked(lfos, "frequency"),
            mod_depth_hz=stacked(lfos, "mod_depth"),
            initial_phase=stacked(lfos, "initial_phase"),
            shape_weights=torch.stack([stacked(lfos, s) for s in ("sin", "tri", "saw", "rsaw", "sqr")], dim=-1),
            rate_env=torch.stack([control[lfo.rate_env] for lfo in lfos], dim=1),
            control_rate=control_rate,
        ) * torch.stack([control[lfo.amp_env] for lfo in lfos], dim=1)
        control.update({lfo.name: lfo_sig[:, i] for i, lfo in enumerate(lfos)})

    # Modulation matrix at control rate, then every output upsampled to audio rate: (B, n_out, N).
    inputs = torch.stack([control[name] for name in patch.mod_inputs], dim=1)
    matrix = human[:, layout.mod_matrix]
    mods = F.upsample(torch.matmul(matrix, inputs), n_samples)
    mod = {name: mods[:, i] for i, name in enumerate(patch.mod_outputs)}

    # Oscillators, in patch order (an FM operator reads its modulator's output).
    out: dict[str, torch.Tensor] = {}
    for osc in patch.oscillators:
        f0, tuning, depth = midi_f0[osc.keyboard], col(osc.name, "tuning"), col(osc.name, "mod_depth")
        phase0 = col(osc.name, "initial_phase")
        if osc.kind == "fm":
            freq = F.fm_frequency(f0, tuning, depth, out[osc.source], nyquist=sample_rate / 2.0)
            out[osc.name] = torch.cos(F.oscillator_argument(freq, phase0, sample_rate))
            continue
        freq = F.vco_frequency(f0, tuning, depth, mod[osc.pitch])
        argument = F.oscillator_argument(freq, phase0, sample_rate)
        if osc.kind == "sine":
            wave = torch.cos(argument)
        else:
            partials = F.square_saw_partials(f0, tuning, depth)
            wave = F.square_saw(argument, partials, col(osc.name, "shape"))
        out[osc.name] = wave * mod[osc.amp]
    out["noise"] = noise * mod[patch.noise_amp]

    levels = human[:, layout.mixer_levels]  # (B, n_mix)
    mix = levels[:, 0:1] * out[patch.mixer_inputs[0]]
    for k, name in enumerate(patch.mixer_inputs[1:], start=1):
        mix = mix + levels[:, k : k + 1] * out[name]
    return mix
