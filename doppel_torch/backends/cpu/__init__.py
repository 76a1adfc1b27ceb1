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
`torch.compile(fullgraph=True)` traces through a render. Not differentiable yet: `backends.render` refuses a theta
that requires grad. Why native code: torch.compile of the reference reaches 270-570 sounds/s on 2 cores after
80-95 s of compilation (eager: 45-105 sounds/s); this kernel renders thousands per second (bench/test_synth_cpu.py).
"""

from __future__ import annotations

from typing import Optional

import torch

from doppel_torch import rng
from doppel_torch.backends import base
from doppel_torch.backends.cpu.build import library
from doppel_torch.spec.program import Program

__all__ = ["Backend", "cpu_render"]


@torch.library.custom_op("doppel_torch::cpu_render", mutates_args=("out",), device_types="cpu")
def cpu_render(human: torch.Tensor, words: torch.Tensor, keys: Optional[torch.Tensor], noise: Optional[torch.Tensor],
               out: torch.Tensor, n_control: int, sample_rate: float, control_rate: float, eps: float,
               normalize: bool) -> None:
    """Render human-unit parameters (B, m) float64 into out (B, N) float32/float64 with the program `words`.

    keys: (B, 2) int64 noise keys (rng.sound_keys) or None; noise: float64 (B, N) or (1, N) rows, or None.
    Sounds are spread over torch.get_num_threads() threads."""
    batch, m = human.shape
    n_samples = out.shape[1]
    noise_stride = n_samples if noise is not None and noise.shape[0] == batch and batch > 1 else 0
    code = library().doppel_cpu_render(
        human.data_ptr(), batch, m, words.data_ptr(), words.numel(), None if keys is None else keys.data_ptr(),
        None if noise is None else noise.data_ptr(), noise_stride, out.data_ptr(), int(out.dtype == torch.float64),
        n_samples, n_control, sample_rate, control_rate, eps, int(normalize), torch.get_num_threads(),
    )
    if code == -3:
        raise RuntimeError(f"backend='cpu': out of memory rendering {batch} sounds of {n_samples} samples; render "
                           "fewer or shorter sounds per call")
    if code != 0:
        raise RuntimeError(f"backend='cpu': the kernel failed (code {code}: -1 malformed program, -2 bad sizes, -4 "
                           "an internal error); this is a bug, please report it")


@cpu_render.register_fake
def _(human, words, keys, noise, out, n_control, sample_rate, control_rate, eps, normalize):
    return None


class Backend(base.Backend):
    name = "cpu"

    def check_available(self) -> None:
        library()  # builds (or loads the cached) kernel; RuntimeError saying why it cannot

    def check_device(self, device: torch.device) -> None:
        if device.type != "cpu":
            raise ValueError(f"backend='cpu' renders on the CPU but theta is on {device}: pass theta.cpu(), or use "
                             "backend='torch' / 'triton' on that device")

    def render(self, program: Program, theta: torch.Tensor, *, noise, seed, indices, normalize, out):
        batch = theta.shape[0]
        if out is None:
            out = torch.empty(batch, program.n_samples, dtype=theta.dtype)
        if batch == 0:
            return out
        human = program.layout.table.to_human(theta.detach().to(torch.float64)).contiguous()
        keys = None
        if noise is None and program.rows("noise"):
            k1, k2 = rng.sound_keys(seed, rng.Stream.NOISE, indices)
            keys = torch.stack((k1, k2), dim=1).contiguous()
        elif noise is not None:
            noise = noise.detach().to(torch.float64).contiguous()
        cpu_render(human, program.words, keys, noise, out, program.n_control, program.sample_rate,
                   program.control_rate, program.eps, normalize)
        return out
