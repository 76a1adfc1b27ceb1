"""backend="torch": the reference, in eager PyTorch. It is the specification every kernel equals: float32 or
float64, any device, differentiable with respect to theta and an explicit noise tensor."""

from __future__ import annotations

import torch

from doppel_torch import rng
from doppel_torch.backends import base
from doppel_torch.backends.torch.functional import normalize_if_clipping
from doppel_torch.backends.torch.render import render as render_program
from doppel_torch.spec.program import Program


@torch.library.custom_op("doppel_torch::fence", mutates_args=())
def fence(x: torch.Tensor) -> torch.Tensor:
    """A copy of x that torch.compile's Inductor cannot fuse across, in the forward and (its backward is a fence too)
    in the backward. Between `to_human` and the render under torch.compile only: with both in one graph, torch
    2.9's (and 2.13's) Inductor returned gradients of 0 for the ADSRs' alpha and release, the LFOs and the
    modulation matrix at batch >= 2 (voice, relative error 0.02 in float64, 0.7 in float32; found from outside).
    Each half compiles right alone, `aot_eager` is right, and so is Inductor with max_fusion_size=1; any per-column
    scaling of theta before the render (to_human's slope, or theta * k) sets it off, a full (B, m) factor does not:
    a fusion of the render's gradient gathers with a broadcast multiply. The fence keeps them apart."""
    return x.clone()


@fence.register_fake
def _(x):
    return torch.empty_like(x)


torch.library.register_autograd("doppel_torch::fence", lambda ctx, grad: fence(grad))


class Backend(base.Backend):
    name = "torch"
    differentiable = True
    transformable = True

    def render(self, program: Program, theta: torch.Tensor, *, noise, seed, indices, normalize, out):
        human = program.layout.table.to_human(theta)
        if torch.compiler.is_compiling():
            human = fence(human)
        if noise is None and program.rows("noise"):
            noise = rng.noise(seed, indices, program.n_samples, dtype=theta.dtype)
        audio = render_program(program, human, noise)
        if normalize:
            audio = normalize_if_clipping(audio)
        if out is None:
            return audio
        return out.copy_(audio)


__all__ = ["Backend", "render_program"]
