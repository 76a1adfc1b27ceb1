"""Delta specs: how far each synth parameter is perturbed in a doppelganger pair.

The paper perturbs every normalised parameter by one scalar delta (theta_k = clip(theta + delta z_k, eps, 1)).
A delta spec says per parameter how large delta is. Grammar (a float stays valid):

    SPEC  := TERM ("+" TERM)*
    TERM  := NUMBER                              the paper's isotropic delta, e.g. 0.25
           | "equal-effect:" NUMBER ["@" CSV]     per-parameter deltas with equal log-mel effect (below)
           | "keep:" GROUP "=" NUMBER ("," GROUP "=" NUMBER)*   set the deltas of named groups
    e.g.  0.25    equal-effect:0.25    0.25+keep:pitch=0.02    equal-effect:0.25+keep:pitch=0.02,lfos=0.1

Exactly one base (a NUMBER or an equal-effect term) comes first; keep terms then set the delta of every parameter
of a group, applied left to right (a later group wins where groups overlap). GROUP is a named group
(`param_groups`, listed by `doppel-torch info --groups`: pitch, keyboards, envelopes, lfos, modulation, mixer,
oscillators, filters) or a module name of the synth (adsr_1, vco_2, ...). Every value lies in [0, MAX_DELTA].

equal-effect:D: the delta profile of the synth (`doppel_torch.delta.profile`: for each parameter, the median
log-mel change when that parameter alone is perturbed, measured at a grid of deltas) gives the target effect
T = the median over parameters of their effect at scalar delta D; each parameter gets the delta at which its own
effect equals T (log-log interpolation of its profile; below the grid, effect taken proportional to delta;
MAX_DELTA where even MAX_DELTA falls short of T). The profiles of the built-in synths ship with the package
(`doppel_torch/delta/profiles/<synth>.csv`, made by `doppel-torch delta-profile`); "@CSV" names another one (a
custom patch's). Resolving reads a table; nothing is measured per training step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

# The largest delta: theta lies in [0, 1], so at delta = 1 one standard deviation of the perturbation spans the whole
# range and 63 % of each view's parameters land on a clip bound (20 % at the paper's 0.25, 80 % at 2; measured on
# 1e6 draws of U(0, 1) + delta N(0, 1)): larger deltas only push the rest onto the bounds. One rule for the
# library, `doppel-torch train` and `doppel-torch sample`.
MAX_DELTA = 1.0

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"

GROUPS: dict[str, str] = {
    "pitch": "the keyboards' midi_f0 and the oscillators' tuning",
    "keyboards": "every keyboard parameter (midi_f0, note duration)",
    "envelopes": "every ADSR parameter, the LFOs' rate and amplitude envelopes included",
    "lfos": "every LFO parameter (frequency, mod depth, initial phase, shape weights)",
    "modulation": "the modulation matrix",
    "mixer": "the mixer levels",
    "oscillators": "every oscillator parameter (tuning, mod depth, initial phase, shape)",
    "filters": "every filter parameter",
}


def param_groups(synth) -> dict[str, list[int]]:
    """Named groups of `synth`'s flat parameters: group -> indices into theta (`synth.param_names` order).

    Built from the synth's Patch; a group the patch has nothing of is empty (e.g. filters on voicefm).
    """
    patch, names, modules = synth.patch, list(synth.param_names), list(synth.module_of_param)
    keyboards = set(patch.keyboards)
    envelopes = {e.name for e in patch.envelopes}
    lfos = {lfo.name for lfo in patch.lfos}
    oscillators = {o.name for o in patch.oscillators}
    filters = {f.name for f in patch.filters}

    def of(modules_in: set[str]) -> list[int]:
        return [i for i, m in enumerate(modules) if m in modules_in]

    pitch = {f"{k}/midi_f0" for k in keyboards} | {f"{o}/tuning" for o in oscillators}
    return {
        "pitch": [i for i, n in enumerate(names) if n in pitch],
        "keyboards": of(keyboards),
        "envelopes": of(envelopes),
        "lfos": of(lfos),
        "modulation": of({"mod_matrix"}),
        "mixer": of({"mixer"}),
        "oscillators": of(oscillators),
        "filters": of(filters),
    }


@dataclass(frozen=True)
class DeltaSpec:
    """A parsed delta spec: a scalar or equal-effect base, then keep assignments (group, value) in order."""

    scalar: float | None = None
    equal_effect: float | None = None
    profile: str | None = None  # equal-effect's "@CSV"
    keep: tuple[tuple[str, float], ...] = field(default_factory=tuple)

    def __str__(self) -> str:
        base = f"{self.scalar:g}" if self.scalar is not None else f"equal-effect:{self.equal_effect:g}"
        if self.profile is not None:
            base += f"@{self.profile}"
        if self.keep:
            base += "+keep:" + ",".join(f"{g}={v:g}" for g, v in self.keep)
        return base

    @property
    def is_scalar(self) -> bool:
        return self.scalar is not None and not self.keep


def _value(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"delta spec: {where}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"delta spec: {where}: must be a finite number, got {text!r}")
    if value < 0:
        raise ValueError(f"delta spec: {where}: a delta must be >= 0 (it scales N(0, 1) noise), got {value:g}")
    if value > MAX_DELTA:
        raise ValueError(
            f"delta spec: {where}: a delta must be <= {MAX_DELTA:g} (theta lies in [0, 1]; larger deltas only clip "
            f"more parameters to its bounds), got {value:g}"
        )
    return value


def parse_delta(spec: "str | float | DeltaSpec") -> DeltaSpec:
    """Parse a delta spec (see the module docstring); raise ValueError naming what is wrong."""
    if isinstance(spec, DeltaSpec):
        return spec
    if isinstance(spec, bool):
        raise ValueError(f"delta must be a number or a delta spec string, got {spec!r}")
    if isinstance(spec, (int, float)):
        return DeltaSpec(scalar=_value(repr(float(spec)), "the delta"))
    if not isinstance(spec, str):
        raise ValueError(f"delta must be a number or a delta spec string, got {type(spec).__name__} {spec!r}")
    text = spec.strip()
    if not text:
        raise ValueError("delta spec is empty; e.g. 0.25, equal-effect:0.25 or 0.25+keep:pitch=0.02")
    scalar = equal = profile = None
    keep: list[tuple[str, float]] = []
    for position, term in enumerate(t.strip() for t in text.split("+")):
        if not term:
            raise ValueError(f"delta spec {spec!r}: empty term (two '+' in a row, or a '+' at an end)")
        head, colon, body = term.partition(":")
        if not colon:
            if position != 0:
                raise ValueError(
                    f"delta spec {spec!r}: the base ({term!r}) must come first and only once; "
                    "write e.g. 0.25+keep:pitch=0.02"
                )
            scalar = _value(term, "the base delta")
        elif head == "equal-effect":
            if position != 0:
                raise ValueError(f"delta spec {spec!r}: equal-effect is a base and must come first, once")
            value, at, path = body.partition("@")
            equal = _value(value, "equal-effect")
            if at:
                if not path:
                    raise ValueError(f"delta spec {spec!r}: '@' must be followed by a delta-profile CSV path")
                profile = path
        elif head == "keep":
            if position == 0:
                raise ValueError(
                    f"delta spec {spec!r}: keep sets groups on top of a base delta; write e.g. 0.25+keep:{body}"
                )
            if not body:
                raise ValueError(f"delta spec {spec!r}: keep needs GROUP=VALUE pairs, e.g. keep:pitch=0.02")
            for item in body.split(","):
                group, eq, value = item.partition("=")
                group = group.strip()
                if not eq or not group:
                    raise ValueError(
                        f"delta spec {spec!r}: {item!r} is not GROUP=VALUE (e.g. keep:pitch=0.02,lfos=0.1)"
                    )
                keep.append((group, _value(value.strip(), f"keep:{group}")))
        else:
            raise ValueError(
                f"delta spec {spec!r}: unknown term {head!r}; terms are a number, equal-effect:D and "
                "keep:GROUP=VALUE,... joined by '+'"
            )
    return DeltaSpec(scalar=scalar, equal_effect=equal, profile=profile, keep=tuple(keep))


def normalize_delta(spec: "str | float") -> "float | str":
    """A config value for a delta spec: a float for a plain scalar, else the canonical spec string."""
    parsed = parse_delta(spec)
    return parsed.scalar if parsed.is_scalar else str(parsed)


def resolve_delta(spec: "str | float | DeltaSpec", synth) -> torch.Tensor:
    """The (m,) float64 per-parameter delta of a spec for `synth` (`synth.param_names` order)."""
    from doppel_torch.delta.profile import equal_effect_deltas, load_profile

    parsed = parse_delta(spec)
    m = synth.num_params
    if parsed.scalar is not None:
        vec = torch.full((m,), parsed.scalar, dtype=torch.float64)
    else:
        path = Path(parsed.profile) if parsed.profile else PROFILE_DIR / f"{synth.patch.name}.csv"
        if not path.is_file():
            raise ValueError(
                f"equal-effect needs the delta profile of {synth.patch.name!r}; none at {path}: make one with "
                f"`doppel-torch delta-profile` (--synth or --patch) and pass equal-effect:{parsed.equal_effect:g}@CSV"
            )
        vec = equal_effect_deltas(load_profile(path, synth), parsed.equal_effect)
    if parsed.keep:
        groups = param_groups(synth)
        modules = list(synth.module_of_param)
        for group, value in parsed.keep:
            if group in groups:
                members = groups[group]
                if not members:
                    raise ValueError(f"delta spec: group {group!r} has no parameters in {synth.patch.name}")
            elif group in modules:
                members = [i for i, mod in enumerate(modules) if mod == group]
            else:
                raise ValueError(
                    f"delta spec: unknown group {group!r}; groups: {', '.join(GROUPS)} or a module of "
                    f"{synth.patch.name} ({', '.join(sorted(set(modules)))}); see `doppel-torch info --groups`"
                )
            vec[members] = value
    return vec


def describe_delta(vec: torch.Tensor, synth) -> str:
    """One line on a resolved delta vector: its range and the pitch group's value."""
    if bool((vec == vec[0]).all()):
        return f"{float(vec[0]):g} for every parameter"
    pitch = param_groups(synth)["pitch"]
    pitch_text = f"; pitch group {', '.join(f'{float(vec[i]):.3g}' for i in pitch)}" if pitch else ""
    return (
        f"per parameter: min {float(vec.min()):.3g}, median {float(vec.median()):.3g}, "
        f"max {float(vec.max()):.3g}{pitch_text}"
    )

