"""The VGGish log-mel frontend, as an nn.Module with its window and filterbank as buffers.

Recipe (VGGish `waveform_to_examples`, used by the paper's code): 16 kHz audio, 25 ms periodic Hann
window (400 samples), 10 ms hop (160), 512-point FFT of each frame zero-padded at its end, no centering,
magnitude spectrum, 64 mel bands from 125 to 7500 Hz on the HTK scale (triangles built in mel, DC bin
zeroed), log(mel + 0.01), and the first 96 frames (0.96 s, VGGish's example length):
(B, N) -> (B, 1, 96, 64). Audio at other rates goes through `resample` first.
"""

from __future__ import annotations

import torch
from torch import nn

from doppel_torch import functional as F
from doppel_torch.functional import resample

__all__ = ["LogMelFrontend", "Resample", "resample"]


class LogMelFrontend(nn.Module):
    """VGGish log-mel spectrogram: audio (B, N) at `sample_rate` -> (B, 1, n_frames, n_mels).

    N must be at least (n_frames - 1) * hop + window samples (15,600 with the defaults); later samples
    are ignored, as VGGish keeps whole 0.96 s examples only. The computation runs in the buffers' dtype
    (float32 by default; `.double()` for float64), whatever the input dtype.

    method: "stft" (torch.stft) or "matmul" (frames times a windowed DFT basis); both give the same
    numbers, pick the faster one for the device (bench/test_frontend.py measures both).
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        window_s: float = 0.025,
        hop_s: float = 0.010,
        n_fft: int = 512,
        n_mels: int = 64,
        f_min: float = 125.0,
        f_max: float = 7500.0,
        n_frames: int = 96,
        log_offset: float = 0.01,
        method: str = "stft",
    ):
        super().__init__()
        if method not in ("stft", "matmul"):
            raise ValueError(f'method must be "stft" or "matmul", got {method!r}')
        self.sample_rate = int(sample_rate)
        self.win_length = int(round(window_s * sample_rate))
        self.hop_length = int(round(hop_s * sample_rate))
        if self.win_length > n_fft:
            raise ValueError(f"the window ({self.win_length} samples) must fit in n_fft={n_fft}: raise n_fft")
        self.n_fft = int(n_fft)
        self.n_mels = int(n_mels)
        self.n_frames = int(n_frames)
        self.log_offset = float(log_offset)
        self.method = method
        window = F.periodic_hann(self.win_length, dtype=torch.float32)
        self.register_buffer("window", window, persistent=False)
        self.register_buffer(
            "filterbank",
            F.vggish_mel_filterbank(n_fft, n_mels, sample_rate, f_min, f_max, dtype=torch.float32),
            persistent=False,
        )
        self.register_buffer("dft_basis", F.windowed_dft_basis(window, n_fft), persistent=False)

    @property
    def n_samples(self) -> int:
        """Samples one example needs: (n_frames - 1) * hop + window."""
        return F.frames_needed(self.n_frames, self.win_length, self.hop_length)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        if audio.ndim != 2:
            raise ValueError(f"audio must be (batch, samples), got shape {tuple(audio.shape)}")
        if not audio.is_floating_point():
            raise ValueError(f"audio must be floating point in [-1, 1], got {audio.dtype} (16-bit PCM: divide by "
                             "32768)")
        if audio.shape[0] == 0:
            return audio.new_zeros(0, 1, self.n_frames, self.n_mels, dtype=self.window.dtype)
        x = audio.to(self.window.dtype)
        mag = F.stft_magnitude(
            x, self.window, self.n_fft, self.hop_length, self.n_frames, method=self.method, dft_basis=self.dft_basis
        )
        return F.log_mel(mag, self.filterbank, self.log_offset)[:, None]

    def extra_repr(self) -> str:
        return (
            f"sample_rate={self.sample_rate}, win_length={self.win_length}, hop_length={self.hop_length}, "
            f"n_fft={self.n_fft}, n_mels={self.n_mels}, n_frames={self.n_frames}, method={self.method!r}"
        )


class Resample(nn.Module):
    """Band-limited resampling module, (..., N) at orig_freq -> (..., ceil(N new / orig)) at new_freq."""

    def __init__(self, orig_freq: int, new_freq: int = 16000, lowpass_filter_width: int = 6, rolloff: float = 0.99):
        super().__init__()
        self.orig_freq, self.new_freq = int(orig_freq), int(new_freq)
        self.lowpass_filter_width, self.rolloff = lowpass_filter_width, rolloff

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return resample(
            audio, self.orig_freq, self.new_freq, lowpass_filter_width=self.lowpass_filter_width, rolloff=self.rolloff
        )
