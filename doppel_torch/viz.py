"""Things people would rather hear or see: wav files and spectrogram pictures."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch


def write_wav(path: str | Path, audio: torch.Tensor, sample_rate: int) -> Path:
    """Write one mono sound (N,) as 16-bit PCM wav; values are clipped to [-1, 1]."""
    import soundfile as sf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = audio.detach().to("cpu", torch.float32).clamp(-1.0, 1.0).numpy()
    sf.write(str(path), data, int(sample_rate), subtype="PCM_16")
    return path


def log_spectrogram(audio: torch.Tensor, sample_rate: int, n_fft: int = 512, hop: int | None = None) -> np.ndarray:
    """dB magnitude spectrogram (freq, frames) of one sound (N,), for display."""
    hop = hop or n_fft // 4
    x = audio.detach().to("cpu", torch.float32)
    window = torch.hann_window(n_fft)
    spec = torch.stft(x, n_fft, hop_length=hop, window=window, return_complex=True).abs()
    return (20.0 * torch.log10(spec + 1e-5)).numpy()


def save_spectrogram_grid(
    rows: Sequence[Sequence[torch.Tensor]],
    sample_rate: int,
    path: str | Path,
    *,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """One PNG with a grid of spectrograms: rows[i][j] is a sound (N,). Used for doppelganger pairs side by
    side (columns = views) and for delta sweeps (columns = deltas)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.2 * n_cols, 1.9 * n_rows), squeeze=False, sharex=True, sharey=True)
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i][j]
            if j >= len(row):
                ax.axis("off")
                continue
            spec = log_spectrogram(row[j], sample_rate)
            duration = row[j].shape[-1] / sample_rate
            # 80 dB below each panel's peak; a (near-)silent sound is drawn against -20 dB so that it looks silent
            # (a full-scale tone peaks at ~+42 dB here) instead of filling its panel with the top colour.
            top = max(float(spec.max()), -20.0)
            ax.imshow(
                spec, origin="lower", aspect="auto", cmap="magma", vmin=top - 80, vmax=top,
                extent=(0.0, duration, 0.0, sample_rate / 2000.0),
            )
            if i == 0 and col_labels is not None:
                ax.set_title(col_labels[j], fontsize=9)
            if j == 0:
                ax.set_ylabel((row_labels[i] + "\n" if row_labels else "") + "kHz", fontsize=8)
            if i == n_rows - 1:
                ax.set_xlabel("s", fontsize=8)
            ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
