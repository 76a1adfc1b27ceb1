"""`parametric`: SynthAX's `ParametricSynth(sine, square_saw, fm_sine, fm_square_saw)`.

n = sine + square_saw + fm_sine + fm_square_saw voices, each with its own keyboard, ADSR and enveloped LFO;
one (2n) x (2n + 1) modulation matrix (inputs: all ADSRs, then all LFOs; outputs: pitch and amp of
vco_1..vco_n, then noise). The fm_* voices do not reach the mixer: each modulates an FM operator
(vco_{n+1}, ...) played from the modulator's keyboard. The paper's counts (2, 2, 1, 1) give 340 parameters.
"""

import operator

from doppel_torch.spec.patch import Envelope, Lfo, Oscillator, Patch


def parametric_patch(sine: int = 2, square_saw: int = 2, fm_sine: int = 1, fm_square_saw: int = 1) -> Patch:
    counts = {"sine": sine, "square_saw": square_saw, "fm_sine": fm_sine, "fm_square_saw": fm_square_saw}
    for key, value in counts.items():
        try:
            count = None if isinstance(value, bool) else operator.index(value)  # numpy integers too; True is no count
        except TypeError:
            count = None
        if count is None or count < 0:
            raise ValueError(f"ParametricSynth: {key} must be a non-negative integer, got {value!r}")
        counts[key] = count
    sine, square_saw, fm_sine, fm_square_saw = counts.values()
    n = sine + square_saw + fm_sine + fm_square_saw
    if n == 0:
        raise ValueError("ParametricSynth needs at least one oscillator (sine + square_saw + fm_sine + fm_square_saw > 0)")
    voices = range(1, n + 1)
    kinds = ["sine"] * sine + ["square_saw"] * square_saw + ["sine"] * fm_sine + ["square_saw"] * fm_square_saw
    oscillators = [
        Oscillator(f"vco_{i}", kind, f"keyboard_{i}", pitch=f"vco_{i}_pitch", amp=f"vco_{i}_amp")
        for i, kind in zip(voices, kinds)
    ]
    modulators = list(range(sine + square_saw + 1, n + 1))
    carriers = []
    for j, source in enumerate(modulators):
        carrier = Oscillator(f"vco_{n + 1 + j}", "fm", f"keyboard_{source}", source=f"vco_{source}")
        carriers.append(carrier)
    envelopes = []
    for i in voices:
        for env in (f"adsr_{i}", f"lfo_{i}_rate_adsr", f"lfo_{i}_amp_adsr"):
            envelopes.append(Envelope(env, f"keyboard_{i}"))
    mixed = [f"vco_{i}" for i in range(1, sine + square_saw + 1)] + [c.name for c in carriers]
    return Patch(
        name="parametric",
        keyboards=tuple(f"keyboard_{i}" for i in voices),
        envelopes=tuple(envelopes),
        lfos=tuple(Lfo(f"lfo_{i}", rate_env=f"lfo_{i}_rate_adsr", amp_env=f"lfo_{i}_amp_adsr") for i in voices),
        mod_inputs=tuple(f"adsr_{i}" for i in voices) + tuple(f"lfo_{i}" for i in voices),
        mod_outputs=tuple(f"vco_{i}_{what}" for i in voices for what in ("pitch", "amp")) + ("noise_amp",),
        oscillators=tuple(oscillators + carriers),
        noise_amp="noise_amp",
        mixer_inputs=tuple(mixed) + ("noise",),
        description=f"SynthAX ParametricSynth(sine={sine}, square_saw={square_saw}, fm_sine={fm_sine}, fm_square_saw={fm_square_saw})",
    )
