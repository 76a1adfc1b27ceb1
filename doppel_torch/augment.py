"""The paper's augmentation chain, per example and batched: no Python loop over examples.

Chain (paper section 3.3, each transform applied with probability p = 0.5, independently per example):
high-pass (cutoff 20-800 Hz), low-pass (1.2-8 kHz), pitch shift (+-2 semitones), time shift (+-25 % of the
length, rollover), reverb (convolution with an impulse response drawn from a folder).

Draws come from the counter-based generator keyed by (seed, Stream.AUGMENT + view, global sound index), so
an example's augmentation does not depend on the batch it is in. Counter layout per example:
0/1 high-pass apply/cutoff, 2/3 low-pass apply/cutoff, 4/5 pitch apply/semitones, 6/7 shift apply/amount,
8/9 reverb apply/impulse response.

What equals torch-audiomentations 0.12 given the same drawn parameters (tested):
- filters: julius' windowed-sinc FIR (8 zero crossings, replicate padding); high-pass = x - lowpass(x);
  cutoffs drawn uniformly on the mel scale 2595 log10(1 + f / 700), as torch-audiomentations draws them;
- shift: torch.roll by an integer drawn uniformly in [round(-0.25 N), round(0.25 N)];
- reverb: impulse responses mixed to mono (channel mean), resampled to the sample rate, full convolution
  cropped to the first N samples, no gain compensation.
What differs (by design): pitch shift. torch-audiomentations picks a ratio from a discrete set of "fast"
rationals and time-stretches with a phase vocoder, then resamples, one example at a time. Here the
semitones are continuous (uniform in the range) and a frequency-domain phase vocoder scales every
example's spectrum by its own ratio in one batched STFT / iSTFT (`functional.pitch_shift`); tests check
its effect on pitched tones.

On CPU only the rows selected for a transform are computed (boolean indexing); on other devices every row is
computed and the selection is a `torch.where`, which keeps the step free of host synchronisation. Both give
the same numbers, rows being independent. On CPU the high-pass also groups rows by filter length
(`functional.highpass_grouped`), since data-dependent shapes cost no synchronisation there.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from doppel_torch import functional as F
from doppel_torch import rng

TRANSFORMS = ("highpass", "lowpass", "pitch_shift", "shift", "reverb")
N_DRAWS = 2 * len(TRANSFORMS)
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".aiff", ".aif")


@dataclass
class AugmentParams:
    """Per-example draws of the chain, all shaped (B,): `apply` is (B, 5) bool in TRANSFORMS order."""

    apply: torch.Tensor
    highpass_hz: torch.Tensor
    lowpass_hz: torch.Tensor
    semitones: torch.Tensor
    shift: torch.Tensor
    ir_index: torch.Tensor

    def enabled(self, name: str) -> torch.Tensor:
        return self.apply[:, TRANSFORMS.index(name)]


def _mel(f):
    return 2595.0 * torch.log10(1.0 + f / 700.0)


def _mel_to_hz(m):
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def find_impulse_responses(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    """Audio files of a folder (recursively, sorted) or the given list of files."""
    if isinstance(paths, (str, Path)):
        folder = Path(paths)
        if not folder.is_dir():
            raise ValueError(f"impulse-response folder {folder} does not exist: pass a folder of audio files")
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    else:
        files = [Path(p) for p in paths]
    if not files:
        raise ValueError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) found in {paths}")
    return files


def fast_pitch_semitones(sample_rate: int, semitones: tuple[float, float]) -> list[float]:
    """Pitch shifts (semitones, sorted) that torch-audiomentations' PitchShift can draw at `sample_rate`.

    Its ratios are d1 / d2 for divisors d1, d2 of the sample rate (so its resampler stays short), kept
    when 2^(lo / 12) <= ratio <= 2^(hi / 12) and ratio != 1.
    """
    from fractions import Fraction

    sr = int(sample_rate)
    divisors = [d for d in range(1, sr + 1) if sr % d == 0]
    lo, hi = 2.0 ** (semitones[0] / 12.0), 2.0 ** (semitones[1] / 12.0)
    ratios = {Fraction(a, b) for a in divisors for b in divisors}
    return sorted(12.0 * math.log2(float(r)) for r in ratios if lo <= r <= hi and r != 1)


def load_impulse_responses(paths: str | Path | Sequence[str | Path], sample_rate: int) -> list[torch.Tensor]:
    """Impulse responses from a folder or a list of files: each mixed to mono and resampled, float32 (L_i,)."""
    files = tuple(str(p.resolve()) for p in find_impulse_responses(paths))
    return [ir.clone() for ir in _load_impulse_responses(files, int(sample_rate))]


@functools.lru_cache(maxsize=8)
def _load_impulse_responses(files: tuple[str, ...], sample_rate: int) -> tuple[torch.Tensor, ...]:
    from doppel_torch.audio import AudioReadError, load_audio

    irs = []
    for path in files:
        try:
            mono, rate = load_audio(path)
        except AudioReadError as err:
            raise ValueError(f"impulse response {str(err).rstrip('.')}: remove or replace it") from None
        irs.append(F.resample(mono, rate, sample_rate))
    return tuple(irs)


# On CPU reverb convolves REVERB_CPU_ROWS rows at a time (their 32000-point spectra stay in cache). 52 rows,
# 2 threads, idle: min 15.0 -> 12.2 ms (16 rows), 13.0 ms (8 rows).
REVERB_CPU_ROWS = 16


DEFAULT_HIGHPASS_HZ = (20.0, 800.0)  # the paper's cutoff ranges (conf/transform/audiomentations.yaml)
DEFAULT_LOWPASS_HZ = (1200.0, 8000.0)


class AugmentChain(nn.Module):
    """Per-example augmentation chain: audio (B, N) -> (B, N), draws keyed by (seed, view, sound index).

    Args:
        sample_rate: Hz.
        p: probability of each transform, per example.
        highpass_hz, lowpass_hz: cutoff ranges (drawn uniformly in mel); by default (20, 800) and (1200, 8000) Hz,
            the paper's, each upper end lowered to the Nyquist frequency where that is below it (8 kHz audio
            low-passes at 1200 .. 4000 Hz).
        semitones: pitch-shift range.
        shift_fraction: time-shift range as a fraction of the length (rollover).
        ir_paths: folder or list of impulse-response files; None leaves reverb out of the chain.
        transforms: the subset of TRANSFORMS to run (order is always the chain's).
        seed: generator seed.
        pitch: "uniform" draws semitones uniformly in the range; "fast_ratios" picks uniformly among the
            ratios torch-audiomentations can use (`fast_pitch_semitones`), which is what the paper's
            "+-2 semitones" amounted to: at 16 kHz only 125/128 and 128/125, i.e. -+0.41 semitones.
        pitch_n_fft, pitch_hop: STFT of the pitch shifter.
        group: examples that share one draw: rows [k * group, (k + 1) * group) of a call take the draws of the
            group's first row. 1 (default) draws per example; the paper's released code augments synthetic
            batches in chunks of 100 with one draw per chunk (doppelgangers/data.py:211, 273-275, mode
            per_batch in conf/transform/audiomentations.yaml), which is group=100.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        p: float = 0.5,
        highpass_hz: tuple[float, float] | None = None,
        lowpass_hz: tuple[float, float] | None = None,
        semitones: tuple[float, float] = (-2.0, 2.0),
        shift_fraction: tuple[float, float] = (-0.25, 0.25),
        ir_paths: str | Path | Sequence[str | Path] | None = None,
        transforms: Sequence[str] | None = None,
        seed: int = 0,
        pitch: str = "uniform",
        pitch_n_fft: int = 1024,
        pitch_hop: int = 256,
        group: int = 1,
    ):
        super().__init__()
        if pitch not in ("uniform", "fast_ratios"):
            raise ValueError(f'pitch must be "uniform" or "fast_ratios", got {pitch!r}')
        if not 0.0 <= p <= 1.0 or math.isnan(p):
            raise ValueError(f"p must be a probability in [0, 1], got {p}")
        nyquist = sample_rate / 2
        if highpass_hz is None:
            highpass_hz = (DEFAULT_HIGHPASS_HZ[0], min(DEFAULT_HIGHPASS_HZ[1], nyquist))
        if lowpass_hz is None:
            lowpass_hz = (DEFAULT_LOWPASS_HZ[0], min(DEFAULT_LOWPASS_HZ[1], nyquist))
        for name, pair in (("highpass_hz", highpass_hz), ("lowpass_hz", lowpass_hz)):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise ValueError(f"{name} must be a (low, high) pair in Hz, got {pair!r}")
            lo, hi = pair
            if not 0 < lo <= hi <= nyquist:
                raise ValueError(f"{name} must satisfy 0 < low <= high <= sample_rate / 2 = {nyquist:g}, got "
                                 f"{(lo, hi)}: pass {name}=(low, high) for {sample_rate} Hz audio")
        if isinstance(group, bool) or not isinstance(group, int) or group < 1:
            raise ValueError(f"group must be an integer >= 1 (examples sharing one draw), got {group!r}")
        if semitones[0] > semitones[1] or shift_fraction[0] > shift_fraction[1]:
            raise ValueError("ranges must be (low, high) with low <= high")
        if transforms is None:
            transforms = [t for t in TRANSFORMS if t != "reverb" or ir_paths is not None]
        unknown = set(transforms) - set(TRANSFORMS)
        if unknown:
            raise ValueError(f"unknown transforms {sorted(unknown)}: choose from {TRANSFORMS}")
        if "reverb" in transforms and ir_paths is None:
            raise ValueError("reverb needs ir_paths (a folder of impulse responses)")
        self.sample_rate = int(sample_rate)
        self.p = float(p)
        self.highpass_hz = tuple(map(float, highpass_hz))
        self.lowpass_hz = tuple(map(float, lowpass_hz))
        self.semitones = tuple(map(float, semitones))
        self.shift_fraction = tuple(map(float, shift_fraction))
        self.transforms = tuple(t for t in TRANSFORMS if t in transforms)
        self.seed = int(seed)
        self.group = group
        self.pitch_n_fft, self.pitch_hop = int(pitch_n_fft), int(pitch_hop)
        self.pitch = pitch
        self.pitch_choices = fast_pitch_semitones(sample_rate, self.semitones) if pitch == "fast_ratios" else None
        if self.pitch_choices == []:
            raise ValueError(f"no fast pitch ratio of {sample_rate} Hz lies in {self.semitones} semitones: widen the range")
        # FIR half lengths bounded by the lowest cutoff each filter can draw: shapes never depend on a draw.
        self.highpass_half = int(F.lowpass_half_size(torch.tensor(self.highpass_hz[0] / sample_rate, dtype=torch.float32).double()))
        self.lowpass_half = int(F.lowpass_half_size(torch.tensor(self.lowpass_hz[0] / sample_rate, dtype=torch.float32).double()))
        irs = load_impulse_responses(ir_paths, self.sample_rate) if ir_paths is not None else []
        self.n_irs = len(irs)
        bank = torch.zeros(len(irs), max((len(ir) for ir in irs), default=1))
        for i, ir in enumerate(irs):
            bank[i, : len(ir)] = ir
        self.register_buffer("ir_bank", bank, persistent=False)
        self._ir_spectra: dict = {}
        # constants as buffers: building them on the device inside a step would wait for the queued work
        self.register_buffer("enabled", torch.tensor([t in self.transforms for t in TRANSFORMS]), persistent=False)
        self.register_buffer(
            "pitch_choice_table", torch.tensor(self.pitch_choices or [0.0], dtype=torch.float64), persistent=False
        )
        # None: compute only the selected rows on CPU, every row elsewhere (see the module docstring)
        self.subset_rows: bool | None = None

    # ------------------------------------------------------------------------------------------------
    def draw(self, indices: torch.Tensor, n_samples: int, view: int = 0) -> AugmentParams:
        """The chain's draws for global sound `indices` (B,), keyed by (seed, Stream.AUGMENT + view)."""
        if view not in (0, 1):
            raise ValueError(f"view must be 0 or 1 (the two sides of a pair), got {view}")
        indices = torch.as_tensor(indices, dtype=torch.int64, device=self.ir_bank.device)
        u = rng.uniform(self.seed, rng.Stream.AUGMENT + view, indices, N_DRAWS, dtype=torch.float64)
        apply = (u[:, 0::2] < self.p) & self.enabled
        draws = u[:, 1::2]

        def mel_uniform(lo, hi, v):
            lo_m, hi_m = _mel(torch.tensor(lo, dtype=torch.float64)), _mel(torch.tensor(hi, dtype=torch.float64))
            return _mel_to_hz(lo_m + (hi_m - lo_m) * v).clamp(lo, hi).float()

        lo_s, hi_s = (int(round(f * n_samples)) for f in self.shift_fraction)
        shift = torch.floor(draws[:, 3] * (hi_s - lo_s + 1)).long() + lo_s
        ir_index = torch.floor(draws[:, 4] * max(self.n_irs, 1)).long()
        if self.pitch_choices is None:
            semitones = self.semitones[0] + (self.semitones[1] - self.semitones[0]) * draws[:, 2]
        else:
            choices = self.pitch_choice_table
            semitones = choices[torch.floor(draws[:, 2] * len(choices)).long()]
        return AugmentParams(
            apply=apply,
            highpass_hz=mel_uniform(*self.highpass_hz, draws[:, 0]),
            lowpass_hz=mel_uniform(*self.lowpass_hz, draws[:, 1]),
            semitones=semitones.float(),
            shift=shift,
            ir_index=ir_index,
        )

    def forward(self, audio: torch.Tensor, indices: torch.Tensor | None = None, view: int = 0) -> torch.Tensor:
        """Augment (B, N) audio; `indices` (B,) are the sounds' global indices (default arange(B))."""
        if audio.ndim != 2:
            raise ValueError(f"audio must be (batch, samples), got shape {tuple(audio.shape)}")
        if not audio.is_floating_point():
            raise ValueError(f"audio must be floating point in [-1, 1], got {audio.dtype} (16-bit PCM: divide by "
                             "32768)")
        if audio.requires_grad and torch.is_grad_enabled():
            raise ValueError("AugmentChain is not differentiable (its pitch shift and reverb write in place): pass "
                             "audio.detach(), or augment under torch.no_grad()")
        if indices is None:
            indices = torch.arange(audio.shape[0])
        indices = torch.as_tensor(indices)
        if indices.shape != (audio.shape[0],):
            raise ValueError(f"indices must have shape ({audio.shape[0]},), got {tuple(indices.shape)}")
        if self.group > 1:  # each group of rows takes the draws of its first row
            indices = indices[torch.arange(len(indices), device=indices.device) // self.group * self.group]
        return self.apply(audio, self.draw(indices, audio.shape[-1], view))

    def apply(self, audio: torch.Tensor, params: AugmentParams) -> torch.Tensor:
        """Run the chain with given draws (every transform in self.transforms, gated by params.apply)."""
        if audio.shape[0] == 0:
            return audio.clone()
        x, owned = audio, False  # owned: x is this call's own tensor, so rows may be written in place
        for name in self.transforms:
            mask = params.enabled(name).to(x.device)
            x, owned = self._gated(x, owned, mask, lambda rows, sel, name=name: self._transform(name, rows, params, sel))
        return x

    def _gated(self, x, owned, mask, fn):
        """(fn applied to the rows in mask, the rest of x as is), and whether the result is a new tensor."""
        subset = x.device.type == "cpu" if self.subset_rows is None else self.subset_rows
        if subset:
            sel = mask.nonzero().flatten()
            if sel.numel() == 0:
                return x, owned
            if sel.numel() == x.shape[0]:  # every row: no gathering and scattering
                return fn(x, sel), True
            # one copy of the input per call, not per transform (100 rows: ~1 ms a copy)
            out = x if owned else x.clone()
            out[sel] = fn(x[sel], sel)
            return out, True
        return torch.where(mask[:, None], fn(x, None), x), True

    def _transform(self, name: str, x: torch.Tensor, params: AugmentParams, sel) -> torch.Tensor:
        def pick(v):
            v = v.to(x.device)
            return v if sel is None else v[sel]

        if name == "highpass":
            if x.device.type == "cpu":  # rows grouped by filter length (data-dependent shapes cost no sync here)
                return F.highpass_grouped(x, pick(params.highpass_hz), self.sample_rate, self.highpass_half)
            return F.highpass(x, pick(params.highpass_hz), self.sample_rate, self.highpass_half)
        if name == "lowpass":
            return F.lowpass(x, pick(params.lowpass_hz), self.sample_rate, self.lowpass_half)
        if name == "pitch_shift":
            return F.pitch_shift(x, pick(params.semitones), n_fft=self.pitch_n_fft, hop_length=self.pitch_hop)
        if name == "shift":
            return F.roll(x, pick(params.shift))
        if name == "reverb":
            return self._reverb(x, pick(params.ir_index))
        raise AssertionError(name)

    def _reverb(self, x: torch.Tensor, ir_index: torch.Tensor) -> torch.Tensor:
        """Full convolution with the chosen impulse responses, cropped to the first N samples."""
        n = x.shape[-1]
        ir_len = min(self.ir_bank.shape[-1], n)  # samples beyond N cannot reach the first N outputs
        size = F.next_fast_len(n + ir_len - 1)
        key = (size, ir_len, x.dtype, x.device)
        if key not in self._ir_spectra:
            self._ir_spectra = {key: torch.fft.rfft(self.ir_bank[:, :ir_len].to(x), n=size)}
        spectra = self._ir_spectra[key]

        def convolve(rows, ir):
            return torch.fft.irfft(torch.fft.rfft(rows, n=size) * spectra[ir], n=size)[..., :n]

        if x.device.type != "cpu":
            return convolve(x, ir_index)
        return F.in_row_blocks(convolve, REVERB_CPU_ROWS, x, ir_index)


class TorchAudiomentationsChain(nn.Module):
    """The paper's behaviour: torch-audiomentations 0.12, per batch, in chunks of `chunk_size` examples.

    Same transforms and ranges as AugmentChain; in "per_batch" mode every chunk shares one draw of each
    transform. Draws come from torch's global generator (torch.manual_seed), not from the keyed one.
    torch-audiomentations is an optional dependency, imported here.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        p: float = 0.5,
        ir_paths: str | Path | Sequence[str | Path] | None = None,
        chunk_size: int = 100,
        mode: str = "per_batch",
        highpass_hz: tuple[float, float] = DEFAULT_HIGHPASS_HZ,
        lowpass_hz: tuple[float, float] = DEFAULT_LOWPASS_HZ,
        semitones: tuple[float, float] = (-2.0, 2.0),
        shift_fraction: tuple[float, float] = (-0.25, 0.25),
    ):
        super().__init__()
        try:
            import torch_audiomentations as ta
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(
                "the compatibility chain needs torch-audiomentations 0.12: pip install 'doppel-torch[test]'"
            ) from err
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.sample_rate, self.chunk_size = int(sample_rate), int(chunk_size)
        common = dict(mode=mode, p=p, sample_rate=sample_rate, output_type="dict")
        transforms = [
            ta.HighPassFilter(*highpass_hz, **common),
            ta.LowPassFilter(*lowpass_hz, **common),
            ta.PitchShift(*semitones, **common),
            ta.Shift(*shift_fraction, shift_unit="fraction", rollover=True, **common),
        ]
        if ir_paths is not None:
            transforms.append(_preloaded_impulse_response(ta, ir_paths, **common))
        self.chain = ta.Compose(transforms, output_type="dict")

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        if audio.ndim != 2:
            raise ValueError(f"audio must be (batch, samples), got shape {tuple(audio.shape)}")
        chunks = [
            self.chain(chunk[:, None, :], sample_rate=self.sample_rate).samples[:, 0, :]
            for chunk in audio.split(self.chunk_size)
        ]
        return torch.cat(chunks)


def _preloaded_impulse_response(ta, ir_paths, **kwargs):
    """torch-audiomentations' ApplyImpulseResponse with its files loaded once by `load_impulse_responses`.

    Its own loader calls `torchaudio.info` / `torchaudio.load`, which torchaudio 2.9 removed; the choice
    (random.choices, one per example or per batch) and the convolution are its own.
    """
    import random

    from torch.nn.utils.rnn import pad_sequence

    class PreloadedImpulseResponse(ta.ApplyImpulseResponse):
        def __init__(self, irs, **kw):
            super().__init__(ir_paths, **kw)
            self.ir_paths = find_impulse_responses(ir_paths)  # the order of `irs`
            self.irs = irs

        def randomize_parameters(self, samples=None, sample_rate=None, targets=None, target_rate=None):
            chosen = random.choices(range(len(self.irs)), k=samples.shape[0])
            self.transform_parameters["ir"] = pad_sequence([self.irs[i] for i in chosen], batch_first=True)[:, None, :]
            self.transform_parameters["ir_paths"] = [self.ir_paths[i] for i in chosen]

    irs = load_impulse_responses(ir_paths, kwargs["sample_rate"])
    return PreloadedImpulseResponse(irs, **kwargs)
