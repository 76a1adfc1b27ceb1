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
              "shape": "0 square .. 1 saw"} for kind in ("sine", "square_saw")},
    # an FM operator's frequency is f0 (1 + mod_depth x source): its depth is the modulation index
    "fm": {"tuning": "semitones", "mod_depth": "modulation index (x f0 per unit of source)", "initial_phase": "rad"},
    "lpf": {"cutoff": "MIDI note", "mod_depth": "semitones per unit of cutoff modulation"},
    "mod_matrix": {"mod": "amount"},
    "mixer": {"level": "level"},
}


def human_unit(kind: str, param: str) -> str:
    """The unit of a parameter in human terms, e.g. ("adsr", "attack") -> "s"; "" where none is declared."""
    return HUMAN_UNITS.get(kind, {}).get(param, "")


MOD_RANGE = ParamRange(0.0, 1.0, 0.5)  # modulation matrix entries
LEVEL_RANGE = ParamRange(0.0, 1.0)  # audio mixer levels (per-input curves may override)


def _human_and_slope(unit: torch.Tensor, constants: tuple[torch.Tensor, ...], slope: bool):
    """to_human's values and, if `slope`, d human / d unit: k a p |d| ** (p - 1) with d = a u + b, p = 1 / curve.

    At d = 0 (u = 1/2 on a symmetric range, u = 0 otherwise) the slope is k a where p = 1 (a linear range) and 0
    where p != 1 (there |d| ** p has an infinite or zero one; 0 keeps every gradient finite), so a match started at
    the cube's centre still moves its linear symmetric parameters."""
    lo, _, p, _, a, b, k, s = constants
    d = unit * a + b
    mag = d.abs()
    shaped = mag.pow(p)
    dh_du = None
    if slope:  # p |d| ** (p - 1) as p |d| ** p / |d| (one pow: a tensor-exponent pow is most of this function's time)
        dh_du = torch.where(mag > 0, shaped * p / mag, (p == 1.0).to(unit.dtype)).mul_(k * a)
    return shaped.mul_(d.sign()).add_(s).mul_(k).add_(lo), dh_du


class _ToHuman(torch.autograd.Function):
    """`ParamTable.to_human` with its derivative formed in the forward (an elementwise map: backward = grad x slope).
    A backward that must itself be differentiable (create_graph=True) recomputes the slope with autograd ops."""

    @staticmethod
    def forward(ctx, unit, constants):
        human, slope = _human_and_slope(unit.detach(), constants, slope=True)
        ctx.save_for_backward(unit, slope)
        ctx.constants = constants
        return human

    @staticmethod
    def backward(ctx, grad):
        unit, slope = ctx.saved_tensors
        return _to_human_backward(grad, unit, slope, ctx.constants), None


class _ToHumanFunc(torch.autograd.Function):
    """`_ToHuman` in the form torch.func's transforms accept (setup_context, a generated vmap rule); slower to call
    (the slope is a second output): used only on torch.func's tensors."""

    generate_vmap_rule = True

    @staticmethod
    def forward(unit, constants):
        return _human_and_slope(unit.detach(), constants, slope=True)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(inputs[0], output[1])
        ctx.save_for_forward(output[1])
        ctx.constants = inputs[1]

    @staticmethod
    def backward(ctx, grad, _grad_slope):
        unit, slope = ctx.saved_tensors
        return _to_human_backward(grad, unit, slope, ctx.constants), None

    @staticmethod
    def jvp(ctx, unit_tangent, _constants_tangent):  # torch.func.jvp: the tangent times the slope
        (slope,) = ctx.saved_tensors
        return unit_tangent * slope, None


def _to_human_backward(grad: torch.Tensor, unit: torch.Tensor, slope: torch.Tensor,
                       constants: tuple[torch.Tensor, ...]) -> torch.Tensor:
    if torch.is_grad_enabled():  # a differentiable backward (create_graph, torch.func): the slope as a function of unit
        slope = _slope(unit, constants)
    return grad * slope


def _slope(unit: torch.Tensor, constants: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """`_human_and_slope`'s slope in out-of-place autograd ops (its own derivative finite at d = 0 too)."""
    _, _, p, _, a, b, k, _ = constants
    mag = (unit * a + b).abs()
    inner = torch.where(mag > 0, mag, torch.ones_like(mag)).pow(p - 1.0) * p
    return torch.where(mag > 0, inner, (p == 1.0).to(unit.dtype)) * (k * a)


def _check_params(x: torch.Tensor, m: int, what: str, values: str) -> None:
    """One line for a tensor to_human / to_unit cannot take (a broadcast error, or an int theta's truncated values)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        kind = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{what} takes a floating-point tensor of {values}, got {kind}")
    if x.dim() == 0 or x.shape[-1] != m:
        raise ValueError(f"{what} takes (..., {m}) {values}, got shape {tuple(x.shape)}")


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
        (1 / curve). With autograd the derivative is formed in the same pass (`_ToHuman`: the slope saved, one multiply
        backward, instead of autograd's ~20 small ops: forward + backward at batch 64 1.5-1.7x, 0.07-0.28 ms a step)."""
        _check_params(unit, self.minimum.shape[0], "to_human", "normalised values in [0, 1]")
        if not torch.compiler.is_compiling() and torch._C._functorch.is_functorch_wrapped_tensor(unit):
            return _ToHumanFunc.apply(unit, self._on(unit))[0]
        if torch.is_grad_enabled() and unit.requires_grad:
            return _ToHuman.apply(unit, self._on(unit))
        return _human_and_slope(unit, self._on(unit), slope=False)[0]

    def to_unit(self, human: torch.Tensor) -> torch.Tensor:
        """Human units (..., m) -> normalised [0, 1] (..., m); the inverse of `to_human`."""
        _check_params(human, self.minimum.shape[0], "to_unit", "values in human units")
        lo, hi, inv_curve, symmetric, *_ = self._on(human)
        u = (human - lo) / (hi - lo)
        curve = 1.0 / inv_curve
        d = torch.where(symmetric, 2.0 * u - 1.0, u)
        shaped = d.abs() ** curve * torch.sign(d)
        return torch.where(symmetric, (1.0 + shaped) / 2.0, shaped)
