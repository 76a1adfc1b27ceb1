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
    in the backward. Between `to_human` and the render under torch.compile only: torch 2.9 (and 2.13) Inductor
    fused the backward's gathers of the human-unit gradient (the render's index ops, the sums over time of
    broadcast terms) with to_human's per-column slope into CPU code that read the gradient before it was complete:
    gradients of batches of 2 or more came back 0 for the ADSRs' alpha and release, the LFOs and the modulation
    matrix (relative error 0.02 in float64, 0.7 in float32; found from outside). Each half compiles right alone
    (`aot_eager` is right too, and so is Inductor with max_fusion_size=1): the fence keeps them apart."""
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
