"""The Triton control-rate adjoint (`backends.triton.grad.control_grad`) against the reference's autograd of the same
control-rate math (envelopes, LFOs with their rate and amplitude envelopes, the modulation matrix), float64."""

from __future__ import annotations

import pytest
import torch

from doppel_torch import Synth, get_synth
from doppel_torch.backends.torch import functional as F
from doppel_torch.backends.torch.render import _cols
from doppel_torch.spec.program import INPUT_LFO, MATRIX
from tests.backends.patches import USER_PATCHES

pytest.importorskip("triton")


def _reference_mods(program, human):
    """The first half of `backends.torch.render.render`: mods (B, n_out, C)."""
    tab = program.on(human.device)
    attack, decay, sustain, release, alpha, keyboard = _cols(
        tab, "envelopes", "attack", "decay", "sustain", "release", "alpha", "keyboard")
    (duration,) = _cols(tab, "keyboards", "duration")
    env = F.adsr(attack_s=human[:, attack], decay_s=human[:, decay], sustain=human[:, sustain],
                 release_s=human[:, release], alpha=human[:, alpha], note_on_s=human[:, duration[keyboard]],
                 n_control=program.n_control, control_rate=program.control_rate, eps=program.eps)
    if program.rows("lfos"):
        freq, depth, phase0, rate_env, amp_env = _cols(
            tab, "lfos", "frequency", "mod_depth", "initial_phase", "rate_env", "amp_env")
        weights = _cols(tab, "lfos", "sin", "tri", "saw", "rsaw", "sqr")
        lfo = F.lfo(frequency_hz=human[:, freq], mod_depth_hz=human[:, depth], initial_phase=human[:, phase0],
                    shape_weights=torch.stack([human[:, w] for w in weights], dim=-1), rate_env=env[:, rate_env],
                    control_rate=program.control_rate) * env[:, amp_env]
    else:
        lfo = env[:, :0]
    kind, index = _cols(tab, "mod_inputs", "kind", "index")
    inputs = torch.cat([env, lfo], dim=1)[:, index + (kind == INPUT_LFO) * env.shape[1]]
    return torch.matmul(human[:, tab[MATRIX]], inputs)


@pytest.mark.parametrize("name, duration", [("voice", 0.05), ("voicefm", 0.05), ("parametric", 0.05),
                                            ("fan_out", 0.05), ("voice", 0.3)])  # 0.3 s: 144 control samples
def test_control_adjoint_equals_the_reference_autograd(name, duration):
    from doppel_torch.backends.triton import grad, synth as kernels

    s = Synth(USER_PATCHES[name](), duration=duration) if name in USER_PATCHES else get_synth(name, duration=duration)
    program = s.program
    theta = 0.05 + 0.9 * s.random_params(2, seed=3, dtype=torch.float64)
    human = program.layout.table.to_human(theta).contiguous().requires_grad_(True)
    mods = _reference_mods(program, human)
    gmods = torch.randn(mods.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    (want,) = torch.autograd.grad((mods * gmods).sum(), human)
    got = torch.zeros_like(want)
    grad.control_grad(program, human.detach(), gmods, got, kernels._device_tables(program, human.device),
                      kernels._device_consts(program, human.device, torch.float64))
    floor = 1e-9 * want.abs().amax(dim=-1, keepdim=True)
    rel = (got - want).abs() / torch.maximum(want.abs(), floor)
    assert float(rel.max()) <= 1e-7, (float(rel.max()), int(rel.argmax()))
