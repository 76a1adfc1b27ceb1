"""HEAR-compatible API (Turian et al., 2022), so the HEAR evaluation kit can call a doppel-torch encoder:

    hear-validator doppel_torch.eval.hear --model runs/exp/last.pt
    python -m heareval.embeddings.runner doppel_torch.eval.hear --model runs/exp/last.pt

`load_model(path)` takes a `doppel-torch train` checkpoint (file or run folder) or the string ``"random"``
(the random-init baseline). Audio passed to the other functions is (n_sounds, n_samples) float at
`model.sample_rate` = 16 kHz on the model's device; outputs are on the same device.
Scene embeddings are the clip embeddings of `Embedder.embed` (0.96 s examples, mean-pooled); timestamp
embeddings are one example centred on every multiple of `TIMESTAMP_HOP_MS` (50 ms, the HEAR kit's
recommended maximum for event tasks), zero-padded at the clip's edges.
"""

from __future__ import annotations

import torch
from torch import nn

from doppel_torch.eval.embed import SAMPLE_RATE, Embedder

TIMESTAMP_HOP_MS = 50.0


class HearModel(nn.Module):
    """An `Embedder` with the attributes the HEAR API requires."""

    def __init__(self, embedder: Embedder):
        super().__init__()
        self.embedder = embedder
        self.sample_rate = SAMPLE_RATE
        self.scene_embedding_size = embedder.embedding_size
        self.timestamp_embedding_size = embedder.embedding_size


WINDOW_CHUNK = 256  # timestamp windows embedded per call (~16 MB of audio)


def load_model(model_file_path: str = "", device: str | torch.device | None = None) -> HearModel:
    """A checkpoint path (or ``"random"``) -> HearModel in eval mode, on CUDA when available."""
    if not model_file_path:
        raise ValueError('load_model needs a doppel-torch checkpoint path (or "random" for the random-init baseline)')
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r}, but this torch sees no CUDA device: pass device='cpu' (or leave "
                         "device out)")
    if model_file_path == "random":
        embedder = Embedder.random_init(0, device=device)
    else:
        embedder = Embedder.from_checkpoint(model_file_path, device=device)
    return HearModel(embedder).eval()


def _check(audio: torch.Tensor, model: HearModel) -> None:
    if not isinstance(model, HearModel):
        raise TypeError(f"model must come from doppel_torch.eval.hear.load_model, got {type(model).__name__}")
    if not isinstance(audio, torch.Tensor):
        raise TypeError(f"audio must be a torch.Tensor (n_sounds, n_samples) at {model.sample_rate} Hz, got "
                        f"{type(audio).__name__} (torch.as_tensor(audio) makes one)")
    if audio.ndim != 2:
        raise ValueError(f"audio must be (n_sounds, n_samples) at {model.sample_rate} Hz, got {tuple(audio.shape)}")
    if not bool(torch.isfinite(audio).all()):  # every embedding of such a sound would be NaN, without a word
        raise ValueError("audio holds NaN or infinite samples: clean or drop those sounds first")


@torch.no_grad()
def get_scene_embeddings(audio: torch.Tensor, model: HearModel) -> torch.Tensor:
    """(n_sounds, n_samples) at 16 kHz -> (n_sounds, scene_embedding_size). Clips of no samples are embedded as
    silence, as get_timestamp_embeddings pads them (it refused them)."""
    _check(audio, model)
    if audio.shape[0] == 0:
        return audio.new_zeros(0, model.scene_embedding_size)
    if audio.shape[1] == 0:
        audio = audio.new_zeros(audio.shape[0], 1)
    return model.embedder.embed(audio, SAMPLE_RATE).to(audio.device)


@torch.no_grad()
def get_timestamp_embeddings(audio: torch.Tensor, model: HearModel) -> tuple[torch.Tensor, torch.Tensor]:
    """(n_sounds, n_samples) at 16 kHz -> (embeddings (n_sounds, n_timestamps, D), timestamps (n_sounds,
    n_timestamps) in ms). Timestamp k is k * 50 ms for k = 0 .. floor(n_samples / hop); its embedding is the
    0.975 s example centred on it."""
    _check(audio, model)
    emb = model.embedder
    hop = int(round(TIMESTAMP_HOP_MS * SAMPLE_RATE / 1000))
    n_sounds, n = audio.shape
    n_ts = n // hop + 1
    if n_sounds == 0:
        ts = torch.zeros(0, n_ts, dtype=torch.float32, device=audio.device)
        return audio.new_zeros(0, n_ts, model.timestamp_embedding_size, dtype=torch.float32), ts
    emb_dim = model.timestamp_embedding_size
    half = emb.window // 2
    need = (n_ts - 1) * hop + emb.window
    padded = torch.nn.functional.pad(audio.float(), (half, max(0, need - half - n)))
    windows = padded.unfold(-1, emb.window, hop)[:, :n_ts]  # (n_sounds, n_ts, window): a view, no copy
    # about WINDOW_CHUNK windows at a time, every sound's timestamps a..a+step in one call: the windows of 4 sounds
    # of 60 s copied whole took ~350 MB
    step = max(1, WINDOW_CHUNK // n_sounds)
    out = torch.cat([emb.embed_windows(windows[:, a : a + step].reshape(-1, emb.window)).reshape(n_sounds, -1, emb_dim)
                     for a in range(0, n_ts, step)], dim=1)
    ts = torch.arange(n_ts, dtype=torch.float32) * TIMESTAMP_HOP_MS
    return out.to(audio.device), ts.expand(n_sounds, n_ts).to(audio.device)
