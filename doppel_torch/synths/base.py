"""The public synth classes: one interface over every backend.

    synth = VoiceSynth(sample_rate=16000, control_rate=480, duration=1.0, backend="torch")
    theta = synth.random_params(8, seed=0)          # (8, 78) in [0, 1]
    audio = synth(theta)                            # (8, 16000)
"""

from __future__ import annotations

import numbers
import operator

import torch

from doppel_torch import backends, rng
from doppel_torch.backends import BACKENDS
from doppel_torch.backends.base import as_device
from doppel_torch.spec.params import human_unit
from doppel_torch.spec.patch import Patch
from doppel_torch.spec.program import lower
from doppel_torch.spec.patches import parametric_patch, voice_patch, voicefm_patch


def _plain_number(value):
    """A numpy or other real scalar as the Python number it stands for (a float32's shortest decimal: np.float32(0.1)
    is 0.1 s, not 0.10000000149 s, which would be one sample more); anything else unchanged, for `lower` to refuse."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    dtype = getattr(value, "dtype", None)
    return float(str(value)) if dtype is not None and dtype.itemsize < 8 else float(value)


def _an_int(value):
    """An integer-like value (a numpy integer, a 0-dim integer tensor) as a Python int; anything else unchanged."""
    if isinstance(value, bool) or isinstance(value, int):
        return value
    try:
        return operator.index(value)
    except TypeError:
        return value


class Synth(torch.nn.Module):
    """A batched modular synthesizer rendering normalised parameters theta in [0, 1]^m to audio.

    Any `Patch` renders on every backend (see the README's "Your own patch"): the patch is validated and lowered
    once into a `Program` (doppel_torch.spec.program), which the chosen backend reads. The synth holds no weights:
    audio comes out in theta's dtype and on its device (`synth(theta.double())` renders float64), so `.double()`
    or `.to(device)` on the synth itself change nothing.

    Args:
        patch: the architecture (see `doppel_torch.spec.patch`).
        sample_rate: audio rate in Hz (paper: 16 kHz).
        control_rate: rate of envelopes, LFOs and the modulation matrix in Hz (paper: 480 Hz).
        duration: seconds per sound.
        backend: "torch" (eager reference, any device, differentiable), "triton" (fused GPU kernels) or
            "cpu" (fused native CPU kernel).
        eps: theta is clipped to [eps, 1] before rendering, as the paper does (an LFO whose five shape
            weights are all 0 would divide 0 by 0); SynthAX's ADSR eps is the same value.
        phase_dtype: triton only: dtype of control signals, frequencies and phase. Default float64, which keeps
            float32 output within ~1e-5 of float64 even on the FM synths; torch.float32 is the fast, less
            accurate option (voice ~1e-3 relative L2; FM synths as ill-conditioned as SynthAX float32). A theta
            that requires grad renders in float64 throughout (the fused backward's forward), whatever phase_dtype.
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
        if phase_dtype not in (None, torch.float32, torch.float64):
            raise ValueError(f"phase_dtype must be None, torch.float32 or torch.float64, got {phase_dtype!r}")
        if phase_dtype is not None and backend != "triton":
            raise ValueError("phase_dtype applies to backend='triton' only")
        sample_rate, control_rate, duration, eps = map(_plain_number, (sample_rate, control_rate, duration, eps))
        self.program = lower(patch, sample_rate=sample_rate, control_rate=control_rate, duration=duration, eps=eps,
                             apply_mixer_curve=apply_mixer_curve)
        self.patch = patch
        self.sample_rate = sample_rate
        self.control_rate = control_rate
        self.duration = duration
        self.backend = backend
        self.eps = eps
        self.phase_dtype = phase_dtype
        self.n_samples = self.program.n_samples
        self.n_control = self.program.n_control
        self.layout = self.program.layout
        options = {"phase_dtype": phase_dtype} if backend == "triton" else {}
        self._backend = backends.get_backend(backend, **options)
        self._backend.check_available()

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
        n, start = _an_int(n), _an_int(start)  # numpy integers too, as seed takes them
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise ValueError(f"start must be a non-negative integer (a global sound index), got {start!r}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64 (what a synth renders), got {dtype}")
        if start + n > 2**63 - 1:
            raise ValueError(f"start + n must be below 2**63 (global sound indices are int64), got {start} + {n}")
        if device is not None:
            device = as_device(device)
            if device.type == "meta":
                raise ValueError("device='meta' holds no values: give a real device (cpu, cuda)")
            if device.type == "cuda" and not torch.cuda.is_available():
                raise ValueError("device='cuda' but CUDA is not available here: give device='cpu'")
        rng.check_seed(seed)
        index = torch.arange(start, start + n, dtype=torch.int64, device=device)
        return rng.uniform(seed, rng.Stream.THETA, index, self.num_params, dtype=dtype)

    def to_human(self, theta: torch.Tensor) -> torch.Tensor:
        """Normalised (..., m) -> human units (seconds, Hz, MIDI, radians, levels). Values outside [0, 1] are not
        refused here: they extend each parameter's curve (a render refuses them)."""
        return self.layout.table.to_human(theta)

    def to_unit(self, human: torch.Tensor) -> torch.Tensor:
        """Human units (..., m) -> normalised (..., m); the inverse of `to_human`. A value inside its parameter's
        range maps into [0, 1]; one outside it lands outside (clamp the result, or the render refuses it)."""
        return self.layout.table.to_unit(human)

    @property
    def param_units(self) -> list[str]:
        """The human unit of each parameter of `to_human`, in `param_names` order, e.g. "s", "Hz", "semitones"."""
        kinds = {name: kind for name, (kind, _) in self.patch.modules().items()}
        return [human_unit(kinds[s.module], s.param) for s in self.layout.specs]

    # ---- rendering -------------------------------------------------------------------------------
    def forward(
        self,
        theta: torch.Tensor,
        noise: torch.Tensor | None = None,
        normalize: bool = True,
        seed: int = 0,
        indices: torch.Tensor | None = None,
        validate: bool = True,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Render theta (B, m) in [0, 1] to audio (B, N) in theta's dtype and on its device.

        noise: (B, N) or (1, N) replaces the noise source (parity checks feed the anchors' noise); otherwise
            noise is drawn per sound from the counter-based generator keyed by (seed, indices[b]).
        normalize: divide each sound by its own peak when the peak exceeds 1; False returns the raw mix.
        indices: (B,) global sound indices keying the noise; default 0 .. B - 1.
        validate: check theta's values (one host synchronisation); pipelines that make theta themselves skip it.
        out: a contiguous (B, N) tensor of theta's dtype and device to render into.
        """
        return backends.render(self._backend, self.program, theta, noise=noise, seed=seed, indices=indices,
                               normalize=normalize, out=out, validate=validate)

    def extra_repr(self) -> str:
        return (
            f"{self.patch.name}: {self.num_params} params, {self.sample_rate} Hz, control {self.control_rate} Hz, "
            f"{self.duration} s, backend={self.backend}"
        )


class VoiceSynth(Synth):
    """SynthAX/torchsynth `Voice` (78 parameters). Keyword arguments as `Synth`'s (sample_rate, control_rate,
    duration, backend, eps, phase_dtype), and

    mixer_curve: "synthax" (default) leaves the noise level linear, as SynthAX and so the paper's data do;
        "torchsynth" applies the declared curve 0.025 to the noise level, as torchsynth does (DESIGN.md quirk 2).
    """

    def __init__(self, *, mixer_curve: str = "synthax", **kwargs):
        if mixer_curve not in ("synthax", "torchsynth"):
            raise ValueError(f"mixer_curve must be 'synthax' or 'torchsynth', got {mixer_curve!r}")
        self.mixer_curve = mixer_curve
        super().__init__(voice_patch(), apply_mixer_curve=mixer_curve == "torchsynth", **kwargs)


class VoiceFMSynth(Synth):
    """SynthAX `VoiceExpanded` (130 parameters), the paper's VoiceFM. Keyword arguments as `Synth`'s (sample_rate,
    control_rate, duration, backend, eps, phase_dtype)."""

    def __init__(self, **kwargs):
        super().__init__(voicefm_patch(), **kwargs)


class ParametricSynth(Synth):
    """SynthAX `ParametricSynth` (340 parameters with the paper's default counts 2, 2, 1, 1): `sine`,
    `square_saw`, `fm_sine` and `fm_square_saw` oscillators. Keyword arguments as `Synth`'s (sample_rate,
    control_rate, duration, backend, eps, phase_dtype)."""

    def __init__(self, sine: int = 2, square_saw: int = 2, fm_sine: int = 1, fm_square_saw: int = 1, **kwargs):
        patch = parametric_patch(sine, square_saw, fm_sine, fm_square_saw)  # checks the counts
        counts = dict(sine=sine, square_saw=square_saw, fm_sine=fm_sine, fm_square_saw=fm_square_saw)
        self.counts = {key: operator.index(value) for key, value in counts.items()}  # numpy integers as ints
        super().__init__(patch, **kwargs)


SYNTHS: dict[str, type[Synth]] = {"voice": VoiceSynth, "voicefm": VoiceFMSynth, "parametric": ParametricSynth}


def get_synth(name: str, **kwargs) -> Synth:
    """Build a synth by name: "voice", "voicefm" or "parametric"."""
    if name not in SYNTHS:
        raise ValueError(f"unknown synth {name!r}: choose one of {', '.join(SYNTHS)}")
    return SYNTHS[name](**kwargs)


def synth_from_options(name: str | None, patch_spec: str | None = None, *, default: str = "voice", **kwargs) -> Synth:
    """The synth that a command's --synth NAME / --patch FILE.py[:NAME] options ask for (neither: `default`);
    ValueError when both are given (one would silently lose)."""
    if name is not None and patch_spec is not None:
        raise ValueError(f"give --synth or --patch, not both (--synth {name} --patch {patch_spec})")
    if patch_spec is None:
        return get_synth(name or default, **kwargs)
    from doppel_torch.spec.load import load_patch

    return Synth(load_patch(patch_spec), **kwargs)
