"""LogMelFrontend against an independent float64 numpy VGGish log-mel; resample against torchaudio."""

import math

import numpy as np
import pytest
import torch

from doppel_torch.frontend import LogMelFrontend, Resample, resample


def numpy_vggish_log_mel(audio: np.ndarray, n_frames: int = 96) -> np.ndarray:
    """VGGish's recipe written from its description, float64: (B, N) -> (B, n_frames, 64)."""
    sr, win, hop, n_fft = 16000, 400, 160, 512
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)  # periodic Hann
    starts = np.arange(n_frames) * hop
    frames = np.stack([audio[:, s : s + win] for s in starts], axis=1)  # (B, T, 400)
    mag = np.abs(np.fft.rfft(frames * window, n=n_fft, axis=-1))  # (B, T, 257)

    def mel(f):
        return 1127.0 * np.log(1.0 + f / 700.0)

    n_bins = n_fft // 2 + 1
    bins_mel = mel(np.linspace(0.0, sr / 2, n_bins))
    edges = np.linspace(mel(125.0), mel(7500.0), 64 + 2)
    fb = np.zeros((n_bins, 64))
    for i in range(64):
        lo, c, hi = edges[i : i + 3]
        for k in range(n_bins):
            fb[k, i] = max(0.0, min((bins_mel[k] - lo) / (c - lo), (hi - bins_mel[k]) / (hi - c)))
    fb[0, :] = 0.0
    return np.log(mag @ fb + 0.01)


def _test_audio(batch: int, n: int, seed: int = 0) -> np.ndarray:
    """Tones, chirps and noise at several levels (peak <= 1)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    rows = []
    for b in range(batch):
        f0 = rng.uniform(50, 7000)
        x = 0.5 * np.sin(2 * np.pi * (f0 * t + rng.uniform(-2000, 2000) * t**2)) + 0.3 * rng.standard_normal(n)
        rows.append(x / np.abs(x).max() * rng.uniform(0.01, 1.0))
    return np.stack(rows)


@pytest.mark.parametrize("method", ["stft", "matmul"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_mel_matches_numpy_vggish(method, dtype):
    audio = _test_audio(5, 16000)
    expected = numpy_vggish_log_mel(audio)
    frontend = LogMelFrontend(method=method).to(dtype)
    out = frontend(torch.from_numpy(audio).to(dtype))
    assert out.shape == (5, 1, 96, 64) and out.dtype == dtype
    err = (out[:, 0].double().numpy() - expected).__abs__().max()
    assert err <= 1e-4, err


def test_log_mel_shape_attributes_and_length_rules():
    frontend = LogMelFrontend()
    assert frontend.n_frames == 96 and frontend.n_mels == 64 and frontend.n_samples == 15600
    assert frontend.filterbank.shape == (257, 64) and float(frontend.filterbank[0].abs().sum()) == 0.0
    assert "filterbank" in dict(frontend.named_buffers())
    x = torch.from_numpy(_test_audio(3, 20000)).float()
    # samples after the first 15,600 do not matter; the first ones do
    y = x.clone()
    y[:, 15600:] = 0.0
    torch.testing.assert_close(frontend(x), frontend(y), rtol=0, atol=0)
    y[:, 15599] += 0.5
    assert not torch.equal(frontend(x), frontend(y))
    with pytest.raises(ValueError, match="15600"):
        frontend(x[:, :15599])
    with pytest.raises(ValueError, match=r"\(batch, samples\)"):
        frontend(x[0])


def test_log_mel_batch_rows_are_independent():
    x = torch.from_numpy(_test_audio(4, 16000, seed=3)).float()
    frontend = LogMelFrontend()
    torch.testing.assert_close(frontend(x)[2:3], frontend(x[2:3]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("orig, new", [(44100, 16000), (48000, 16000), (8000, 16000), (22050, 16000), (16000, 44100)])
def test_resample_matches_torchaudio(orig, new):
    torchaudio_f = pytest.importorskip("torchaudio.functional")
    g = torch.Generator().manual_seed(orig)
    x = torch.randn(3, 2, orig // 4, generator=g, dtype=torch.float64)
    ours = resample(x, orig, new)
    theirs = torchaudio_f.resample(x, orig, new)
    assert ours.shape == theirs.shape == (3, 2, math.ceil(orig // 4 * new / orig))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)
    torch.testing.assert_close(Resample(orig, new)(x.float()), theirs.float(), rtol=0, atol=2e-5)


def test_resample_keeps_a_tone_and_removes_aliases():
    t = torch.arange(44100, dtype=torch.float64) / 44100
    tone = torch.sin(2 * math.pi * 1000 * t) + torch.sin(2 * math.pi * 12000 * t)  # 12 kHz is above 8 kHz
    y = resample(tone, 44100, 16000)
    spec = torch.fft.rfft(y[2000:14000] * torch.hann_window(12000, dtype=torch.float64)).abs()
    freqs = torch.fft.rfftfreq(12000, 1 / 16000)
    assert abs(float(freqs[spec.argmax()]) - 1000) < 2
    alias = spec[(freqs - 4000).abs() < 50].max()  # 12 kHz would fold to 4 kHz
    # a 6-zero-crossing Hann sinc attenuates the 12 kHz tone by ~55 dB (measured 1.8e-3): require > 46 dB
    assert alias < 5e-3 * spec.max()


def test_resample_rejects_bad_rates():
    with pytest.raises(ValueError, match="positive integers"):
        resample(torch.zeros(10), 0, 16000)
    with pytest.raises(ValueError, match="positive integers"):
        resample(torch.zeros(10), 44100.5, 16000)


def test_frontend_takes_an_empty_batch_and_refuses_integer_audio():
    """Batch 0 gives (0, 1, 96, 64) as the synth and pairs give empty batches (an MKL error before); integer audio
    is refused (read as raw sample values, 16-bit PCM came out 90 dB too loud)."""
    frontend = LogMelFrontend()
    assert frontend(torch.zeros(0, 16000)).shape == (0, 1, 96, 64)
    with pytest.raises(ValueError, match="floating point"):
        frontend(torch.zeros(2, 16000, dtype=torch.int16))
