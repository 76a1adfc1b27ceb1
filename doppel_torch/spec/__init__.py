"""The specification every backend reads: parameter ranges (`params`), the `Patch` (modules and wiring), the flat
theta `Layout` and the lowered `Program`. Nothing here imports a backend."""

from doppel_torch.spec.layout import Layout
from doppel_torch.spec.params import KIND_PARAMS, ParamRange, ParamSpec, ParamTable
from doppel_torch.spec.patch import Envelope, Filter, Lfo, Oscillator, Patch
from doppel_torch.spec.program import TABLES, Program, lower

__all__ = ["KIND_PARAMS", "ParamRange", "ParamSpec", "ParamTable", "Envelope", "Lfo", "Oscillator", "Filter", "Patch",
           "Layout", "Program", "TABLES", "lower"]
