"""`voice`: SynthAX's `Voice` and torchsynth 1.0.2's `Voice` (78 parameters).

One keyboard; a sine VCO and a square/saw VCO, each with pitch and amplitude from a 4 x 5 modulation
matrix fed by two ADSRs and two enveloped LFOs; noise; a 3-input mixer.
"""

from doppel_torch.spec.patch import Envelope, Lfo, Oscillator, Patch


def voice_patch() -> Patch:
    envs = ("adsr_1", "adsr_2", "lfo_1_rate_adsr", "lfo_2_rate_adsr", "lfo_1_amp_adsr", "lfo_2_amp_adsr")
    return Patch(
        name="voice",
        keyboards=("keyboard",),
        envelopes=tuple(Envelope(e, "keyboard") for e in envs),
        lfos=(
            Lfo("lfo_1", rate_env="lfo_1_rate_adsr", amp_env="lfo_1_amp_adsr"),
            Lfo("lfo_2", rate_env="lfo_2_rate_adsr", amp_env="lfo_2_amp_adsr"),
        ),
        mod_inputs=("adsr_1", "adsr_2", "lfo_1", "lfo_2"),
        mod_outputs=("vco_1_pitch", "vco_1_amp", "vco_2_pitch", "vco_2_amp", "noise_amp"),
        oscillators=(
            Oscillator("vco_1", "sine", "keyboard", pitch="vco_1_pitch", amp="vco_1_amp"),
            Oscillator("vco_2", "square_saw", "keyboard", pitch="vco_2_pitch", amp="vco_2_amp"),
        ),
        noise_amp="noise_amp",
        mixer_inputs=("vco_1", "vco_2", "noise"),
        mixer_curves=(1.0, 1.0, 0.025),  # declared for the noise level; see `VoiceSynth(mixer_curve=...)`
        description="SynthAX/torchsynth Voice: sine + square/saw VCO, noise, 2 ADSRs, 2 LFOs",
    )
