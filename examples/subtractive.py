"""A subtractive patch: a square/saw and a detuned sine into a one-pole low-pass whose cutoff follows an envelope,
then the mixer. Render it with

    doppel-torch sample --patch examples/subtractive.py --out samples-subtractive/

or from Python: `Synth(subtractive_patch(), backend="cpu")`. Every backend renders it; no backend code is needed.
"""

from doppel_torch.spec import Envelope, Filter, Lfo, Oscillator, Patch


def subtractive_patch() -> Patch:
    return Patch(
        name="subtractive",
        keyboards=("keyboard",),
        envelopes=(Envelope("amp_adsr", "keyboard"), Envelope("filter_adsr", "keyboard"),
                   Envelope("lfo_rate_adsr", "keyboard"), Envelope("lfo_amp_adsr", "keyboard")),
        lfos=(Lfo("vibrato", rate_env="lfo_rate_adsr", amp_env="lfo_amp_adsr"),),
        mod_inputs=("amp_adsr", "filter_adsr", "vibrato"),
        mod_outputs=("saw_pitch", "saw_amp", "sine_pitch", "sine_amp", "cutoff"),
        oscillators=(
            Oscillator("saw", "square_saw", "keyboard", pitch="saw_pitch", amp="saw_amp"),
            Oscillator("sine", "sine", "keyboard", pitch="sine_pitch", amp="sine_amp"),
        ),
        filters=(Filter("lpf", input="saw", cutoff="cutoff"),),
        noise_amp=None,
        mixer_inputs=("lpf", "sine"),
        description="square/saw through an envelope-swept low-pass, plus a sine",
    )


patch = subtractive_patch  # what `doppel-torch sample --patch` looks for
