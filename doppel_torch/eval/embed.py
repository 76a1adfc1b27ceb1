"""Clip embeddings from a frozen encoder: any length, any sample rate.

A clip is resampled to 16 kHz, cut into VGGish examples (0.96 s hop, 15,600-sample windows: 96 frames of
25 ms every 10 ms), each example goes through the log-mel frontend and the encoder, and the clip's
embedding is the mean over its examples. Clips shorter than one example are zero-padded; a trailing
partial example is kept when at least half of its hop holds audio (``round``), so no more than 0.48 s of a
clip is ever dropped or padded at its end.

Three feature extractors share this path (`Embedder`), so baselines go through identical framing:
- `Embedder.from_checkpoint`: a trained doppel-torch encoder;
- `Embedder.random_init`: the same ResNet18, randomly initialised from a seed (the paper's "Random Init.");
- `Embedder.log_mel`: no network, the log-mel example pooled over time (mean and std of the 64 bands, 128-d).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from doppel_torch.audio import AudioReadError, load_audio  # noqa: F401  (re-exported: eval's public API)
from doppel_torch.frontend import LogMelFrontend
from doppel_torch.functional import resample

SAMPLE_RATE = 16000


class LogMelPooling(nn.Module):
    """Log-mel baseline 'encoder': (B, 1, T, F) -> (B, 2F), the mean and std over time of each band."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, 0]
        return torch.cat([x.mean(dim=1), x.std(dim=1, unbiased=False)], dim=1)


class Embedder(nn.Module):
    """Frontend + frozen encoder + window framing and pooling.

    Args:
        encoder: maps log-mel examples (B, 1, 96, 64) to embeddings (B, D).
        embedding_size: D.
        key: identifies the weights for the embedding cache (a checkpoint's content hash, a seed).
        hop_s: hop between examples for clip embeddings (0.96 s, VGGish's non-overlapping examples).
        batch_size: examples per encoder call.
    """

    def __init__(self, encoder: nn.Module, embedding_size: int, key: str, hop_s: float = 0.96, batch_size: int = 64):
        super().__init__()
        self.frontend = LogMelFrontend(sample_rate=SAMPLE_RATE)
        self.encoder = encoder.eval()
        self.embedding_size = int(embedding_size)
        self.key = key
        self.window = self.frontend.n_samples  # 15,600 samples
        self.hop = int(round(hop_s * SAMPLE_RATE))  # 15,360 samples
        self.batch_size = int(batch_size)
        self.cache_key = f"{key}-win{self.window}-hop{self.hop}"
        for p in self.parameters():
            p.requires_grad_(False)

    # ----------------------------------------------------------------------------------- constructors
    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu", **kwargs) -> Embedder:
        """The encoder of a `doppel-torch train` checkpoint (file or run folder); key = sha256 of the file."""
        from doppel_torch.train.checkpoint import load_encoder

        path = Path(path)
        encoder, _ = load_encoder(path, map_location="cpu")
        file = path / "last.pt" if path.is_dir() else path
        return cls(encoder, encoder.embed_dim, f"ckpt-{file_sha256(file)[:16]}", **kwargs).to(device)

    @classmethod
    def random_init(cls, seed: int = 0, embed_dim: int = 512, width: int = 64, device="cpu", **kwargs) -> Embedder:
        """A ResNet18Encoder with its own initialisation drawn from `seed`, never trained."""
        from doppel_torch.models import ResNet18Encoder

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            encoder = ResNet18Encoder(in_channels=1, embed_dim=embed_dim, width=width)
        return cls(encoder, embed_dim, f"random-init-seed{seed}-d{embed_dim}-w{width}", **kwargs).to(device)

    @classmethod
    def log_mel(cls, device="cpu", **kwargs) -> Embedder:
        """Pooled log-mel features (mean and std over time of 64 bands): 128-d."""
        return cls(LogMelPooling(), 128, "logmel-meanstd", **kwargs).to(device)

    # ------------------------------------------------------------------------------------- framing
    @property
    def device(self) -> torch.device:
        return self.frontend.window.device

    def n_windows(self, n_samples: int) -> int:
        """Examples cut from a clip of `n_samples` at 16 kHz: 1 + round((N - window) / hop), at least 1."""
        if n_samples <= self.window:
            return 1
        return 1 + int(np.floor((n_samples - self.window) / self.hop + 0.5))

    def frame(self, audio: torch.Tensor, hop: int | None = None, n_windows: int | None = None) -> torch.Tensor:
        """(N,) 16 kHz -> (W, window) examples, zero-padded at the end where needed."""
        hop = self.hop if hop is None else hop
        w = self.n_windows(audio.shape[-1]) if n_windows is None else n_windows
        need = (w - 1) * hop + self.window
        if audio.shape[-1] < need:
            audio = torch.nn.functional.pad(audio, (0, need - audio.shape[-1]))
        return audio.unfold(-1, self.window, hop)[:w]

    @torch.no_grad()
    def embed_windows(self, windows: torch.Tensor) -> torch.Tensor:
        """(W, window) 16 kHz examples -> (W, D) embeddings, in batches of `batch_size`."""
        out = []
        for i in range(0, windows.shape[0], self.batch_size):
            x = windows[i : i + self.batch_size].to(self.device, torch.float32)
            out.append(self.encoder(self.frontend(x)).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.embedding_size)

    @torch.no_grad()
    def embed(self, audio, sample_rate: int) -> torch.Tensor:
        """Clip embeddings, mean-pooled over 0.96 s examples.

        audio: a (B, N) tensor, a 1-D tensor (one clip) or a list of 1-D tensors / arrays of any lengths;
        sample_rate: their rate in Hz (resampled to 16 kHz). Returns (B, D) float32 on the CPU.
        """
        clips = _as_clips(audio)
        if not clips:
            return torch.zeros(0, self.embedding_size)
        clips = [resample(c.float(), int(sample_rate), SAMPLE_RATE) for c in clips]
        return self.embed_clips(clips)

    @torch.no_grad()
    def embed_clips(self, clips: list[torch.Tensor]) -> torch.Tensor:
        """16 kHz 1-D clips -> (B, D): all their examples are batched together, then averaged per clip."""
        windows = [self.frame(c) for c in clips]
        counts = [w.shape[0] for w in windows]
        emb = self.embed_windows(torch.cat(windows))
        return torch.stack([e.mean(0) for e in emb.split(counts)])


def free_cpu_threads() -> int:
    """Intra-op threads worth using on the CPU now: torch's count, less the cores other processes keep busy
    (the 1-minute load average), at least 1. On a shared 2-core machine at load 16, a ResNet18 batch of 32
    examples took 0.76 s on 1 thread and 3.38 s on 2 (the threads wait for each other on oversubscribed cores),
    and resampling one FSDD clip 0.2 ms vs 92 ms; on an idle machine this is torch's own count."""
    try:
        busy = os.getloadavg()[0]
    except OSError:  # no load average on this platform
        return torch.get_num_threads()
    cores = os.cpu_count() or 1
    return max(1, min(torch.get_num_threads(), int(cores - busy + 0.5)))


@contextlib.contextmanager
def cpu_threads(n: int):
    """Run a block with `n` intra-op CPU threads, then restore the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _as_clips(audio) -> list[torch.Tensor]:
    if isinstance(audio, (list, tuple)):
        clips = [torch.as_tensor(np.asarray(a) if not torch.is_tensor(a) else a) for a in audio]
    else:
        audio = torch.as_tensor(audio)
        if audio.ndim == 1:
            audio = audio[None]
        if audio.ndim != 2:
            raise ValueError(f"audio must be (samples,), (batch, samples) or a list of 1-D clips, got {tuple(audio.shape)}")
        clips = list(audio)
    for c in clips:
        if c.ndim != 1 or c.shape[0] == 0:
            raise ValueError(f"every clip must be 1-D and non-empty, got shape {tuple(c.shape)}")
    return clips


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
