"""User patches the paper's synths do not have: FM topologies a Patch expresses and filters, for the backend tests."""

from __future__ import annotations

from doppel_torch.spec import Envelope, Filter, Lfo, Oscillator, Patch


def fm_chain() -> Patch:
    """Three operators in a chain (vco -> op_1 -> op_2), no LFO, no noise."""
    return Patch(
        name="fm_chain",
        keyboards=("keyboard",),
        envelopes=(Envelope("adsr_1", "keyboard"), Envelope("adsr_2", "keyboard")),
        lfos=(),
        mod_inputs=("adsr_1", "adsr_2"),
        mod_outputs=("vco_pitch", "vco_amp"),
        oscillators=(
            Oscillator("vco", "sine", "keyboard", pitch="vco_pitch", amp="vco_amp"),
            Oscillator("op_1", "fm", "keyboard", source="vco"),
            Oscillator("op_2", "fm", "keyboard", source="op_1"),
        ),
        noise_amp=None,
        mixer_inputs=("op_2", "vco"),
    )


def fan_out() -> Patch:
    """One square/saw modulator driving two carriers (one on a second keyboard), with an LFO and noise."""
    return Patch(
        name="fan_out",
        keyboards=("keyboard_1", "keyboard_2"),
        envelopes=(Envelope("adsr", "keyboard_1"), Envelope("rate_adsr", "keyboard_2"),
                   Envelope("amp_adsr", "keyboard_1")),
        lfos=(Lfo("lfo", rate_env="rate_adsr", amp_env="amp_adsr"),),
        mod_inputs=("lfo", "adsr"),
        mod_outputs=("mod_pitch", "mod_amp", "noise_amp"),
        oscillators=(
            Oscillator("modulator", "square_saw", "keyboard_1", pitch="mod_pitch", amp="mod_amp"),
            Oscillator("carrier_1", "fm", "keyboard_1", source="modulator"),
            Oscillator("carrier_2", "fm", "keyboard_2", source="modulator"),
        ),
        noise_amp="noise_amp",
        mixer_inputs=("noise", "carrier_2", "carrier_1"),
    )


def filtered() -> Patch:
    """Filters everywhere: a low-passed FM modulator (the carrier names the filter), a low-passed VCO, and the mix."""
    return Patch(
        name="filtered",
        keyboards=("keyboard",),
        envelopes=(Envelope("adsr_1", "keyboard"), Envelope("adsr_2", "keyboard"), Envelope("lfo_adsr", "keyboard")),
        lfos=(Lfo("lfo", rate_env="lfo_adsr", amp_env="lfo_adsr"),),
        mod_inputs=("adsr_1", "adsr_2", "lfo"),
        mod_outputs=("saw_pitch", "saw_amp", "sine_pitch", "sine_amp", "cutoff_1", "cutoff_2", "cutoff_mix",
                     "noise_amp"),
        oscillators=(
            Oscillator("saw", "square_saw", "keyboard", pitch="saw_pitch", amp="saw_amp"),
            Oscillator("sine", "sine", "keyboard", pitch="sine_pitch", amp="sine_amp"),
            Oscillator("op", "fm", "keyboard", source="lpf_sine"),
        ),
        filters=(Filter("lpf_saw", input="saw", cutoff="cutoff_1"), Filter("lpf_sine", input="sine", cutoff="cutoff_2"),
                 Filter("lpf_mix", input="mix", cutoff="cutoff_mix")),
        noise_amp="noise_amp",
        mixer_inputs=("lpf_saw", "op", "noise"),
    )


def shared_outputs() -> Patch:
    """One mod-matrix output driving several inputs: the sine's pitch is the square/saw's amp and the noise's
    amplitude, the square/saw's pitch the sine's amp (the cpu kernel reads pitch outputs per control run, the others
    per sample: an output read both ways must be upsampled)."""
    return Patch(
        name="shared_outputs",
        keyboards=("keyboard",),
        envelopes=(Envelope("adsr_1", "keyboard"), Envelope("adsr_2", "keyboard")),
        lfos=(),
        mod_inputs=("adsr_1", "adsr_2"),
        mod_outputs=("a", "b"),
        oscillators=(
            Oscillator("sine", "sine", "keyboard", pitch="a", amp="b"),
            Oscillator("saw", "square_saw", "keyboard", pitch="b", amp="a"),
        ),
        noise_amp="a",
        mixer_inputs=("sine", "saw", "noise"),
    )


def noise_only() -> Patch:
    """No oscillator at all: an envelope on the noise (the Triton kernels read an empty oscillator table as one
    oscillator, theta's column -1, until they counted its rows; found from outside)."""
    return Patch(
        name="noise_only",
        keyboards=("keyboard",),
        envelopes=(Envelope("adsr", "keyboard"),),
        lfos=(),
        mod_inputs=("adsr",),
        mod_outputs=("noise_amp",),
        oscillators=(),
        noise_amp="noise_amp",
        mixer_inputs=("noise",),
    )


USER_PATCHES = {"fm_chain": fm_chain, "fan_out": fan_out, "filtered": filtered, "shared_outputs": shared_outputs,
                "noise_only": noise_only}
