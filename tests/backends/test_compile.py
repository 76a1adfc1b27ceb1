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



def test_compiled_phase_scan_with_gradients_at_a_length_off_the_blocks():
    """torch 2.9's Inductor compiled the reference's padded phase scan (pad to whole 128-sample blocks, scan, cut)
    wrong when the input requires grad and the length is off the blocks: the last block read memory never written
    (cos of the phase off by up to 1.07, values up to 3e35; found from outside through a compiled VoiceSynth at
    0.25 s, whose audio was off by 1.35). The scan now has no padding (backends/torch/functional.wrapped_cumsum)."""
    import math

    from doppel_torch.backends.torch.functional import wrapped_cumsum

    def wave(inc):
        return torch.cos(2 * math.pi * wrapped_cumsum(inc))

    inc = torch.rand(4, 4000, generator=torch.Generator().manual_seed(0)) * 0.1
    eager_in, compiled_in = inc.clone().requires_grad_(True), inc.clone().requires_grad_(True)
    eager, compiled = wave(eager_in), torch.compile(wave, fullgraph=True)(compiled_in)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=0)
    eager.sum().backward()
    compiled.sum().backward()
    torch.testing.assert_close(compiled_in.grad, eager_in.grad, atol=1e-6 * float(eager_in.grad.abs().max()), rtol=0)


def test_compiled_reference_gradients_of_a_batch():
    """torch 2.9's (and 2.13's) Inductor fused the backward's gathers of the human-unit gradient with to_human's
    per-column slope into code that read the gradient unfinished: batches of 2 or more got 0 for the ADSRs' alpha and
    release, the LFOs and the modulation matrix (voice, float64: relative error 0.02; this small patch 0.19 without
    the fence). backends.torch.fence keeps them apart under torch.compile; ~20 s of Inductor."""
    from doppel_torch.spec import Envelope, Lfo, Oscillator, Patch
    from doppel_torch.synths.base import Synth

    patch = Patch(name="small", keyboards=("keyboard",),
                  envelopes=(Envelope("adsr", "keyboard"), Envelope("rate", "keyboard")),
                  lfos=(Lfo("lfo", rate_env="rate", amp_env="rate"),), mod_inputs=("adsr", "lfo"),
                  mod_outputs=("pitch", "amp"),
                  oscillators=(Oscillator("vco", "sine", "keyboard", pitch="pitch", amp="amp"),), noise_amp=None,
                  mixer_inputs=("vco",))
    synth = Synth(patch, backend="torch", duration=0.02)
    theta = synth.random_params(3, seed=1, dtype=torch.float64).requires_grad_(True)
    compiled = torch.compile(lambda t: synth(t, seed=3), fullgraph=True)(theta)
    (g_compiled,) = torch.autograd.grad(compiled.square().sum(), theta)
    (g_eager,) = torch.autograd.grad(synth(theta, seed=3).square().sum(), theta)
    assert g_eager.abs().amax(dim=0).gt(0).sum() >= 15  # most columns have a gradient to get wrong
    torch.testing.assert_close(g_compiled, g_eager, rtol=1e-9, atol=1e-12 * float(g_eager.abs().max()))


@pytest.mark.slow  # ~80 s: Inductor over the whole reference and its backward
def test_compile_fullgraph_of_the_torch_reference_with_gradients():
    """The reference compiles whole (Program.on's device cache is a field: neither __dict__.setdefault nor a
    cached_property's lock traces) and renders as eagerly with a theta that requires grad, at a length off the
    phase's blocks (the miscompiled case above, end to end)."""
    synth = get_synth("voice", backend="torch", duration=0.05)  # 800 samples: 6 whole blocks and 32
    theta = synth.random_params(2, seed=1).requires_grad_(True)
    compiled = torch.compile(lambda t: synth(t, seed=3), fullgraph=True)(theta)
    eager = synth(theta, seed=3)
    torch.testing.assert_close(compiled, eager, atol=2e-4, rtol=0)
    (g_compiled,) = torch.autograd.grad(compiled.square().sum(), theta)
    (g_eager,) = torch.autograd.grad(eager.square().sum(), theta)
    # float32: 5e-6 of the gradient's norm (an element-wise bound of 1e-3 of the largest let 24 zeroed columns pass)
    assert float((g_compiled - g_eager).norm() / g_eager.norm()) < 1e-4
    theta64 = theta.detach().double().requires_grad_(True)
    (g_compiled,) = torch.autograd.grad(torch.compile(lambda t: synth(t, seed=3), fullgraph=True)(theta64)
                                        .square().sum(), theta64)
    (g_eager,) = torch.autograd.grad(synth(theta64, seed=3).square().sum(), theta64)
    torch.testing.assert_close(g_compiled, g_eager, rtol=1e-9, atol=1e-12 * float(g_eager.abs().max()))
