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
    filter f (lpf)    =  one-pole low-pass of an oscillator's output or of the mix, cutoff from mod[cutoff]
    mix               =  sum_k level_k * input_k   over `mixer_inputs`

`up` is the endpoint-aligned linear control -> audio rate upsampling (DESIGN.md, quirk 4). A filter on an
oscillator replaces that oscillator's output wherever it is read (the mixer and FM operators name the filter);
a filter on "mix" filters the mixer's output. `Patch.validate()` checks the wiring and names the module at fault.

A user patch (see the README): build the tuple of modules, then `Synth(patch)` renders it on every backend.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from doppel_torch.spec.params import KIND_PARAMS, LEVEL_RANGE, MOD_RANGE, ParamRange, ParamSpec


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
    source: str | None = None  # modulating oscillator, or the filter on one (fm)


@dataclass(frozen=True)
class Filter:
    name: str
    input: str  # an oscillator's name, or "mix"
    cutoff: str  # mod-matrix output moving the cutoff (in semitones x the filter's mod_depth)
    kind: str = "lpf"


@dataclass(frozen=True)
class Patch:
    name: str
    keyboards: tuple[str, ...]
    envelopes: tuple[Envelope, ...]
    lfos: tuple[Lfo, ...]
    mod_inputs: tuple[str, ...]  # envelope / lfo names, in mod-matrix column order
    mod_outputs: tuple[str, ...]  # in mod-matrix row order
    oscillators: tuple[Oscillator, ...]  # in evaluation order (an fm source comes before its carrier)
    noise_amp: str | None  # mod-matrix output scaling the noise (None: no noise source)
    mixer_inputs: tuple[str, ...]  # oscillator or filter names and "noise", in mixer-level order
    mixer_curves: tuple[float, ...] | None = None  # declared per-input level curves (Voice: noise 0.025)
    filters: tuple[Filter, ...] = ()
    description: str = field(default="", compare=False)

    _SEQUENCES = ("keyboards", "envelopes", "lfos", "mod_inputs", "mod_outputs", "oscillators", "mixer_inputs",
                  "mixer_curves", "filters")

    def __post_init__(self):
        # lists are taken as tuples (a Patch is hashable: it keys the lowering cache); a bare string is refused
        # rather than read as a sequence of one-letter names
        for group in self._SEQUENCES:
            value = getattr(self, group)
            if isinstance(value, str):
                raise ValueError(f"patch {self.name!r}: {group} must be a tuple of names, got the string {value!r} "
                                 f"(write ({value!r},))")
            if isinstance(value, list):
                object.__setattr__(self, group, tuple(value))
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"a patch needs a name (a non-empty string), got {self.name!r}")
        if any(c in self.name for c in "/\\\0") or self.name.strip(".") == "":
            raise ValueError(f"patch name {self.name!r} names files (its delta profile, samples): give one without "
                             "'/', '\\' or a name of only dots")
        curves = self.mixer_curves
        if curves is not None and (not isinstance(curves, tuple) or not all(
                isinstance(c, (int, float)) and not isinstance(c, bool) for c in curves)):
            raise ValueError(f"patch {self.name!r}: mixer_curves must be None or a tuple of numbers (one per mixer "
                             f"input), got {curves!r}")
        kinds = {"keyboards": str, "envelopes": Envelope, "lfos": Lfo, "mod_inputs": str, "mod_outputs": str,
                 "oscillators": Oscillator, "mixer_inputs": str, "filters": Filter}
        for group, kind in kinds.items():  # a module, a dict or None where a tuple of them belongs: one line, not
            value = getattr(self, group)  # "'Oscillator' object is not iterable" (found from outside)
            what = "names" if kind is str else f"{kind.__name__}(...)"
            if not isinstance(value, tuple):
                hint = f" (write ({type(value).__name__}(...),))" if isinstance(value, kind) and kind is not str else ""
                raise ValueError(f"patch {self.name!r}: {group} must be a tuple of {what}, got "
                                 f"{type(value).__name__}{hint}")
            wrong = next((v for v in value if not isinstance(v, kind)), None)
            if wrong is not None or (kind is str and any(v is None for v in value)):
                raise ValueError(f"patch {self.name!r}: {group} must be a tuple of {what}, got an element "
                                 f"{wrong!r} of type {type(wrong).__name__}")
            for module in value if kind is not str else ():  # a module's wiring: names (or None), not lists
                for f in dataclasses.fields(module):
                    v = getattr(module, f.name)
                    if not (v is None or isinstance(v, (str, int, float))):
                        raise ValueError(f"patch {self.name!r}: {kind.__name__} {module.name!r}: {f.name} must be a "
                                         f"name, got {v!r} ({type(v).__name__})")

    def validate(self) -> "Patch":
        """Raise ValueError naming the module whose wiring is invalid; return the patch when it is sound."""
        def fail(msg: str):
            raise ValueError(f"patch {self.name!r}: {msg}")

        names = [*self.keyboards, *(e.name for e in self.envelopes), *(lfo.name for lfo in self.lfos),
                 *(o.name for o in self.oscillators), *(f.name for f in self.filters)]
        for name in names:
            if not isinstance(name, str) or not name or "/" in name or name != name.strip():
                fail(f"module name {name!r} must be a non-empty string without '/' or surrounding spaces "
                     "(parameter names are module/parameter)")
            if names.count(name) > 1:
                fail(f"module name {name!r} is used twice")
            if name in ("mix", "noise", "mod_matrix", "mixer"):
                fail(f"module name {name!r} is reserved")
        envelopes = {e.name for e in self.envelopes}
        lfos = {lfo.name for lfo in self.lfos}
        outputs = set(self.mod_outputs)
        for env in self.envelopes:
            if env.keyboard not in self.keyboards:
                fail(f"envelope {env.name} is triggered by unknown keyboard {env.keyboard!r}")
        for lfo in self.lfos:
            for role, env in (("rate_env", lfo.rate_env), ("amp_env", lfo.amp_env)):
                if env not in envelopes:
                    fail(f"lfo {lfo.name}: {role} {env!r} is not an envelope")
        for group, values in (("mod_inputs", self.mod_inputs), ("mod_outputs", self.mod_outputs),
                              ("mixer_inputs", self.mixer_inputs)):
            if len(set(values)) != len(values):
                fail(f"{group} lists a name twice: {values}")
        for name in self.mod_inputs:
            if name not in envelopes and name not in lfos:
                fail(f"mod-matrix input {name!r} is neither an envelope nor an LFO")
        if not self.mod_inputs or not self.mod_outputs:
            fail("the modulation matrix needs at least one input and one output")
        used: list[str] = []

        def output(module: str, role: str, name: str | None) -> None:
            if name is None:
                fail(f"{module} needs {role}= (one of the mod-matrix outputs: {', '.join(self.mod_outputs)})")
            if name not in outputs:
                fail(f"{module}: {role} {name!r} is not a mod-matrix output")
            used.append(name)

        filtered = {}
        for flt in self.filters:
            if flt.kind != "lpf":
                fail(f"filter {flt.name} has unknown kind {flt.kind!r} (known: lpf)")
            output(flt.name, "cutoff", flt.cutoff)
            if flt.input in filtered:
                fail(f"filter {flt.name}: {flt.input!r} is already filtered by {filtered[flt.input]}")
            filtered[flt.input] = flt.name
        oscillators = {o.name: o for o in self.oscillators}
        for flt in self.filters:
            if flt.input != "mix" and flt.input not in oscillators:
                fail(f"filter {flt.name}: input {flt.input!r} is neither an oscillator nor 'mix'")
        filter_of = {f.name: f.input for f in self.filters if f.input != "mix"}
        order = {o.name: i for i, o in enumerate(self.oscillators)}

        def signal(module: str, name: str, role: str) -> str:
            """The oscillator behind a signal name (an oscillator, or a filter on one)."""
            if name in filter_of:
                return filter_of[name]
            if name in oscillators:
                if name in filtered:
                    fail(f"{module}: {role} {name!r} is filtered by {filtered[name]}: name the filter instead")
                return name
            if any(f.name == name for f in self.filters):  # a filter on the mix
                fail(f"{module}: {role} {name!r} filters the mix, the synth's output: it is not a signal to route "
                     "(a filter on an oscillator is)")
            fail(f"{module}: {role} {name!r} is neither an oscillator nor a filter on one")

        for osc in self.oscillators:
            if osc.kind not in ("sine", "square_saw", "fm"):
                fail(f"oscillator {osc.name} has unknown kind {osc.kind!r} (known: sine, square_saw, fm)")
            if osc.keyboard not in self.keyboards:
                fail(f"oscillator {osc.name} is played by unknown keyboard {osc.keyboard!r}")
            if osc.kind == "fm":
                if osc.source is None:
                    fail(f"FM operator {osc.name} has no source")
                for role, value in (("pitch", osc.pitch), ("amp", osc.amp)):
                    if value is not None:
                        fail(f"FM operator {osc.name}: {role}={value!r} would be ignored (an FM operator's pitch is "
                             "its keyboard and tuning, and it has no VCA): remove it, or use a sine / square_saw")
                source = signal(osc.name, osc.source, "source")
                chain, cursor = {osc.name}, osc  # follow the sources back to a VCO; meeting one twice is a cycle
                while cursor.kind == "fm":
                    upstream = signal(cursor.name, cursor.source, "source")
                    if upstream in chain:
                        fail(f"FM operator {osc.name}: its sources form a cycle through {osc.source!r}")
                    chain.add(upstream)
                    cursor = oscillators[upstream]
                if order[source] > order[osc.name]:
                    fail(f"FM operator {osc.name} comes before its modulator {osc.source}: list the modulator first")
            else:
                if osc.source is not None:
                    fail(f"oscillator {osc.name} ({osc.kind}): source={osc.source!r} would be ignored (only an 'fm' "
                         "operator reads a source)")
                output(osc.name, "pitch", osc.pitch)
                output(osc.name, "amp", osc.amp)
        if self.noise_amp is not None:
            output("noise", "noise_amp", self.noise_amp)
            if "noise" not in self.mixer_inputs:
                fail("noise_amp is set but the mixer has no 'noise' input: add 'noise' to mixer_inputs or set "
                     "noise_amp=None")
        for name in self.mixer_inputs:
            if name == "noise":
                if self.noise_amp is None:
                    fail("the mixer lists 'noise' but the patch has no noise_amp")
            else:
                signal("mixer", name, "input")
        if not self.mixer_inputs:
            fail("the mixer has no inputs")
        if self.mixer_curves is not None and len(self.mixer_curves) != len(self.mixer_inputs):
            fail(f"mixer_curves has {len(self.mixer_curves)} entries for {len(self.mixer_inputs)} mixer inputs")
        for curve in self.mixer_curves or ():
            if isinstance(curve, bool) or not isinstance(curve, (int, float)) or not 0 < curve < float("inf"):
                fail(f"mixer_curves must be positive numbers, got {curve!r}")
        heard = {signal("mixer", name, "input") for name in self.mixer_inputs if name != "noise"}
        heard |= {signal(o.name, o.source, "source") for o in self.oscillators if o.kind == "fm"}
        for osc in self.oscillators:
            if osc.name not in heard:
                fail(f"oscillator {osc.name} is neither mixed nor an FM source, so its parameters would do nothing: "
                     "add it (or the filter on it) to mixer_inputs, or remove it")
        for name in self.mod_outputs:
            if name not in used:
                fail(f"mod-matrix output {name!r} drives nothing (no pitch, amp, noise_amp or cutoff names it)")
        for lfo in self.lfos:
            if lfo.name not in self.mod_inputs:
                fail(f"lfo {lfo.name} is not a mod-matrix input, so its parameters (and its envelopes') would do "
                     "nothing: add it to mod_inputs, or remove it")
        lfo_envelopes = {env for lfo in self.lfos for env in (lfo.rate_env, lfo.amp_env)}
        for env in self.envelopes:
            if env.name not in self.mod_inputs and env.name not in lfo_envelopes:
                fail(f"envelope {env.name} is neither a mod-matrix input nor an LFO's rate_env / amp_env, so its "
                     "parameters would do nothing: add it to mod_inputs, or remove it")
        played = {env.keyboard for env in self.envelopes} | {osc.keyboard for osc in self.oscillators}
        for keyboard in self.keyboards:
            if keyboard not in played:
                fail(f"keyboard {keyboard} triggers no envelope and plays no oscillator, so its parameters would do "
                     "nothing: name it in an envelope or oscillator, or remove it")
        return self

    def modules(self) -> dict[str, tuple[str, dict]]:
        """Parameterised modules: name -> (kind, extra) where extra holds matrix/vector sizes."""
        mods: dict[str, tuple[str, dict]] = {k: ("keyboard", {}) for k in self.keyboards}
        mods.update({e.name: ("adsr", {}) for e in self.envelopes})
        mods.update({lfo.name: ("lfo", {}) for lfo in self.lfos})
        mods.update({o.name: (o.kind, {}) for o in self.oscillators})
        mods.update({f.name: (f.kind, {}) for f in self.filters})
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
