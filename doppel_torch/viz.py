"""Things people would rather hear or see: wav files and spectrogram pictures."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from doppel_torch.files import written_whole


def write_wav(path: str | Path, audio: torch.Tensor, sample_rate: int, subtype: str = "PCM_16") -> Path:
    """Write one mono sound (N,) as a wav, whole or not at all (a temporary file renamed over `path`): 16-bit PCM,
    values clipped to [-1, 1], or subtype="FLOAT" (32-bit float, unclipped). A failed write (a full disk: libsndfile
    says only "System error.") raises OSError and leaves no file behind."""
    import soundfile as sf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = audio.detach().to("cpu", torch.float32)
    if subtype != "FLOAT":
        data = data.clamp(-1.0, 1.0)
    try:
        with written_whole(path) as tmp:
            sf.write(str(tmp), data.numpy(), int(sample_rate), subtype=subtype, format="WAV")
    except sf.SoundFileError as err:
        raise OSError(errno.EIO, f"{str(err).rstrip('.')} writing {path.name} (is the disk full?)") from None
    return path


def log_spectrogram(audio: torch.Tensor, sample_rate: int, n_fft: int = 512, hop: int | None = None) -> np.ndarray:
    """dB magnitude spectrogram (freq, frames) of one sound (N,), for display."""
    hop = hop or n_fft // 4
    x = audio.detach().to("cpu", torch.float32)
    window = torch.hann_window(n_fft)
    spec = torch.stft(x, n_fft, hop_length=hop, window=window, return_complex=True).abs()
    return (20.0 * torch.log10(spec + 1e-5)).numpy()


def _title_and_colour_bar(fig, axes, image, title, label: str, *, fontsize: int, fraction: float, pad: float):
    """The figure's title, layout and one colour bar for every panel of a grid (image: the last panel drawn)."""
    if title:
        fig.suptitle(title, fontsize=fontsize + 2)
    fig.tight_layout()
    if image is not None:
        bar = fig.colorbar(image, ax=axes, fraction=fraction, pad=pad)
        bar.set_label(label, fontsize=fontsize)
        bar.ax.tick_params(labelsize=fontsize - 1)


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
    side (columns = views) and for delta sweeps (columns = deltas). Each panel shows 80 dB below its own peak;
    the colour bar reads in dB relative to that peak."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.2 * n_cols + 0.8, 1.9 * n_rows), squeeze=False, sharex=True,
                             sharey=True)
    image = None
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
            image = ax.imshow(
                spec - top, origin="lower", aspect="auto", cmap="magma", vmin=-80.0, vmax=0.0,
                extent=(0.0, duration, 0.0, sample_rate / 2000.0),
            )
            if i == 0 and col_labels is not None:
                ax.set_title(col_labels[j], fontsize=9)
            if j == 0:
                ax.set_ylabel((row_labels[i] + "\n" if row_labels else "") + "kHz", fontsize=8)
            if i == n_rows - 1:
                ax.set_xlabel("s", fontsize=8)
            ax.tick_params(labelsize=7)
    _title_and_colour_bar(fig, axes, image, title, "dB below the panel's peak (near-silent panels stay dark)",
                          fontsize=8, fraction=0.02, pad=0.01)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def logmel_grid_figure(
    mels: Sequence[Sequence[torch.Tensor]],
    *,
    hop_s: float,
    f_min: float,
    f_max: float,
    panel_titles: Sequence[Sequence[str]] | None = None,
    title: str | None = None,
):
    """A matplotlib figure of log-mel examples: mels[i][j] is one (frames, bands) log(mel + 0.01) example.

    Axes: time in seconds (frame k at k x hop_s) and mel band index (band 0 at f_min, the last at f_max); one
    colour scale for every panel, shown by a colour bar. The caller saves and closes the figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(mels), max(len(r) for r in mels)
    values = torch.cat([m.detach().float().cpu().flatten() for row in mels for m in row])
    vmin, vmax = float(values.min()), float(values.max())
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.4 * n_cols + 0.9, 2.2 * n_rows + 0.5), squeeze=False,
                             sharex=True, sharey=True)
    image = None
    for i, row in enumerate(mels):
        for j in range(n_cols):
            ax = axes[i][j]
            if j >= len(row):
                ax.axis("off")
                continue
            m = row[j].detach().float().cpu()
            n_frames, n_bands = m.shape
            image = ax.imshow(m.T.numpy(), origin="lower", aspect="auto", cmap="magma", vmin=vmin, vmax=vmax,
                              extent=(0.0, n_frames * hop_s, -0.5, n_bands - 0.5))
            if panel_titles is not None:
                ax.set_title(panel_titles[i][j], fontsize=8)
            if j == 0:
                ax.set_ylabel(f"mel band\n({f_min:g}-{f_max:g} Hz)", fontsize=7)
            if i == n_rows - 1:
                ax.set_xlabel("time (s)", fontsize=7)
            ax.tick_params(labelsize=6)
    _title_and_colour_bar(fig, axes, image, title, "log(mel + 0.01)", fontsize=7, fraction=0.03, pad=0.02)
    return fig
