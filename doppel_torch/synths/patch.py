"""A synth architecture as data: its modules, their parameters and the wiring.

Every backend (the torch reference, the Triton kernels, the CPU fast path) reads a `Patch`; none hard-codes
an architecture. The signal flow every patch follows (SynthAX's `Voice`, `VoiceExpanded`, `ParametricSynth`):

    keyboard k        -> midi_f0_k, note_duration_k
    envelope e        =  ADSR_e(note_duration of its keyboard)                      control rate (B, C)
    lfo l             =  LFO_l(rate = ADSR rate_env_l) * ADSR amp_env_l            control rate
    mod outputs       =  mod_matrix (n_out x n_in) @ [envelopes..., lfos...]        control rate
    vco (sine, sq/saw)=  VCO(midi_f0 of its keyboard, pitch = up(mod[pitch])) * up(mod[amp])   audio rate
    vco (fm)          =  FM(midi_f0 of its keyboard, modulator = output of its source vco)     audio rate, no VCA
    noise             =  noise * up(mod[noise_amp])
    mix               =  sum_k level_k * input_k   over `mixer_inputs`

`up` is the endpoint-aligned linear control -> audio rate upsampling (DESIGN.md, quirk 4).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from doppel_torch.params import KIND_PARAMS, LEVEL_RANGE, MOD_RANGE, ParamRange, ParamSpec


@dataclass(frozen=True)
class Envelope:
    name: str  # e.g. "adsr_1" or "lfo_1_rate_adsr"
    keyboard: str  # whose note duration triggers it


@dataclass(frozen=True)
class Lfo:
    name: str
    rate_env: str  # envelope modulating its rate
    amp_env: str  # envelope scaling its output (the control-rate VCA)


@dataclass(frozen=True)
class Oscillator:
    name: str
    kind: str  # "sine" | "square_saw" | "fm"
    keyboard: str
    pitch: str | None = None  # mod-matrix output driving pitch (sine, square_saw)
    amp: str | None = None  # mod-matrix output driving the VCA (sine, square_saw)
    source: str | None = None  # modulating oscillator (fm)


@dataclass(frozen=True)
class Patch:
    name: str
    keyboards: tuple[str, ...]
    envelopes: tuple[Envelope, ...]
    lfos: tuple[Lfo, ...]
    mod_inputs: tuple[str, ...]  # envelope / lfo names, in mod-matrix column order
    mod_outputs: tuple[str, ...]  # in mod-matrix row order
    oscillators: tuple[Oscillator, ...]  # in evaluation order (an fm source comes before its carrier)
    noise_amp: str  # mod-matrix output scaling the noise
    mixer_inputs: tuple[str, ...]  # oscillator names and "noise", in mixer-level order
    mixer_curves: tuple[float, ...] | None = None  # declared per-input level curves (Voice: noise 0.025)
    description: str = field(default="", compare=False)

    def modules(self) -> dict[str, tuple[str, dict]]:
        """Parameterised modules: name -> (kind, extra) where extra holds matrix/vector sizes."""
        mods: dict[str, tuple[str, dict]] = {k: ("keyboard", {}) for k in self.keyboards}
        mods.update({e.name: ("adsr", {}) for e in self.envelopes})
        mods.update({lfo.name: ("lfo", {}) for lfo in self.lfos})
        mods.update({o.name: (o.kind, {}) for o in self.oscillators})
        mods["mod_matrix"] = ("mod_matrix", {"n_output": len(self.mod_outputs), "n_input": len(self.mod_inputs)})
        mods["mixer"] = ("mixer", {"n_input": len(self.mixer_inputs)})
        return mods

    def param_specs(self, apply_mixer_curve: bool = False) -> list[ParamSpec]:
        """The flat layout in SynthAX's `ravel_pytree` order: modules sorted by name, then parameters
        sorted by name, matrices row-major."""
        specs: list[ParamSpec] = []
        for module, (kind, extra) in sorted(self.modules().items()):
            if kind == "mod_matrix":
                for out in range(extra["n_output"]):
                    for inp in range(extra["n_input"]):
                        specs.append(ParamSpec(module, "mod", (out, inp), MOD_RANGE, True))
            elif kind == "mixer":
                curves = self.mixer_curves or (1.0,) * extra["n_input"]
                # SynthAX applies a curve only if every entry differs from 1; torchsynth per entry.
                for k, curve in enumerate(curves):
                    rng = ParamRange(LEVEL_RANGE.minimum, LEVEL_RANGE.maximum, curve)
                    applied = curve != 1.0 and (apply_mixer_curve or all(c != 1.0 for c in curves))
                    specs.append(ParamSpec(module, "level", (k,), rng, applied))
            else:
                for param, rng in sorted(KIND_PARAMS[kind].items()):
                    specs.append(ParamSpec(module, param, (), rng, rng.curve != 1.0))
        return specs
