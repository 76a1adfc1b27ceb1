"""The kernels are torch ops: torch.compile(fullgraph=True) traces pairs -> render -> log-mel with backend="cpu"."""

from __future__ import annotations

import pytest
import torch

from doppel_torch import DoppelgangerPairs, LogMelFrontend, get_synth


def test_compile_fullgraph_pairs_and_logmel_with_the_cpu_kernel():
    synth = get_synth("voice", backend="cpu")  # 1 s: the log-mel frontend needs 96 frames
    pairs = DoppelgangerPairs(synth, delta=0.25, seed=0)
    frontend = LogMelFrontend()

    def step(idx):
        a, b = pairs(idx)
        return frontend(torch.cat([a, b]))

    idx = torch.arange(3)
    compiled = torch.compile(step, fullgraph=True)  # a graph break (a host sync, an opaque call) raises here
    got = compiled(idx)
    assert got.shape == (6, 1, 96, 64)
    torch.testing.assert_close(got, step(idx), atol=1e-4, rtol=0)


def test_ops_are_registered():
    import doppel_torch.backends.cpu  # noqa: F401
    import doppel_torch.backends.triton.synth  # noqa: F401

    assert hasattr(torch.ops.doppel_torch, "cpu_render") and hasattr(torch.ops.doppel_torch, "triton_render")


@pytest.mark.slow  # torch.compile of the render and its backward: ~3 min on 2 loaded cores
def test_compile_fullgraph_forward_and_backward_with_the_cpu_kernel():
    synth = get_synth("voice", backend="cpu", duration=0.05)

    def loss(theta):
        return synth(theta).square().mean()  # the default validate=True: its value checks stay out of the graph

    theta = (0.05 + 0.9 * synth.random_params(3, seed=0, dtype=torch.float64)).requires_grad_(True)
    torch.compile(loss, fullgraph=True)(theta).backward()  # a graph break raises here
    compiled = theta.grad.clone()
    theta.grad = None
    loss(theta).backward()
    torch.testing.assert_close(compiled, theta.grad, rtol=1e-12, atol=0)
