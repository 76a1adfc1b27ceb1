"""The normalised <-> human mapping (spec/params.py): `to_human` with its derivative formed in the forward."""

import pytest
import torch

from doppel_torch import get_synth
from doppel_torch.spec.params import ParamRange, ParamSpec, ParamTable


@pytest.mark.parametrize("name", ["voice", "voicefm", "parametric"])
def test_to_human_gradient_is_its_derivative(name):
    table = get_synth(name).layout.table
    unit = torch.rand(3, table.minimum.numel(), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    unit = unit.clamp(0.01, 0.99).requires_grad_(True)
    assert torch.autograd.gradcheck(table.to_human, (unit,))
    # the values are those of the no-grad path, bit for bit (renders with and without grad share them)
    assert torch.equal(table.to_human(unit).detach(), table.to_human(unit.detach()))


def test_to_human_slope_at_a_symmetric_centre():
    """u = 1/2 on a symmetric range (d = 0): a linear range keeps its slope (hi - lo), so a descent started at the
    cube's centre moves it; a curved one gets 0 (its |d| ** p has an infinite or zero slope there), never NaN."""
    ranges = [ParamRange(-2.0, 6.0, symmetric=True), ParamRange(-10.0, 20.0, 0.5, symmetric=True),
              ParamRange(-1.0, 1.0, 2.0, symmetric=True)]
    table = ParamTable([ParamSpec("m", f"p{i}", (), r, curve_applied=True) for i, r in enumerate(ranges)])
    unit = torch.full((1, 3), 0.5, dtype=torch.float64, requires_grad=True)
    human = table.to_human(unit)
    human.sum().backward()
    assert human.tolist() == [[2.0, 5.0, 0.0]]
    assert unit.grad.tolist() == [[8.0, 0.0, 0.0]]


def test_an_fm_operators_depth_is_named_a_modulation_index():
    """An FM operator's frequency is f0 (1 + mod_depth x source): its depth is no pitch modulation in semitones."""
    from doppel_torch import get_synth

    units = dict(zip(get_synth("voicefm").param_names, get_synth("voicefm").param_units))
    kinds = {name.split("/")[0] for name, unit in units.items() if unit.startswith("modulation index")}
    assert kinds and all(units[f"{k}/tuning"] == "semitones" for k in kinds)
    assert any(u == "semitones per unit of pitch modulation" for u in units.values())  # the VCOs keep theirs
