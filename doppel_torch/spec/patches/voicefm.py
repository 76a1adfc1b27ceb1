"""`voicefm`: SynthAX's `VoiceExpanded` (130 parameters), the paper's "VoiceFM".

Three ADSRs and three enveloped LFOs feed a 6 x 7 modulation matrix; vco_1 (sine) and vco_2 (square/saw)
are mixed directly, vco_3 (sine) only modulates the FM operator vco_4; noise; a 4-input mixer.
"""

from doppel_torch.spec.patch import Envelope, Lfo, Oscillator, Patch


def voicefm_patch() -> Patch:
    lfos = tuple(Lfo(f"lfo_{i}", rate_env=f"lfo_{i}_rate_adsr", amp_env=f"lfo_{i}_amp_adsr") for i in (1, 2, 3))
    envs = [f"adsr_{i}" for i in (1, 2, 3)] + [e for lfo in lfos for e in (lfo.rate_env, lfo.amp_env)]
    return Patch(
        name="voicefm",
        keyboards=("keyboard",),
        envelopes=tuple(Envelope(e, "keyboard") for e in envs),
        lfos=lfos,
        mod_inputs=("adsr_1", "adsr_2", "adsr_3", "lfo_1", "lfo_2", "lfo_3"),
        mod_outputs=("vco_1_pitch", "vco_1_amp", "vco_2_pitch", "vco_2_amp", "vco_3_pitch", "vco_3_amp", "noise_amp"),
        oscillators=(
            Oscillator("vco_1", "sine", "keyboard", pitch="vco_1_pitch", amp="vco_1_amp"),
            Oscillator("vco_2", "square_saw", "keyboard", pitch="vco_2_pitch", amp="vco_2_amp"),
            Oscillator("vco_3", "sine", "keyboard", pitch="vco_3_pitch", amp="vco_3_amp"),
            Oscillator("vco_4", "fm", "keyboard", source="vco_3"),
        ),
        noise_amp="noise_amp",
        mixer_inputs=("vco_1", "vco_2", "vco_4", "noise"),
        description="SynthAX VoiceExpanded: Voice plus a sine-modulated FM operator",
    )
