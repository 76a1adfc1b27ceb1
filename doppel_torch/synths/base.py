"""The public synth classes: one interface over every backend.

    synth = VoiceSynth(sample_rate=16000, control_rate=480, duration=1.0, backend="torch")
    theta = synth.random_params(8, seed=0)          # (8, 78) in [0, 1]
    audio = synth(theta)                            # (8, 16000)
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from doppel_torch import rng
from doppel_torch.reference.functional import normalize_if_clipping
from doppel_torch.synths.layout import Layout
from doppel_torch.synths.parametric import parametric_patch
from doppel_torch.synths.patch import Patch
from doppel_torch.synths.voice import voice_patch
from doppel_torch.synths.voicefm import voicefm_patch

BACKENDS = ("torch", "triton", "cpu")

# Backend name -> render function with the reference renderer's signature. Kernel packages add themselves.
_RENDERERS: dict[str, Callable[..., torch.Tensor]] = {}


def _renderer(backend: str) -> Callable[..., torch.Tensor]:
    if backend not in _RENDERERS:
        if backend == "torch":
            from doppel_torch.reference.render import render

            _RENDERERS["torch"] = render
        elif backend == "triton":
            from doppel_torch.kernels import render as triton_render

            _RENDERERS["triton"] = triton_render
        elif backend == "cpu":
            from doppel_torch.cpu import render as cpu_render

            _RENDERERS["cpu"] = cpu_render
    return _RENDERERS[backend]


def _n_samples(seconds: float, rate: float) -> int:
    # SynthAX: ceil(seconds * rate); the tolerance keeps 1.0 * 16000 at 16000 despite float rounding.
    return int(math.ceil(seconds * rate - 1e-9))


class Synth(torch.nn.Module):
    """A batched modular synthesizer rendering normalised parameters theta in [0, 1]^m to audio.

    Args:
        patch: the architecture (see `doppel_torch.synths.patch`).
        sample_rate: audio rate in Hz (paper: 16 kHz).
        control_rate: rate of envelopes, LFOs and the modulation matrix in Hz (paper: 480 Hz).
        duration: seconds per sound.
        backend: "torch" (eager reference, any device, differentiable), "triton" (fused GPU kernels) or
            "cpu" (fused native CPU kernel).
        eps: theta is clipped to [eps, 1] before rendering, as the paper does (an LFO whose five shape
            weights are all 0 would divide 0 by 0); SynthAX's ADSR eps is the same value.
        phase_dtype: triton only: dtype of control signals, frequencies and phase. Default float64, which keeps
            float32 output within ~1e-5 of float64 even on the FM synths; torch.float32 is the fast, less
            accurate option (voice ~1e-3 relative L2; FM synths as ill-conditioned as SynthAX float32).
    """

    def __init__(
        self,
        patch: Patch,
        *,
        sample_rate: int = 16000,
        control_rate: int = 480,
        duration: float = 1.0,
        backend: str = "torch",
        eps: float = 1e-6,
        apply_mixer_curve: bool = False,
        phase_dtype: torch.dtype | None = None,
    ):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
        for name, value in (("sample_rate", sample_rate), ("control_rate", control_rate), ("duration", duration)):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if control_rate > sample_rate:
            raise ValueError(f"control_rate ({control_rate} Hz) must not exceed sample_rate ({sample_rate} Hz)")
        if not 0 < eps < 0.5:
            raise ValueError(f"eps must be in (0, 0.5), got {eps!r}")
        self.patch = patch
        self.sample_rate = sample_rate
        self.control_rate = control_rate
        self.duration = duration
        self.backend = backend
        self.eps = eps
        if phase_dtype not in (None, torch.float32, torch.float64):
            raise ValueError(f"phase_dtype must be None, torch.float32 or torch.float64, got {phase_dtype!r}")
        if phase_dtype is not None and backend != "triton":
            raise ValueError("phase_dtype applies to backend='triton' only")
        self.phase_dtype = phase_dtype
        self.n_samples = _n_samples(duration, sample_rate)
        self.n_control = _n_samples(duration, control_rate)
        if self.n_control < 2:
            raise ValueError(f"duration {duration} s gives fewer than 2 control samples at {control_rate} Hz")
        self.layout = Layout(patch, apply_mixer_curve=apply_mixer_curve)
        if backend == "triton":
            from doppel_torch.kernels import check_available

            check_available()
        elif backend == "cpu":
            from doppel_torch.cpu import check_available

            check_available()

    # ---- parameters -------------------------------------------------------------------------------
    @property
    def num_params(self) -> int:
        return len(self.layout)

    @property
    def param_names(self) -> list[str]:
        """Flat names in SynthAX `ravel_pytree` order, e.g. `adsr_1/attack`, `mod_matrix/mod[0,1]`."""
        return self.layout.names

    @property
    def param_specs(self):
        return list(self.layout.specs)

    @property
    def module_of_param(self) -> list[str]:
        return [s.module for s in self.layout.specs]

    def random_params(
        self,
        n: int,
        seed: int = 0,
        start: int = 0,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """theta ~ U(0, 1)^m for global sound indices start .. start + n - 1: (n, m).

        Row i depends only on (seed, start + i): the same sound whatever the batch size or device.
        """
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start!r}")
        index = torch.arange(start, start + n, dtype=torch.int64, device=device)
        return rng.uniform(seed, rng.Stream.THETA, index, self.num_params, dtype=dtype)

    def to_human(self, theta: torch.Tensor) -> torch.Tensor:
        """Normalised (..., m) -> human units (seconds, Hz, MIDI, radians, levels)."""
        return self.layout.table.to_human(theta)

    def to_unit(self, human: torch.Tensor) -> torch.Tensor:
        return self.layout.table.to_unit(human)

    # ---- rendering -------------------------------------------------------------------------------
    def _check_theta(self, theta: torch.Tensor, validate: bool) -> None:
        if not isinstance(theta, torch.Tensor):
            raise ValueError(f"theta must be a torch.Tensor of shape (batch, {self.num_params}), got {type(theta).__name__}")
        if theta.dim() != 2 or theta.shape[1] != self.num_params:
            raise ValueError(
                f"theta must have shape (batch, {self.num_params}) for {self.patch.name}, got {tuple(theta.shape)}"
            )
        if theta.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"theta must be float32 or float64, got {theta.dtype}")
        if validate and theta.numel():
            values = theta.detach()
            if torch.isnan(values).any():
                raise ValueError("theta contains NaN")
            lo, hi = float(values.min()), float(values.max())
            if lo < 0.0 or hi > 1.0:
                raise ValueError(f"theta must lie in [0, 1] (normalised parameters); got values in [{lo:.4g}, {hi:.4g}]")

    def _noise(self, noise, theta: torch.Tensor, seed: int, indices: torch.Tensor | None) -> torch.Tensor:
        """The noise to render with; `indices` were checked by `forward`."""
        batch = theta.shape[0]
        if noise is None:
            if indices is None:
                indices = torch.arange(batch, dtype=torch.int64, device=theta.device)
            return rng.noise(seed, indices, self.n_samples, dtype=theta.dtype)
        if not isinstance(noise, torch.Tensor):
            raise ValueError("noise must be a torch.Tensor of shape (batch, n_samples) or (1, n_samples)")
        if noise.device != theta.device:
            raise ValueError(f"noise is on {noise.device} but theta is on {theta.device}: move them to one device")
        if noise.dim() != 2 or noise.shape[1] != self.n_samples or noise.shape[0] not in (1, batch):
            raise ValueError(
                f"noise must have shape ({batch}, {self.n_samples}) or (1, {self.n_samples}), got {tuple(noise.shape)}"
            )
        return noise.to(theta.dtype)

    def forward(
        self,
        theta: torch.Tensor,
        noise: torch.Tensor | None = None,
        normalize: bool = True,
        seed: int = 0,
        indices: torch.Tensor | None = None,
        validate: bool = True,
    ) -> torch.Tensor:
        """Render theta (B, m) in [0, 1] to audio (B, N) in theta's dtype and on its device.

        noise: (B, N) or (1, N) replaces the noise source (parity checks feed the anchors' noise); otherwise
            noise is drawn per sound from the counter-based generator keyed by (seed, indices[b]).
        normalize: divide each sound by its own peak when the peak exceeds 1; False returns the raw mix.
        indices: (B,) global sound indices keying the noise; default 0 .. B - 1.
        validate: check theta's values (one host synchronisation); pipelines that make theta themselves skip it.
        """
        self._check_theta(theta, validate)
        if indices is not None:
            indices = torch.as_tensor(indices, dtype=torch.int64, device=theta.device)
            if indices.shape != (theta.shape[0],):
                raise ValueError(f"indices must have shape ({theta.shape[0]},), got {tuple(indices.shape)}")
        theta = theta.clamp(self.eps, 1.0)
        if self.backend != "torch":
            # Kernels draw the keyed noise themselves (no (B, N) noise buffer) unless noise is given.
            noise = None if noise is None else self._noise(noise, theta, seed, indices)
            options = {"phase_dtype": self.phase_dtype} if self.backend == "triton" else {}
            return _renderer(self.backend)(
                self, theta, noise=noise, seed=seed, indices=indices, normalize=normalize, **options
            )
        human = self.layout.table.to_human(theta)
        audio = _renderer("torch")(
            self.layout,
            human,
            self._noise(noise, theta, seed, indices),
            sample_rate=self.sample_rate,
            control_rate=self.control_rate,
            n_samples=self.n_samples,
            n_control=self.n_control,
            eps=self.eps,
        )
        return normalize_if_clipping(audio) if normalize else audio

    def extra_repr(self) -> str:
        return (
            f"{self.patch.name}: {self.num_params} params, {self.sample_rate} Hz, control {self.control_rate} Hz, "
            f"{self.duration} s, backend={self.backend}"
        )


class VoiceSynth(Synth):
    """SynthAX/torchsynth `Voice` (78 parameters).

    mixer_curve: "synthax" (default) leaves the noise level linear, as SynthAX and so the paper's data do;
        "torchsynth" applies the declared curve 0.025 to the noise level, as torchsynth does (DESIGN.md quirk 2).
    """

    def __init__(self, *, mixer_curve: str = "synthax", **kwargs):
        if mixer_curve not in ("synthax", "torchsynth"):
            raise ValueError(f"mixer_curve must be 'synthax' or 'torchsynth', got {mixer_curve!r}")
        self.mixer_curve = mixer_curve
        super().__init__(voice_patch(), apply_mixer_curve=mixer_curve == "torchsynth", **kwargs)


class VoiceFMSynth(Synth):
    """SynthAX `VoiceExpanded` (130 parameters), the paper's VoiceFM."""

    def __init__(self, **kwargs):
        super().__init__(voicefm_patch(), **kwargs)


class ParametricSynth(Synth):
    """SynthAX `ParametricSynth` (340 parameters with the paper's default counts 2, 2, 1, 1)."""

    def __init__(self, sine: int = 2, square_saw: int = 2, fm_sine: int = 1, fm_square_saw: int = 1, **kwargs):
        self.counts = dict(sine=sine, square_saw=square_saw, fm_sine=fm_sine, fm_square_saw=fm_square_saw)
        super().__init__(parametric_patch(sine, square_saw, fm_sine, fm_square_saw), **kwargs)


SYNTHS: dict[str, type[Synth]] = {"voice": VoiceSynth, "voicefm": VoiceFMSynth, "parametric": ParametricSynth}


def get_synth(name: str, **kwargs) -> Synth:
    """Build a synth by name: "voice", "voicefm" or "parametric"."""
    if name not in SYNTHS:
        raise ValueError(f"unknown synth {name!r}: choose one of {', '.join(SYNTHS)}")
    return SYNTHS[name](**kwargs)
