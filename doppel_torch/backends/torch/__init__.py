"""backend="torch": the reference, in eager PyTorch. It is the specification every kernel equals: float32 or
float64, any device, differentiable with respect to theta and an explicit noise tensor."""

from __future__ import annotations

import torch

from doppel_torch import rng
from doppel_torch.backends import base
from doppel_torch.backends.torch.functional import normalize_if_clipping
from doppel_torch.backends.torch.render import render as render_program
from doppel_torch.spec.program import Program


class Backend(base.Backend):
    name = "torch"
    differentiable = True
    transformable = True

    def render(self, program: Program, theta: torch.Tensor, *, noise, seed, indices, normalize, out):
        human = program.layout.table.to_human(theta)
        if noise is None and program.rows("noise"):
            noise = rng.noise(seed, indices, program.n_samples, dtype=theta.dtype)
        audio = render_program(program, human, noise)
        if normalize:
            audio = normalize_if_clipping(audio)
        if out is None:
            return audio
        return out.copy_(audio)


__all__ = ["Backend", "render_program"]
