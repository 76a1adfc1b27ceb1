"""Positive pairs for training: synthetic doppelgangers, or two views of real recordings.

Both sources address sounds by *global sound index*. Validation uses indices 0 .. n_val - 1 (the same every
epoch); training step s on rank r of W, batch b per rank, uses

    n_val + (s * W + r) * b + arange(b)

so ranks draw disjoint sounds without talking to each other, every step sees fresh sounds, the data of a
step depends on the step number only (exact resume), and W ranks of batch b see exactly the sounds of one
rank with batch W * b.

Real-data mode (the paper's VGGSound baselines, sections 3.2 and 4.2.2): a folder of wav/flac/ogg files read
with soundfile. A sound index picks a clip and segment offsets from the counter-based generator
(`rng.Stream.DATA`); with `jitter` the two views are two different segments of the clip (temporal jitter),
without it the same segment (views then differ through augmentation only); with `mix_layers` = n each view is
the sum of n segments of the clip (VGGSound-Mix), rescaled to peak 1 if it clips. Files that soundfile cannot
open are skipped with a warning and counted; a clip shorter than a segment is placed at a drawn offset in silence.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from doppel_torch import rng
from doppel_torch.audio import walk_audio
from doppel_torch.functional import resample

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


def train_indices(
    step: int, rank: int, world_size: int, batch_size: int, n_val: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Global sound indices (batch_size,) of `rank` at optimizer step `step` (see the module docstring)."""
    start = n_val + (step * world_size + rank) * batch_size
    return torch.arange(start, start + batch_size, dtype=torch.int64, device=device)


def val_batch_size(n_val: int, world_size: int, batch_size: int) -> int:
    """Sounds per rank in a validation batch: the training batch, or fewer where the validation split is smaller
    than one global batch (a full batch read training sounds there), but at least 2 (uniformity compares pairs)."""
    return max(2, min(batch_size, n_val // world_size))


def val_batches(n_val: int, world_size: int, batch_size: int) -> int:
    """Whole validation batches in 0 .. n_val - 1 (at least one)."""
    return max(1, n_val // (world_size * val_batch_size(n_val, world_size, batch_size)))


def val_indices(
    batch: int, rank: int, world_size: int, batch_size: int, n_val: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Global sound indices of validation batch `batch` on `rank`: inside 0 .. n_val - 1 (where the split holds fewer
    than 2 sounds per rank, ranks share some)."""
    per = val_batch_size(n_val, world_size, batch_size)
    start = (batch * world_size + rank) * per
    return torch.arange(start, start + per, dtype=torch.int64, device=device) % n_val


@dataclass
class AudioFile:
    path: Path
    frames: int
    sample_rate: int


def scan_audio_folder(folder: str | Path) -> tuple[list[AudioFile], list[tuple[Path, str]]]:
    """Readable audio files under `folder` (recursive, sorted) and the (path, reason) of skipped ones."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"--data {folder}: not a folder; pass a folder of {'/'.join(AUDIO_SUFFIXES)} files")
    paths, skipped, folders = walk_audio(folder, AUDIO_SUFFIXES)
    for path, reason in skipped + folders:  # only files count as skipped files
        warnings.warn(f"skipping {path}: {reason}", stacklevel=2)
    files = []
    for path in paths:
        try:
            info = sf.info(str(path))
            if info.frames <= 0:
                raise RuntimeError("no audio frames")
            files.append(AudioFile(path, int(info.frames), int(info.samplerate)))
        except Exception as exc:  # soundfile raises LibsndfileError, RuntimeError, ...: all mean unreadable
            skipped.append((path, f"{type(exc).__name__}: {exc}"))
            warnings.warn(f"skipping unreadable audio file {path}: {exc}", stacklevel=2)
    if len(files) < 2:
        raise ValueError(
            f"--data {folder}: found {len(files)} readable audio file(s) ({len(skipped)} skipped); "
            f"need at least 2 (one for training, one for validation)"
        )
    return files, skipped


class NoAudioLeft(RuntimeError):
    """Every file of the data folder failed to read while training."""


class RealPairs:
    """Two views of real clips for global sound indices: (audio1, audio2), each (B, n_samples) float32.

    Clips are split once into train / validation (`val_fraction` of the files, at least one, chosen by a
    seeded permutation); indices < n_val read validation clips, the others training clips.
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        sample_rate: int = 16000,
        duration: float = 1.0,
        n_val: int = 10_000,
        val_fraction: float = 0.1,
        jitter: bool = True,
        mix_layers: int = 1,
        seed: int = 0,
    ) -> None:
        self.files, self.skipped = scan_audio_folder(folder)
        self.sample_rate = sample_rate
        self.n_samples = int(round(duration * sample_rate))
        self.duration = duration
        self.n_val = n_val
        self.jitter = jitter
        self.mix_layers = mix_layers
        self.seed = seed
        self.read_failures = 0  # read attempts that failed
        self.failed_files: set[str] = set()  # the files they failed on (scanned readable, unreadable since)
        order = torch.randperm(len(self.files), generator=torch.Generator().manual_seed(seed)).tolist()
        n_val_files = max(1, int(round(val_fraction * len(self.files))))
        n_val_files = min(n_val_files, len(self.files) - 1)
        self.val_files = [self.files[i] for i in sorted(order[:n_val_files])]
        self.train_files = [self.files[i] for i in sorted(order[n_val_files:])]

    def __call__(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        indices = torch.as_tensor(indices, dtype=torch.int64).cpu()
        n_layers = self.mix_layers
        u = rng.uniform(self.seed, rng.Stream.DATA, indices, 1 + 2 * n_layers, dtype=torch.float64)
        # Read every segment at its file's rate, then resample each rate's segments in one batched call.
        by_rate: dict[int, list[tuple[int, int, torch.Tensor]]] = {}
        for row, index in enumerate(indices.tolist()):
            pool = self.val_files if index < self.n_val else self.train_files
            file_id = min(int(u[row, 0] * len(pool)), len(pool) - 1)
            for view in range(2):
                first = 1 + (view if self.jitter else 0) * n_layers
                segments, sr = self._read_segments(pool, file_id, u[row, first : first + n_layers].tolist())
                by_rate.setdefault(sr, []).extend((row, view, seg) for seg in segments)
        views = torch.zeros(2, len(indices), self.n_samples)
        for sr, items in by_rate.items():
            audio = torch.stack([seg for _, _, seg in items])
            if sr != self.sample_rate:
                audio = resample(audio, sr, self.sample_rate)
            n = min(self.n_samples, audio.shape[-1])
            for (row, view, _), seg in zip(items, audio):
                views[view, row, :n] += seg[:n]
        peak = views.abs().amax(dim=-1, keepdim=True)
        views = torch.where(peak > 1, views / peak.clamp_min(1e-12), views)  # mixtures that clip -> peak 1
        return views[0], views[1]

    def _read_segments(self, pool: list[AudioFile], file_id: int, offsets: list[float]) -> tuple[list[torch.Tensor], int]:
        """Segments of clip `file_id` (or, if it cannot be read, of the next readable clip) at its own rate."""
        for attempt in range(len(pool)):
            clip = pool[(file_id + attempt) % len(pool)]
            try:
                return [self._segment(clip, u) for u in offsets], clip.sample_rate
            except Exception as exc:  # a file that became unreadable (truncated, corrupt data)
                self.read_failures += 1
                if str(clip.path) not in self.failed_files:
                    self.failed_files.add(str(clip.path))
                    warnings.warn(f"skipping unreadable audio file {clip.path}: {exc}", stacklevel=2)
        raise NoAudioLeft(f"no readable audio file left in the data folder (the last one, {clip.path}, failed: see "
                          "the warnings above); give --data a folder of working recordings")

    def _segment(self, clip: AudioFile, u: float) -> torch.Tensor:
        """A `duration` segment of `clip` at its own rate, placed by the draw u in [0, 1).

        A clip longer than the segment is cut at offset u x (free length); a shorter one is placed whole at
        offset u x (missing length) inside a zero segment, so jitter still moves it in time.
        """
        seg_len = int(math.ceil(self.duration * clip.sample_rate))
        free = clip.frames - seg_len
        start = int(u * (free + 1)) if free >= 0 else 0
        data, _ = sf.read(str(clip.path), start=start, frames=seg_len, dtype="float32", always_2d=True)
        audio = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
        if not bool(torch.isfinite(audio).all()):  # would turn the whole batch's loss into NaN
            raise ValueError("it holds NaN or infinite samples")
        out = torch.zeros(seg_len)
        place = int(u * (-free + 1)) if free < 0 else 0
        n = min(seg_len - place, audio.shape[0])
        out[place : place + n] = audio[:n]
        return out


class RealPairBatches(torch.utils.data.Dataset):
    """Map-style dataset over optimizer steps for a DataLoader: item s = this rank's batch of step s."""

    def __init__(self, pairs: RealPairs, rank: int, world_size: int, batch_size: int, n_val: int) -> None:
        self.pairs, self.rank, self.world_size, self.batch_size, self.n_val = pairs, rank, world_size, batch_size, n_val

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        indices = train_indices(step, self.rank, self.world_size, self.batch_size, self.n_val)
        audio1, audio2 = self.pairs(indices)
        # The worker's own set of files that failed so far (a list of str passes through the DataLoader as is).
        failed = sorted(self.pairs.failed_files)
        return {"step": torch.tensor(step), "indices": indices, "audio1": audio1, "audio2": audio2, "failed": failed}
