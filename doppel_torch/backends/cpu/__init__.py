"""backend="cpu": a fused native kernel that renders any lowered Program on the CPU, for users without a GPU and for CI.

    synth = VoiceSynth(backend="cpu")          # builds the kernel with the system C++ compiler on first use
    audio = synth(synth.random_params(128))     # (128, 16000) float32, the same sound as backend="torch"

One pass per sound (control-rate envelopes, LFOs and modulation matrix, then the audio-rate oscillators, filters,
noise and mixer in blocks of 256 samples), written in theta's dtype, sounds spread over `torch.get_num_threads()`
threads. A float64 theta is rendered in float64 throughout. A float32 theta keeps the phase, the frequencies and
the FM modulators in float64 and runs the other waveforms, amplitudes and the mix in float32: ~1e-7 relative L2
from the float64 reference on every synth, where SynthAX's float32 is 1e-3 (Voice) to 1e0 (VoiceExpanded) away
(DESIGN.md quirk 6). Noise is the keyed noise of `doppel_torch.rng` (bit-equal), so backend="cpu" and
backend="torch" render the same sound for the same seed.

The kernel is the torch op `doppel_torch::cpu_render` (with a fake implementation for shapes), so
`torch.compile(fullgraph=True)` traces through a render. Differentiable: a theta (or an explicit noise tensor) that
requires grad renders through `doppel_torch::cpu_render_grad`, a torch op with a native backward registered by
`torch.library.register_autograd`, which torch.compile traces (eager calls take `_RenderGrad`, the same kernels
without the op's dispatch; the adjoint of every stage, control rate included, is in csrc/synth_cpu_grad.inc;
the backward recomputes each block of 256 samples from a per-block checkpoint, so no per-module audio is kept; a
float32 theta's forward is the plain render writing those checkpoints: the same audio bits with and without grad).
Gradients equal the reference's autograd (float64: <= 1e-8 relative per parameter). Why native code: torch.compile
of the reference reaches 270-570 sounds/s on 2 cores after 80-95 s of compilation (eager: 45-105 sounds/s); this
kernel renders 10,000-40,000 one-second sounds per second there, 10-15x SynthAX's jit and 11-12x torchsynth's Voice
(bench/test_synth_cpu.py; where its time goes: bench/cpu_stages.py). Its workers are torch's OpenMP threads where
torch's libgomp is loaded (build.openmp_parallel), threads of its own otherwise; every SIMD build renders the same
bits (tests/backends/cpu/test_simd_builds.py).
"""

from __future__ import annotations

from typing import Optional

import torch

from doppel_torch import rng
from doppel_torch.backends import base
from doppel_torch.backends.cpu.build import library
from doppel_torch.spec.program import Program

__all__ = ["Backend", "cpu_render", "cpu_render_grad", "cpu_render_grad_backward"]


@torch.library.custom_op("doppel_torch::cpu_render", mutates_args=("out",), device_types="cpu")
def cpu_render(human: torch.Tensor, words: torch.Tensor, keys: Optional[torch.Tensor], noise: Optional[torch.Tensor],
               out: torch.Tensor, n_control: int, sample_rate: float, control_rate: float, eps: float,
               normalize: bool) -> None:
    """Render human-unit parameters (B, m) float64 into out (B, N) float32/float64 with the program `words`.

    keys: (B, 2) int64 noise keys (rng.sound_keys) or None; noise: float64 (B, N) or (1, N) rows, or None.
    Sounds are spread over torch.get_num_threads() threads."""
    _render_into(human, words, keys, noise, out, n_control, sample_rate, control_rate, eps, normalize)


def _render_into(human, words, keys, noise, out, n_control, sample_rate, control_rate, eps, normalize) -> None:
    """The body of `cpu_render`; eager renders call it directly (the op's dispatch costs ~25 us a call, a quarter of
    a batch-1 render), torch.compile traces the op."""
    batch, m = human.shape
    n_samples = out.shape[1]
    code = library().doppel_cpu_render(
        human.data_ptr(), batch, m, words.data_ptr(), words.numel(), _ptr(keys), _ptr(noise),
        _noise_stride(noise, batch, n_samples), out.data_ptr(), int(out.dtype == torch.float64),
        n_samples, n_control, sample_rate, control_rate, eps, int(normalize), torch.get_num_threads(),
    )
    _check(code, "rendering", batch, n_samples)


@cpu_render.register_fake
def _(human, words, keys, noise, out, n_control, sample_rate, control_rate, eps, normalize):
    return None


def _check(code: int, what: str, batch: int, n_samples: int) -> None:
    if code == -3:
        raise RuntimeError(f"backend='cpu': out of memory {what} {batch} sounds of {n_samples} samples; use fewer or "
                           "shorter sounds per call")
    if code != 0:
        raise RuntimeError(f"backend='cpu': the {what} kernel failed (code {code}: -1 malformed program, -2 bad sizes, "
                           "-4 an internal error); this is a bug, please report it")


def _noise_stride(noise: Optional[torch.Tensor], batch: int, n_samples: int) -> int:
    return n_samples if noise is not None and noise.shape[0] == batch and batch > 1 else 0


def _ptr(t: Optional[torch.Tensor]):
    return None if t is None else t.data_ptr()


@torch.library.custom_op("doppel_torch::cpu_render_grad", mutates_args=(), device_types="cpu")
def cpu_render_grad(human: torch.Tensor, words: torch.Tensor, keys: Optional[torch.Tensor], noise: Optional[torch.Tensor],
                    n_samples: int, n_control: int, n_state: int, sample_rate: float, control_rate: float, eps: float,
                    normalize: bool, double: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The differentiable render: human (B, m) float64 -> audio (B, N) (float64 if `double`, else float32), per
    sound divided by its peak where that exceeds 1 and `normalize` is set, as `cpu_render`; and what the backward
    needs: the peaks (B,) and their sample indices (B,) int64, and per-block checkpoints (B, n_blocks, n_state)
    (n_state = oscillators + filters: phase carries and filter states). Differentiable in human and noise
    (`register_autograd` below; the math is in csrc/synth_cpu_grad.inc)."""
    return _grad_forward(human, words, keys, noise, n_samples, n_control, n_state, sample_rate, control_rate, eps,
                         normalize, double)


def _grad_forward(human, words, keys, noise, n_samples, n_control, n_state, sample_rate, control_rate, eps,
                  normalize, double):
    """The body of `cpu_render_grad` (eager renders call it through `_RenderGrad`, torch.compile traces the op)."""
    batch, m = human.shape
    out = torch.empty(batch, n_samples, dtype=torch.float64 if double else torch.float32)
    ckpt = torch.empty(batch, -(-n_samples // GRAD_BLOCK), n_state, dtype=torch.float64)
    peak = torch.empty(batch, dtype=torch.float64)
    arg = torch.empty(batch, dtype=torch.int64)
    code = library().doppel_cpu_grad_forward(
        human.data_ptr(), batch, m, words.data_ptr(), words.numel(), _ptr(keys), _ptr(noise),
        _noise_stride(noise, batch, n_samples), out.data_ptr(), int(double), peak.data_ptr(), arg.data_ptr(),
        ckpt.data_ptr(), n_samples, n_control, sample_rate, control_rate, eps, int(normalize), torch.get_num_threads())
    _check(code, "rendering", batch, n_samples)
    return out, ckpt, peak, arg


GRAD_BLOCK = 256  # samples per checkpoint: the kernel's BLOCK_T (doppel_cpu_grad_block(), checked by the tests)


@cpu_render_grad.register_fake
def _(human, words, keys, noise, n_samples, n_control, n_state, sample_rate, control_rate, eps, normalize, double):
    batch = human.shape[0]
    return (human.new_empty(batch, n_samples, dtype=torch.float64 if double else torch.float32),
            human.new_empty(batch, -(-n_samples // GRAD_BLOCK), n_state), human.new_empty(batch),
            human.new_empty(batch, dtype=torch.int64))


@torch.library.custom_op("doppel_torch::cpu_render_grad_backward", mutates_args=(), device_types="cpu")
def cpu_render_grad_backward(grad: torch.Tensor, audio: torch.Tensor, human: torch.Tensor, words: torch.Tensor,
                             keys: Optional[torch.Tensor], noise: Optional[torch.Tensor], ckpt: torch.Tensor,
                             peak: torch.Tensor, arg: torch.Tensor, n_control: int, sample_rate: float,
                             control_rate: float, eps: float, normalize: bool,
                             want_noise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The adjoint of `cpu_render_grad`: grad = dL/d audio (B, N) -> dL/d human (B, m) and dL/d noise (B, N), one
    row per sound (an empty tensor unless want_noise), recomputing each block's forward from its checkpoint."""
    return _grad_backward(grad, audio, human, words, keys, noise, ckpt, peak, arg, n_control, sample_rate,
                          control_rate, eps, normalize, want_noise)


def _grad_backward(grad, audio, human, words, keys, noise, ckpt, peak, arg, n_control, sample_rate, control_rate, eps,
                   normalize, want_noise):
    """The body of `cpu_render_grad_backward`."""
    batch, m = human.shape
    n_samples = grad.shape[1]
    grad = grad.to(audio.dtype).contiguous()
    g_human = torch.empty_like(human)
    g_noise = torch.empty(batch if want_noise else 0, n_samples, dtype=torch.float64)
    code = library().doppel_cpu_grad_backward(
        human.data_ptr(), batch, m, words.data_ptr(), words.numel(), _ptr(keys), _ptr(noise),
        _noise_stride(noise, batch, n_samples), audio.data_ptr(), grad.data_ptr(), int(audio.dtype == torch.float64),
        peak.data_ptr(), arg.data_ptr(), ckpt.data_ptr(), g_human.data_ptr(),
        g_noise.data_ptr() if want_noise else None, n_samples, n_control, sample_rate, control_rate, eps,
        int(normalize), torch.get_num_threads())
    _check(code, "differentiating", batch, n_samples)
    return g_human, g_noise


@cpu_render_grad_backward.register_fake
def _(grad, audio, human, words, keys, noise, ckpt, peak, arg, n_control, sample_rate, control_rate, eps, normalize,
      want_noise):
    return torch.empty_like(human), grad.new_empty(grad.shape[0] if want_noise else 0, grad.shape[1],
                                                   dtype=torch.float64)


def _setup_context(ctx, inputs, output):
    human, words, keys, noise, n_samples, n_control, n_state, sample_rate, control_rate, eps, normalize, _ = inputs
    audio, ckpt, peak, arg = output
    ctx.save_for_backward(audio, human, words, keys, noise, ckpt, peak, arg)
    ctx.args = (n_control, sample_rate, control_rate, eps, normalize)


def _gradients(backward, ctx, grad_audio):
    """The op's input gradients (dL/d human, dL/d noise, None for the rest) from what `_setup_context` saved, by
    `backward`: the backward op, or its body in eager mode."""
    audio, human, words, keys, noise, ckpt, peak, arg = ctx.saved_tensors
    want_noise = noise is not None and ctx.needs_input_grad[3]
    g_human, g_noise = backward(grad_audio, audio, human, words, keys, noise, ckpt, peak, arg, *ctx.args, want_noise)
    if not want_noise:
        g_noise = None
    elif noise.shape[0] != g_noise.shape[0]:  # one noise row shared by every sound
        g_noise = g_noise.sum(dim=0, keepdim=True)
    return g_human, None, None, g_noise, None, None, None, None, None, None, None, None


def _backward(ctx, grad_audio, grad_ckpt, grad_peak, grad_arg):
    base.refuse_create_graph("cpu")
    return _gradients(cpu_render_grad_backward, ctx, grad_audio)


torch.library.register_autograd("doppel_torch::cpu_render_grad", _backward, setup_context=_setup_context)


class _RenderGrad(torch.autograd.Function):
    """`cpu_render_grad` (the same arguments) and its registered backward in eager mode, calling the kernels
    directly: the custom op's dispatch and its autograd wrapper cost ~0.15 ms a differentiable step (a batch-1 step
    1.2x; see the commit message); torch.compile traces the op instead."""

    @staticmethod
    def forward(ctx, *inputs):
        output = _grad_forward(*inputs)
        _setup_context(ctx, inputs, output)
        return output[0]

    @staticmethod
    def backward(ctx, grad_audio):
        base.refuse_create_graph("cpu")
        with torch.no_grad():
            return _gradients(_grad_backward, ctx, grad_audio)


def _sound_keys(seed: int, indices: torch.Tensor) -> torch.Tensor:
    """The noise keys rng.sound_keys(seed, NOISE, indices) as (B, 2) int64: in eager mode from the kernel library
    (bit-equal, tested; 18 small tensor ops in Python cost more than a whole batch-1 render), traced as torch ops."""
    if torch.compiler.is_compiling():
        return torch.stack(rng.sound_keys(seed, rng.Stream.NOISE, indices), dim=1)
    index = indices.contiguous()
    keys = torch.empty(index.shape[0], 2, dtype=torch.int64)
    library().doppel_cpu_sound_keys(rng.seed_key(seed, rng.Stream.NOISE), rng.GOLDEN, index.data_ptr(), index.shape[0],
                                    keys.data_ptr())
    return keys


class Backend(base.Backend):
    name = "cpu"
    differentiable = True

    def check_available(self) -> None:
        library()  # builds (or loads the cached) kernel; RuntimeError saying why it cannot

    def check_device(self, device: torch.device) -> None:
        if device.type != "cpu":
            raise ValueError(f"backend='cpu' renders on the CPU but theta is on {device}: pass theta.cpu(), or use "
                             "backend='torch' / 'triton' on that device")

    def render(self, program: Program, theta: torch.Tensor, *, noise, seed, indices, normalize, out):
        if torch.is_grad_enabled() and (theta.requires_grad or (noise is not None and noise.requires_grad)):
            return self._render_differentiable(program, theta, noise=noise, seed=seed, indices=indices,
                                               normalize=normalize, out=out)
        batch = theta.shape[0]
        if out is None:
            out = torch.empty(batch, program.n_samples, dtype=theta.dtype)
        if batch == 0:
            return out
        human = program.layout.table.to_human(theta.detach().to(torch.float64)).contiguous()
        keys = None
        if noise is None and program.rows("noise"):
            keys = _sound_keys(seed, indices)
        elif noise is not None:
            noise = noise.detach().to(torch.float64).contiguous()
        render = cpu_render if torch.compiler.is_compiling() else _render_into
        render(human, program.words, keys, noise, out, program.n_control, program.sample_rate, program.control_rate,
               program.eps, normalize)
        return out

    def _render_differentiable(self, program: Program, theta: torch.Tensor, *, noise, seed, indices, normalize, out):
        """The same sound through autograd: the kernel renders it (float32 theta: the plain render, the same bits,
        writing the backward's checkpoints; float64: float64 throughout) and its adjoint (float64 inside) gives
        dL/d human (and dL/d noise); torch differentiates only clamp and to_human, (B, m)."""
        human = program.layout.table.to_human(theta.to(torch.float64)).contiguous()
        keys = None
        if noise is None and program.rows("noise"):
            keys = _sound_keys(seed, indices)
        elif noise is not None:
            noise = noise.to(torch.float64).contiguous()
        n_state = program.rows("oscillators") + program.rows("filters")
        args = (human, program.words, keys, noise, program.n_samples, program.n_control, n_state, program.sample_rate,
                program.control_rate, program.eps, normalize, theta.dtype == torch.float64)
        audio = cpu_render_grad(*args)[0] if torch.compiler.is_compiling() else _RenderGrad.apply(*args)
        if out is None:
            return audio
        return out.copy_(audio)
