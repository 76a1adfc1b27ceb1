"""backend="cpu": a fused native kernel that renders any Patch on the CPU, for users without a GPU and for CI.

    synth = VoiceSynth(backend="cpu")          # builds the kernel with the system C++ compiler on first use
    audio = synth(synth.random_params(128))     # (128, 16000) float32, the same sound as backend="torch"

One pass per sound (control-rate envelopes, LFOs and modulation matrix, then the audio-rate oscillators,
noise and mixer in blocks of 256 samples), written in theta's dtype, sounds spread over
`torch.get_num_threads()` threads. A float64 theta is rendered in float64 throughout. A float32 theta keeps
the phase, the frequencies and the FM modulators in float64 and runs the other waveforms, amplitudes and the mix
in float32: ~1e-7 relative L2 from the float64 reference on every synth, where SynthAX's float32 is 1e-3 (Voice)
to 1e0 (VoiceExpanded) away (DESIGN.md quirk 6). Noise is the keyed noise of `doppel_torch.rng` (bit-equal), so
backend="cpu" and backend="torch" render the same sound for the same seed.

Not differentiable: the output carries no autograd graph; use backend="torch" for gradients.
Why native code: torch.compile of the reference reaches 270-570 sounds/s on 2 cores after 80-95 s of
compilation (eager: 45-105 sounds/s); this kernel renders thousands per second (bench/test_synth_cpu.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from doppel_torch import rng
from doppel_torch.cpu.build import library
from doppel_torch.cpu.program import build_program

if TYPE_CHECKING:
    from doppel_torch.synths.base import Synth

__all__ = ["check_available", "render"]


def check_available() -> None:
    """Build (or load the cached) kernel; RuntimeError saying why if backend="cpu" cannot run here."""
    library()


_PROGRAMS: dict[int, tuple[object, torch.Tensor]] = {}


def _program(synth: "Synth") -> torch.Tensor:
    layout = synth.layout
    cached = _PROGRAMS.get(id(layout))
    if cached is None or cached[0] is not layout:
        cached = (layout, build_program(layout))
        _PROGRAMS[id(layout)] = cached
    return cached[1]


def render(
    synth: "Synth",
    theta: torch.Tensor,
    noise: torch.Tensor | None = None,
    seed: int = 0,
    indices: torch.Tensor | None = None,
    normalize: bool = True,
) -> torch.Tensor:
    """Render theta (B, m), already validated and clamped to [eps, 1] by `Synth.forward`, to audio (B, N).

    noise: (B, N) or (1, N) replaces the keyed noise; indices: (B,) global sound indices keying the noise
    (default 0 .. B - 1). Output in theta's dtype (float32 or float64) on the CPU, without gradients: a theta
    that requires grad raises ValueError (use backend="torch" for gradients).
    """
    if theta.device.type != "cpu":
        raise ValueError(f"backend='cpu' renders on the CPU but theta is on {theta.device}: pass theta.cpu(), "
                         "or use backend='torch' / 'triton' on that device")
    if theta.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"theta must be float32 or float64, got {theta.dtype}")
    if theta.requires_grad and torch.is_grad_enabled():
        raise ValueError("backend='cpu' is not differentiable: use backend='torch' for gradients, or pass "
                         "theta.detach() (or call under torch.no_grad()) to render without them")
    batch, m = theta.shape
    if m != synth.num_params:
        raise ValueError(f"theta must have shape (batch, {synth.num_params}), got {tuple(theta.shape)}")
    lib = library()
    with torch.no_grad():
        human = synth.layout.table.to_human(theta.detach().to(torch.float64)).contiguous()
        program = _program(synth)
        out = torch.empty(batch, synth.n_samples, dtype=theta.dtype)
        keys_ptr = noise_ptr = None
        noise_stride = 0
        if noise is None:
            if indices is None:
                indices = torch.arange(batch, dtype=torch.int64)
            indices = torch.as_tensor(indices, dtype=torch.int64, device="cpu")
            if indices.shape != (batch,):
                raise ValueError(f"indices must have shape ({batch},), got {tuple(indices.shape)}")
            k1, k2 = rng.sound_keys(seed, rng.Stream.NOISE, indices)
            keys = torch.stack((k1, k2), dim=1).contiguous()
            keys_ptr = keys.data_ptr()
        else:
            if noise.dim() != 2 or noise.shape[1] != synth.n_samples or noise.shape[0] not in (1, batch):
                raise ValueError(
                    f"noise must have shape ({batch}, {synth.n_samples}) or (1, {synth.n_samples}), "
                    f"got {tuple(noise.shape)}"
                )
            noise = noise.detach().to(device="cpu", dtype=torch.float64).contiguous()
            noise_ptr = noise.data_ptr()
            noise_stride = synth.n_samples if noise.shape[0] == batch and batch > 1 else 0
        code = lib.doppel_cpu_render(
            human.data_ptr(), batch, m, program.data_ptr(), program.numel(), keys_ptr, noise_ptr, noise_stride,
            out.data_ptr(), int(theta.dtype == torch.float64), synth.n_samples, synth.n_control,
            float(synth.sample_rate), float(synth.control_rate), float(synth.eps), int(bool(normalize)),
            torch.get_num_threads(),
        )
    if code != 0:
        raise RuntimeError(f"backend='cpu': the kernel rejected its input (code {code}); this is a bug, please "
                           "report it")
    return out


