"""Parameter ranges as data, and the normalised [0, 1] <-> human-unit mapping.

Ranges, names and the curve rule follow SynthAX 0.2.2 (and torchsynth 1.0.2, which uses the same math):

    asymmetric:  human = min + (max - min) * u ** (1 / curve)
    symmetric:   d = 2u - 1;  human = min + (max - min) / 2 * (1 + sign(d) * |d| ** (1 / curve))

A curve of 1 is linear. SynthAX applies a module's curve only when *every* entry of it differs from 1
(`jnp.all(curve != 1)`), so the Voice mixer's declared curve [1, 1, 0.025] is not applied there, while
torchsynth applies 0.025 to the noise level (DESIGN.md, quirk 2). `ParamSpec.curve_applied` records
what is actually applied; synths choose with their `mixer_curve` option.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ParamRange:
    """Range of one parameter in human units."""

    minimum: float
    maximum: float
    curve: float = 1.0
    symmetric: bool = False


@dataclass(frozen=True)
class ParamSpec:
    """One entry of the flat parameter vector theta."""

    module: str  # e.g. "adsr_1"
    param: str  # e.g. "attack"; matrices and vectors are flattened into one spec per entry
    index: tuple[int, ...]  # () for scalars, (k,) for vectors, (out, in) for matrices
    range: ParamRange
    curve_applied: bool

    @property
    def name(self) -> str:
        """Name as in SynthAX's flattened pytree: `adsr_1/attack`, `mixer/level[2]`, `mod_matrix/mod[0,1]`."""
        if not self.index:
            return f"{self.module}/{self.param}"
        return f"{self.module}/{self.param}[{','.join(str(i) for i in self.index)}]"


# Parameter declarations of each module kind, exactly as SynthAX 0.2.2 declares them.
PI = math.pi
KIND_PARAMS: dict[str, dict[str, ParamRange]] = {
    "keyboard": {
        "midi_f0": ParamRange(0.0, 127.0),
        "duration": ParamRange(0.01, 4.0, 0.5),
    },
    "adsr": {
        "attack": ParamRange(0.0, 2.0, 0.5),
        "decay": ParamRange(0.0, 2.0, 0.5),
        "sustain": ParamRange(0.0, 1.0),
        "release": ParamRange(0.0, 5.0, 0.5),
        "alpha": ParamRange(0.1, 6.0),
    },
    "lfo": {
        "frequency": ParamRange(0.0, 20.0, 0.25),
        "mod_depth": ParamRange(-10.0, 20.0, 0.5, symmetric=True),
        "initial_phase": ParamRange(-PI, PI),
        "sin": ParamRange(0.0, 1.0),
        "tri": ParamRange(0.0, 1.0),
        "saw": ParamRange(0.0, 1.0),
        "rsaw": ParamRange(0.0, 1.0),
        "sqr": ParamRange(0.0, 1.0),
    },
    "sine": {
        "tuning": ParamRange(-24.0, 24.0),
        "mod_depth": ParamRange(-96.0, 96.0, 0.2, symmetric=True),
        "initial_phase": ParamRange(-PI, PI),
    },
    "square_saw": {
        "tuning": ParamRange(-24.0, 24.0),
        "mod_depth": ParamRange(-96.0, 96.0, 0.2, symmetric=True),
        "initial_phase": ParamRange(-PI, PI),
        "shape": ParamRange(0.0, 1.0),
    },
    "fm": {
        "tuning": ParamRange(-24.0, 24.0),
        "mod_depth": ParamRange(-96.0, 96.0, 0.2, symmetric=True),
        "initial_phase": ParamRange(-PI, PI),
    },
    # One-pole low-pass (SynthAX's `LPF`), not in SynthAX's synths: cutoff as a MIDI note (8.2 Hz .. 19.9 kHz,
    # clamped to Nyquist), moved by mod_depth semitones per unit of its modulation-matrix output, as a VCO's pitch.
    "lpf": {
        "cutoff": ParamRange(0.0, 135.0),
        "mod_depth": ParamRange(-96.0, 96.0, 0.2, symmetric=True),
    },
}
# The human unit of each parameter, for people reading a theta (`doppel-torch match` writes them beside the values).
HUMAN_UNITS: dict[str, dict[str, str]] = {
    "keyboard": {"midi_f0": "MIDI note", "duration": "s (note on)"},
    "adsr": {"attack": "s", "decay": "s", "sustain": "level", "release": "s", "alpha": "exponent"},
    "lfo": {"frequency": "Hz", "mod_depth": "Hz per unit of rate envelope", "initial_phase": "rad",
            **{shape: "shape weight" for shape in ("sin", "tri", "saw", "rsaw", "sqr")}},
    **{kind: {"tuning": "semitones", "mod_depth": "semitones per unit of pitch modulation", "initial_phase": "rad",
              "shape": "0 square .. 1 saw"} for kind in ("sine", "square_saw", "fm")},
    "lpf": {"cutoff": "MIDI note", "mod_depth": "semitones per unit of cutoff modulation"},
    "mod_matrix": {"mod": "amount"},
    "mixer": {"level": "level"},
}


def human_unit(kind: str, param: str) -> str:
    """The unit of a parameter in human terms, e.g. ("adsr", "attack") -> "s"; "" where none is declared."""
    return HUMAN_UNITS.get(kind, {}).get(param, "")


MOD_RANGE = ParamRange(0.0, 1.0, 0.5)  # modulation matrix entries
LEVEL_RANGE = ParamRange(0.0, 1.0)  # audio mixer levels (per-input curves may override)


class ParamTable:
    """Per-entry range tensors of a flat layout, for vectorised mapping of a whole theta at once."""

    def __init__(self, specs: list[ParamSpec]):
        self.minimum = torch.tensor([s.range.minimum for s in specs], dtype=torch.float64)
        self.maximum = torch.tensor([s.range.maximum for s in specs], dtype=torch.float64)
        self.inv_curve = torch.tensor(
            [1.0 / s.range.curve if s.curve_applied else 1.0 for s in specs], dtype=torch.float64
        )
        self.symmetric = torch.tensor([s.range.symmetric for s in specs], dtype=torch.bool)
        self._cache: dict[tuple, tuple[torch.Tensor, ...]] = {}

    def _on(self, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        key = (like.device, like.dtype)
        if key not in self._cache:
            lo, hi, sym = self.minimum, self.maximum, self.symmetric
            # to_human's per-column constants: d = a u + b, human = lo + k (|d| ** inv_curve sign(d) + s)
            a = torch.where(sym, 2.0, 1.0).to(torch.float64)
            b = torch.where(sym, -1.0, 0.0).to(torch.float64)
            k = torch.where(sym, (hi - lo) / 2.0, hi - lo)
            s = torch.where(sym, 1.0, 0.0).to(torch.float64)
            self._cache[key] = tuple(
                t.to(device=like.device, dtype=like.dtype if t.is_floating_point() else t.dtype)
                for t in (lo, hi, self.inv_curve, sym, a, b, k, s)
            )
        return self._cache[key]

    def to_human(self, unit: torch.Tensor) -> torch.Tensor:
        """Normalised (..., m) in [0, 1] -> human units (..., m). Differentiable in the open cube.

        Symmetric ranges: lo + (hi - lo) / 2 (|2u - 1| ** (1 / curve) sign(2u - 1) + 1); others: lo + (hi - lo) u **
        (1 / curve). Without autograd the zero-safe power is skipped (same values: 0 ** inv_curve = 0)."""
        lo, _, inv_curve, _, a, b, k, s = self._on(unit)
        d = unit * a + b
        if torch.is_grad_enabled() and unit.requires_grad:
            mag = d.abs()
            # |d| ** (1 / curve), with a zero-safe base so gradients stay finite at d = 0.
            safe = torch.where(mag > 0, mag, torch.ones_like(mag))
            shaped = torch.where(mag > 0, safe**inv_curve, torch.zeros_like(mag)) * torch.sign(d)
            return lo + k * (shaped + s)
        shaped = d.abs().pow_(inv_curve).mul_(d.sign_())
        return shaped.add_(s).mul_(k).add_(lo)

    def to_unit(self, human: torch.Tensor) -> torch.Tensor:
        """Human units (..., m) -> normalised [0, 1] (..., m); the inverse of `to_human`."""
        lo, hi, inv_curve, symmetric, *_ = self._on(human)
        u = (human - lo) / (hi - lo)
        curve = 1.0 / inv_curve
        d = torch.where(symmetric, 2.0 * u - 1.0, u)
        shaped = d.abs() ** curve * torch.sign(d)
        return torch.where(symmetric, (1.0 + shaped) / 2.0, shaped)
