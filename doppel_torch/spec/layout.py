"""Where each module parameter lives in the flat theta vector of a patch."""

from __future__ import annotations

from doppel_torch.spec.params import ParamSpec, ParamTable
from doppel_torch.spec.patch import Patch


class Layout:
    """Flat-vector layout of a patch: specs in SynthAX order plus index lookups used by every backend.

    index[module][param] -> flat position (scalar parameters);
    mod_matrix -> (n_out, n_in) nested list of flat positions; mixer_levels -> flat positions per mixer input.
    """

    def __init__(self, patch: Patch, apply_mixer_curve: bool = False):
        self.patch = patch.validate()
        self.specs: list[ParamSpec] = patch.param_specs(apply_mixer_curve)
        self.table = ParamTable(self.specs)
        self.index: dict[str, dict[str, int]] = {}
        n_out, n_in = len(patch.mod_outputs), len(patch.mod_inputs)
        self.mod_matrix = [[0] * n_in for _ in range(n_out)]
        self.mixer_levels = [0] * len(patch.mixer_inputs)
        for pos, spec in enumerate(self.specs):
            if spec.module == "mod_matrix":
                out, inp = spec.index
                self.mod_matrix[out][inp] = pos
            elif spec.module == "mixer":
                self.mixer_levels[spec.index[0]] = pos
            else:
                self.index.setdefault(spec.module, {})[spec.param] = pos

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    def __len__(self) -> int:
        return len(self.specs)
