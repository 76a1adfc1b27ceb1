"""Stateless audio functions behind the frontend and the augmentation chain.

Everything here is batched over a leading dimension, runs on any device and keeps the input's dtype.
The modules in `doppel_torch.frontend` and `doppel_torch.augment` hold the buffers (window, filterbank,
impulse responses) and the random draws; these functions hold the math.
"""

from __future__ import annotations

import functools
import math

import torch

# ----------------------------------------------------------------------------------------------------
# Log-mel (VGGish recipe)
# ----------------------------------------------------------------------------------------------------


def hz_to_mel_htk(freq_hz: torch.Tensor) -> torch.Tensor:
    """HTK mel scale: 1127 ln(1 + f / 700)."""
    return 1127.0 * torch.log1p(freq_hz / 700.0)


def vggish_mel_filterbank(
    n_fft: int = 512,
    n_mels: int = 64,
    sample_rate: int = 16000,
    f_min: float = 125.0,
    f_max: float = 7500.0,
    *,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """VGGish's mel matrix (n_fft // 2 + 1, n_mels): triangles built on the HTK mel axis, DC bin zeroed.

    The triangles are linear in mel (not in Hz), unnormalised, with band edges equally spaced in mel
    between f_min and f_max, as `mel_features.spectrogram_to_mel_matrix` of the VGGish code.
    """
    nyquist = sample_rate / 2.0
    if not 0.0 <= f_min < f_max <= nyquist:
        raise ValueError(f"need 0 <= f_min < f_max <= sample_rate / 2, got f_min={f_min}, f_max={f_max}")
    n_bins = n_fft // 2 + 1
    bins_mel = hz_to_mel_htk(torch.linspace(0.0, nyquist, n_bins, dtype=torch.float64))
    edges = torch.linspace(
        hz_to_mel_htk(torch.tensor(f_min, dtype=torch.float64)).item(),
        hz_to_mel_htk(torch.tensor(f_max, dtype=torch.float64)).item(),
        n_mels + 2,
        dtype=torch.float64,
    )
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel[:, None] - lower) / (center - lower)
    falling = (upper - bins_mel[:, None]) / (upper - center)
    weights = torch.clamp(torch.minimum(rising, falling), min=0.0)
    weights[0, :] = 0.0  # VGGish zeroes the DC bin
    return weights.to(dtype)


def periodic_hann(length: int, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """0.5 - 0.5 cos(2 pi n / length), n = 0 .. length - 1 (VGGish's periodic Hann)."""
    n = torch.arange(length, dtype=torch.float64)
    return (0.5 - 0.5 * torch.cos(2.0 * math.pi * n / length)).to(dtype)


def frames_needed(n_frames: int, win_length: int, hop_length: int) -> int:
    """Samples needed for `n_frames` full frames without centering."""
    return (n_frames - 1) * hop_length + win_length


def stft_magnitude(
    audio: torch.Tensor,
    window: torch.Tensor,
    n_fft: int,
    hop_length: int,
    n_frames: int,
    *,
    method: str = "stft",
    dft_basis: torch.Tensor | None = None,
) -> torch.Tensor:
    """|rfft(frame * window, n_fft)| of the first `n_frames` frames: (B, N) -> (B, n_frames, n_fft // 2 + 1).

    Frame t covers samples [t * hop, t * hop + win_length) (no centering), zero-padded at its end to
    n_fft, as VGGish frames it. `method="stft"` uses `torch.stft`; `method="matmul"` multiplies the
    frames by a windowed DFT basis (win_length, 2 * (n_fft // 2 + 1)) = [cos | -sin], `dft_basis`.
    """
    win_length = window.shape[-1]
    if win_length > n_fft:
        raise ValueError(f"window ({win_length} samples) is longer than n_fft ({n_fft})")
    needed = frames_needed(n_frames, win_length, hop_length)
    if audio.shape[-1] < needed:
        raise ValueError(
            f"audio has {audio.shape[-1]} samples, {n_frames} frames need {needed}: pad or resample it first"
        )
    audio = audio[..., :needed]
    if method == "stft":
        # torch.stft centres a short window inside the n_fft frame; shifting the signal right by that
        # offset puts frame t back at [t * hop, t * hop + win_length). Magnitudes ignore the phase shift.
        offset = (n_fft - win_length) // 2
        padded = torch.nn.functional.pad(audio, (offset, n_fft - win_length - offset))
        spec = torch.stft(
            padded,
            n_fft,
            hop_length=hop_length,
            win_length=win_length,
            window=window,
            center=False,
            return_complex=True,
        )
        return spec.abs().transpose(-1, -2)
    if method == "matmul":
        if dft_basis is None:
            raise ValueError('method="matmul" needs dft_basis (see windowed_dft_basis)')
        frames = audio.unfold(-1, win_length, hop_length)  # (B, n_frames, win_length)
        reim = frames @ dft_basis
        n_bins = dft_basis.shape[-1] // 2
        return torch.sqrt(reim[..., :n_bins] ** 2 + reim[..., n_bins:] ** 2)
    raise ValueError(f'method must be "stft" or "matmul", got {method!r}')


def windowed_dft_basis(window: torch.Tensor, n_fft: int) -> torch.Tensor:
    """(win_length, 2 * (n_fft // 2 + 1)) real basis [w cos | -w sin] of the zero-padded DFT."""
    win_length = window.shape[-1]
    n = torch.arange(win_length, dtype=torch.float64)[:, None]
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[None, :]
    angle = 2.0 * math.pi * torch.remainder(n * k, n_fft) / n_fft
    w = window.to(torch.float64)[:, None]
    return torch.cat([w * torch.cos(angle), -w * torch.sin(angle)], dim=1).to(window.dtype)


def log_mel(magnitude: torch.Tensor, filterbank: torch.Tensor, log_offset: float = 0.01) -> torch.Tensor:
    """log(magnitude @ filterbank + log_offset): (..., n_bins) -> (..., n_mels)."""
    return torch.log(magnitude @ filterbank + log_offset)


# ----------------------------------------------------------------------------------------------------
# Resampling (band-limited, windowed sinc, polyphase)
# ----------------------------------------------------------------------------------------------------


def resample(
    audio: torch.Tensor,
    orig_freq: int,
    new_freq: int,
    *,
    lowpass_filter_width: int = 6,
    rolloff: float = 0.99,
) -> torch.Tensor:
    """Resample the last dimension from `orig_freq` to `new_freq` Hz: (..., N) -> (..., ceil(N new / orig)).

    Hann-windowed sinc interpolation with cutoff rolloff * min(orig, new) / 2 and `lowpass_filter_width`
    zero crossings on each side, computed as one strided convolution with new / gcd polyphase kernels.
    These are the defaults and the kernel of `torchaudio.functional.resample` (sinc_interp_hann), which
    the tests compare against; torchaudio is not needed here.
    """
    if int(orig_freq) != orig_freq or int(new_freq) != new_freq or orig_freq <= 0 or new_freq <= 0:
        raise ValueError(f"sample rates must be positive integers, got {orig_freq} and {new_freq}")
    if not 0.0 < rolloff <= 1.0:
        raise ValueError(f"rolloff must be in (0, 1], got {rolloff}")
    if orig_freq == new_freq:
        return audio
    g = math.gcd(int(orig_freq), int(new_freq))
    orig, new = int(orig_freq) // g, int(new_freq) // g
    if audio.numel() == 0:  # no samples, or no rows: the resampled shape, with nothing in it
        return audio.new_zeros(*audio.shape[:-1], math.ceil(new * audio.shape[-1] / orig))
    kernels, width = _sinc_resample_kernels(orig, new, lowpass_filter_width, rolloff, audio.dtype, audio.device)
    shape = audio.shape
    n = shape[-1]
    x = audio.reshape(-1, 1, n)
    x = torch.nn.functional.pad(x, (width, width + orig))
    y = torch.nn.functional.conv1d(x, kernels, stride=orig)  # (M, new, frames)
    y = y.transpose(1, 2).reshape(x.shape[0], -1)
    n_out = math.ceil(new * n / orig)
    return y[:, :n_out].reshape(*shape[:-1], n_out)


def _sinc_resample_kernels(orig: int, new: int, zeros: int, rolloff: float, dtype, device):
    """Polyphase kernels (new, 1, 2 * width + orig) for the reduced ratio orig -> new."""
    base_freq = min(orig, new) * rolloff
    width = math.ceil(zeros * orig / base_freq)
    taps = torch.arange(-width, width + orig, dtype=torch.float64, device=device) / orig
    phase = -torch.arange(new, dtype=torch.float64, device=device)[:, None] / new
    t = (phase + taps) * base_freq
    t = t.clamp(-zeros, zeros)
    window = torch.cos(t * math.pi / zeros / 2.0) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / torch.where(t == 0, torch.ones_like(t), t))
    kernels = sinc * window * (base_freq / orig)
    return kernels[:, None, :].to(dtype), width


# ----------------------------------------------------------------------------------------------------
# Filtering and convolution
# ----------------------------------------------------------------------------------------------------


def next_fast_len(size: int) -> int:
    """Smallest n >= size whose prime factors are 2, 3 and 5 (fast FFT sizes)."""
    n = max(int(size), 1)
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def lowpass_half_size(cutoff: torch.Tensor | float, zeros: float = 8.0) -> torch.Tensor:
    """Half length int(zeros / cutoff / 2) of the windowed-sinc low-pass for cutoff = f / sample_rate."""
    cutoff = torch.as_tensor(cutoff, dtype=torch.float64)
    return torch.floor(zeros / cutoff / 2.0).to(torch.int64)


def lowpass_filters(cutoff: torch.Tensor, half_size: int, zeros: float = 8.0, *, dtype=None) -> torch.Tensor:
    """Per-example windowed-sinc low-pass FIRs on a common grid: (B,) -> (B, 2 * half_size + 1).

    Example b is the symmetric filter of `julius.lowpass_filter(x, cutoff[b], zeros=zeros)`:
    h[t] = 2 c hann(t) sinc(2 pi c t) / sum, |t| <= H_b = int(zeros / c / 2), with a symmetric Hann of
    2 H_b + 1 taps; taps beyond H_b are zero so every example shares the grid |t| <= half_size.
    `half_size` must be >= max_b H_b (use `lowpass_half_size` of the smallest possible cutoff, so the
    shape does not depend on the draw). Built in `dtype` (default cutoff's), as julius builds in float32.
    """
    dtype = dtype or cutoff.dtype
    h_b = lowpass_half_size(cutoff, zeros).to(cutoff.device)[:, None].to(dtype)
    c = cutoff.to(dtype)[:, None]
    t = torch.arange(-half_size, half_size + 1, device=cutoff.device, dtype=dtype)[None, :]
    window = torch.where(t.abs() <= h_b, 0.5 + 0.5 * torch.cos(math.pi * t / h_b.clamp(min=1)), torch.zeros_like(t))
    h = 2.0 * c * window * torch.sinc(2.0 * c * t)  # torch.sinc(v) = sin(pi v) / (pi v)
    return h / h.sum(dim=1, keepdim=True)


DIRECT_FIR_TAPS = 129  # fir_filter convolves directly up to this many taps, by FFT beyond


def fir_filter(audio: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """Per-example zero-phase FIR filtering with replicate padding: (B, N), (B, 2H + 1) -> (B, N).

    out[b, n] = sum_t filters[b, t + H] x_rep[b, n + t], where x_rep extends x by repeating its edge
    samples (julius's padding). Computed by one grouped convolution for short filters (<= DIRECT_FIR_TAPS),
    by one batched FFT convolution beyond.
    """
    half = (filters.shape[-1] - 1) // 2
    b, n = audio.shape
    if filters.shape[-1] <= DIRECT_FIR_TAPS:
        # short filters (the low-pass: <= 107 taps) as one grouped convolution, a row per group. 50 rows,
        # 107 taps, 1 thread: predicted ~1.3x over the three 16200-point FFTs; measured 1.45x (8.5 -> 5.8 ms;
        # 100 rows, busier machine: 23 -> 14 ms)
        padded = audio.new_empty(1, b, n + 2 * half)
        padded[0, :, :half] = audio[:, :1]
        padded[0, :, half : half + n] = audio
        padded[0, :, half + n :] = audio[:, -1:]
        weight = filters.to(audio.dtype).flip(-1)[:, None, :]  # conv1d correlates; flip for a convolution
        return torch.nn.functional.conv1d(padded, weight, groups=b)[0]
    # A circular convolution of N + 2H points suffices: outputs 2H .. 2H + N - 1 never wrap around.
    size = next_fast_len(n + 2 * half)
    # the replicate-padded signal written straight into the zero-padded FFT buffer: replication_pad1d and
    # rfft's own zero padding cost two more passes (HPF, 100 rows, 1 thread: ~6 ms of ~55)
    padded = audio.new_empty(b, size)
    padded[:, :half] = audio[:, :1]
    padded[:, half : half + n] = audio
    padded[:, half + n : 2 * half + n] = audio[:, -1:]
    padded[:, 2 * half + n :] = 0.0
    spec = torch.fft.rfft(padded) * torch.fft.rfft(filters.to(audio.dtype), n=size)
    return torch.fft.irfft(spec, n=size)[..., 2 * half : 2 * half + n]


def fft_convolve(x: torch.Tensor, h: torch.Tensor, n_out: int | None = None) -> torch.Tensor:
    """Linear convolution along the last dimension via FFT (broadcasting batch dims).

    Returns the first `n_out` samples of the full convolution (default: all of len(x) + len(h) - 1).
    """
    n_full = x.shape[-1] + h.shape[-1] - 1
    n_out = n_full if n_out is None else n_out
    size = next_fast_len(n_full)
    y = torch.fft.irfft(torch.fft.rfft(x, n=size) * torch.fft.rfft(h, n=size), n=size)
    return y[..., :n_out]


def lowpass(audio: torch.Tensor, cutoff_hz: torch.Tensor, sample_rate: int, half_size: int | None = None) -> torch.Tensor:
    """Per-example windowed-sinc low-pass (julius / torch-audiomentations LowPassFilter): (B, N) -> (B, N)."""
    cutoff = _cutoff_fraction(cutoff_hz, sample_rate, audio.shape[0])
    if half_size is None:
        half_size = int(lowpass_half_size(cutoff.min()).item())
    elif cutoff.device.type == "cpu" and int(lowpass_half_size(cutoff.min())) > half_size:  # no device sync
        raise ValueError(
            f"half_size={half_size} is too short for a {float(cutoff.min()) * sample_rate:.4g} Hz cutoff "
            f"(needs {int(lowpass_half_size(cutoff.min()))}): pass lowpass_half_size(lowest cutoff / sample_rate)"
        )
    return fir_filter(audio, lowpass_filters(cutoff, half_size, dtype=audio.dtype))


def lowpass_grouped(
    audio: torch.Tensor,
    cutoff_hz: torch.Tensor,
    sample_rate: int,
    half_size: int,
    caps: tuple[int, ...] = (160, 400, 1000),
) -> torch.Tensor:
    """`lowpass` with rows grouped by their own filter length, each group on a shorter grid: (B, N) -> (B, N).

    A row whose half length int(8 / c / 2) is at most caps[i] (first such i, else `half_size`) is filtered
    on the grid |t| <= that cap with FFT size next_fast_len(N + 2 cap). The grid depends on the row's own
    cutoff only, so a row's result does not depend on the batch; it equals `lowpass` up to FFT rounding
    (taps past a row's half length are zero on any grid). Group sizes are data-dependent shapes (a host
    synchronisation): meant for CPU. For the chain's high-pass (20-800 Hz drawn uniformly in mel, half
    lengths 80-3200), ~46 / 31 / 16 / 8 % of the rows fall in the four groups, FFT sizes 16384 / 16875 /
    18000 / 22500 instead of 22500 for all, and filters ~10x shorter for most rows. 100 rows, 1 thread,
    busy machine: predicted ~1.5x; measured 1.5x (min 79 -> 51 ms, medians 91 -> 56 ms).
    """
    cutoff = _cutoff_fraction(cutoff_hz, sample_rate, audio.shape[0])
    halves = lowpass_half_size(cutoff)
    if int(halves.max()) > half_size:
        raise ValueError(
            f"half_size={half_size} is too short for a {float(cutoff.min()) * sample_rate:.4g} Hz cutoff "
            f"(needs {int(halves.max())}): pass lowpass_half_size(lowest cutoff / sample_rate)"
        )
    bounds = sorted({c for c in caps if c < half_size} | {half_size})
    group = torch.bucketize(halves, torch.tensor(bounds, dtype=halves.dtype))  # first cap >= half length
    present = group.unique().tolist()
    if len(present) == 1:  # one group: no gathering and scattering of rows
        return fir_filter(audio, lowpass_filters(cutoff, bounds[present[0]], dtype=audio.dtype))
    out = torch.empty_like(audio)
    for g in present:
        rows = (group == g).nonzero().flatten()
        out[rows] = fir_filter(audio[rows], lowpass_filters(cutoff[rows], bounds[g], dtype=audio.dtype))
    return out


def highpass_grouped(
    audio: torch.Tensor, cutoff_hz: torch.Tensor, sample_rate: int, half_size: int, caps: tuple[int, ...] = (160, 400, 1000)
) -> torch.Tensor:
    """`highpass` computed by `lowpass_grouped` (CPU; see there)."""
    return audio - lowpass_grouped(audio, cutoff_hz, sample_rate, half_size, caps)


def highpass(audio: torch.Tensor, cutoff_hz: torch.Tensor, sample_rate: int, half_size: int | None = None) -> torch.Tensor:
    """Per-example high-pass x - lowpass(x) (torch-audiomentations HighPassFilter): (B, N) -> (B, N)."""
    return audio - lowpass(audio, cutoff_hz, sample_rate, half_size)


def _cutoff_fraction(cutoff_hz, sample_rate: int, batch: int) -> torch.Tensor:
    c = torch.as_tensor(cutoff_hz)
    if c.ndim == 0:
        c = c.expand(batch)
    if c.shape != (batch,):
        raise ValueError(f"cutoff_hz must be a scalar or have shape ({batch},), got {tuple(c.shape)}")
    # the fraction is formed in float32, as torch-audiomentations does, so the FIR lengths int(8 / c / 2) agree
    c = (c.float() / sample_rate).double()
    if c.device.type == "cpu" and bool(((c <= 0) | (c > 0.5)).any()):  # checked where it costs no device sync
        raise ValueError(f"cutoffs must lie in (0, sample_rate / 2] = (0, {sample_rate / 2}] Hz")
    return c


def roll(audio: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Per-example circular shift: out[b, n] = x[b, (n - shifts[b]) mod N] (torch.roll per row).

    Row b is the window [(-shifts[b]) mod N, + N) of [x_b, x_b], picked from an unfold view of the doubled
    rows, so the copy moves whole rows and no (B, N) int64 index is built. 100 rows, 1 thread, busy machine:
    predicted ~5x over a gather; measured 7x (29 -> 4.1 ms).
    """
    b, n = audio.shape
    doubled = torch.cat([audio, audio], dim=1)
    start = torch.remainder(-shifts.to(audio.device).long(), n)
    return doubled.unfold(1, n, 1)[torch.arange(b, device=audio.device), start]


# ----------------------------------------------------------------------------------------------------
# Pitch shift (phase vocoder in the frequency domain)
# ----------------------------------------------------------------------------------------------------


def in_row_blocks(fn, rows: int, *tensors: torch.Tensor) -> torch.Tensor:
    """fn(*blocks) over consecutive blocks of `rows` rows of tensors (same first dimension), concatenated.

    For per-row transforms on CPU that make many passes over their data: blocks small enough to stay in cache
    run faster than one pass over the whole batch (see PITCH_CPU_ROWS, augment.REVERB_CPU_ROWS). A row's
    result must not depend on its block.
    """
    b = tensors[0].shape[0]
    if b <= rows:
        return fn(*tensors)
    return torch.cat([fn(*(t[i : i + rows] for t in tensors)) for i in range(0, b, rows)])


# On CPU the pitch shifter runs PITCH_CPU_ROWS rows at a time, so that its ~20 passes over (rows, 63 frames, 513
# bins) work on ~1 MB tensors that stay in cache. 52 rows, 2 threads, idle machine, 21 interleaved runs:
# predicted ~1.3x; measured min 51 -> 36 ms, median 61 -> 42 ms (4 rows: 47 / 59 ms; 16 rows: 40 / 44 ms).
PITCH_CPU_ROWS = 8


def pitch_shift(
    audio: torch.Tensor,
    semitones: torch.Tensor,
    *,
    n_fft: int = 1024,
    hop_length: int = 256,
) -> torch.Tensor:
    """Per-example pitch shift by `semitones` (B,) without changing duration: (B, N) -> (B, N).

    A phase vocoder that scales frequencies directly: with r = 2^(semitones / 12), output bin j takes
    the magnitude of source bin j / r (linear interpolation) and r times the instantaneous frequency of
    the nearest source bin; output phases are the running sum of those frequencies. One STFT, a few
    gathers and one iSTFT for the whole batch (Hann window, 75 % overlap, frames as `torch.stft` /
    `torch.istft` with center=True), no resampling, so every example may have its own ratio. r = 1
    reconstructs the input up to rounding.

    Layout (B, frames, bins) throughout, so the FFTs run along contiguous rows and nothing is transposed;
    real and imaginary parts are split once (atan2 / hypot of strided views and the complex abs / angle /
    polar kernels run 2-5x slower); per-bin work (ratios, source bins, weights) stays on (B, bins) tables;
    the phase deviation is wrapped by one remainder; the iSTFT is an irfft plus a reshaped overlap-add
    with a cached envelope instead of torch.istft's fold. CPU, 100 sounds, 1 thread, busy machine, 15
    interleaved runs: predicted ~2x (half the full-size passes); measured 1.5x, min 176 -> 117 ms
    (medians 211 -> 142 ms): the FFTs (~30 ms), three gathers (~15 ms), atan2, hypot, cos and sin remain.
    Outputs differ from that earlier version where a phase deviation sits at +-pi (either wrap is valid; a
    1e-7 perturbation of the input flips such bins in both versions alike).
    """
    b, n = audio.shape
    dtype, device = audio.dtype, audio.device
    if n_fft % hop_length:
        raise ValueError(f"n_fft ({n_fft}) must be a multiple of hop_length ({hop_length})")
    if device.type == "cpu" and b > PITCH_CPU_ROWS:
        return in_row_blocks(lambda x, s: pitch_shift(x, s, n_fft=n_fft, hop_length=hop_length), PITCH_CPU_ROWS,
                             audio, torch.as_tensor(semitones).expand(b))
    pad = n_fft // 2
    if n <= pad:
        raise ValueError(f"audio has {n} samples; pitch_shift needs more than n_fft // 2 = {pad}")
    n_frames = 1 + n // hop_length
    window, inv_envelope = _ola_tables(n_fft, hop_length, n_frames, dtype, device)
    padded = _reflect_pad(audio, pad)
    spec = torch.fft.rfft(padded.unfold(-1, n_fft, hop_length) * window, dim=-1)  # (B, T, K)
    n_bins = spec.shape[-1]

    # per-bin tables (B, K)
    two_pi = 2.0 * math.pi
    k = torch.arange(n_bins, device=device, dtype=dtype)
    expected = two_pi * hop_length * k / n_fft
    ratio = torch.pow(2.0, semitones.to(device=device, dtype=dtype) / 12.0)[:, None]
    src = k[None, :] / ratio
    valid = src <= n_bins - 1
    lo = src.floor().long().clamp(max=n_bins - 1)
    hi = (lo + 1).clamp(max=n_bins - 1)
    frac = torch.where(valid, src - lo.to(dtype), torch.zeros((), dtype=dtype, device=device))
    w_lo, w_hi = ((1.0 - frac) * valid)[:, None, :], (frac * valid)[:, None, :]
    nearest = src.round().long().clamp(max=n_bins - 1)
    expected_n = expected[nearest].double()
    shift_n = torch.remainder(expected_n - math.pi, two_pi).to(dtype)[:, None, :]  # e - pi, reduced
    # increment r (e + deviation) with deviation = w - pi, w = remainder(d - e + pi, 2 pi) in [0, 2 pi):
    # r w + base, base = (r e mod 2 pi) - r pi, so the running sum stays below ~2 pi r T (float32 exact to ~1e-5)
    base = (torch.remainder(ratio.double() * expected_n, two_pi) - ratio.double() * math.pi).to(dtype)[:, None, :]

    def take(v, bins):  # v (B, T', K), bins (B, K) -> v[b, t, bins[b, j]]
        return torch.gather(v, 2, bins[:, None, :].expand(b, v.shape[1], n_bins))

    # real and imaginary parts split once into contiguous tensors: atan2 / hypot of strided views, and the
    # complex abs / angle / polar kernels, run 2-5x slower
    flat = torch.view_as_real(spec).reshape(-1)
    re = flat[0::2].contiguous().view(spec.shape)
    im = flat[1::2].contiguous().view(spec.shape)
    mag = torch.hypot(re, im)
    mag_out = torch.addcmul(take(mag, lo) * w_lo, take(mag, hi), w_hi)
    del mag
    phase_n = take(torch.atan2(im, re), nearest)
    del re, im
    phase = torch.empty(b, n_frames, n_bins, dtype=dtype, device=device)
    # torch.stft frames start at the window's edge, which adds pi k to bin k's phase; a sinusoid's main-lobe
    # bins are in phase only once that is removed. Moving bin k to bin j therefore adds pi (j - k): without
    # it, neighbouring output bins of one partial cancel (measured -15 dB on a 220 Hz tone at -2 semitones).
    phase[:, :1] = phase_n[:, :1] + (math.pi * (k[None, :] - nearest.to(dtype)))[:, None, :]
    # deviation from the expected advance, wrapped to [-pi, pi): remainder(d - e + pi, 2 pi) - pi
    dev = torch.sub(phase_n[:, 1:], phase_n[:, :-1], out=phase[:, 1:])
    dev.sub_(shift_n).remainder_(two_pi)
    torch.addcmul(base, dev, ratio[:, None, :], out=dev)
    torch.cumsum(phase, dim=1, out=phase)
    real = torch.empty(b, n_frames, n_bins, 2, dtype=dtype, device=device)
    torch.mul(mag_out, torch.cos(phase), out=real[..., 0])
    torch.mul(mag_out, torch.sin(phase, out=phase), out=real[..., 1])
    frames = torch.fft.irfft(torch.view_as_complex(real), n=n_fft, dim=-1)  # (B, T, n_fft)

    # windowed overlap-add: frame t covers hops t .. t + R - 1 of the padded signal
    r = n_fft // hop_length
    frames = frames.view(b, n_frames, r, hop_length)
    segments = window.view(r, hop_length)
    ola = torch.zeros(b, n_frames + r - 1, hop_length, dtype=dtype, device=device)
    for i in range(r):
        ola[:, i : i + n_frames].addcmul_(frames[:, :, i], segments[i])
    ola = ola.view(b, -1)[:, pad : pad + n]
    out = ola * inv_envelope[: ola.shape[1]]
    if out.shape[1] < n:  # as torch.istft with `length`: zeros past the last frame
        out = torch.nn.functional.pad(out, (0, n - out.shape[1]))
    return out


def _reflect_pad(audio: torch.Tensor, pad: int) -> torch.Tensor:
    """(B, N) -> (B, N + 2 pad), reflecting about the edge samples (F.pad mode="reflect", ~10x faster on CPU)."""
    b, n = audio.shape
    out = audio.new_empty(b, n + 2 * pad)
    out[:, pad : pad + n] = audio
    out[:, :pad] = audio[:, 1 : pad + 1].flip(-1)
    out[:, pad + n :] = audio[:, n - pad - 1 : n - 1].flip(-1)
    return out


@functools.lru_cache(maxsize=16)
def _ola_tables(n_fft: int, hop_length: int, n_frames: int, dtype, device):
    """Periodic Hann window (n_fft,) and 1 / sum of squared shifted windows over the output (torch.istft's)."""
    window = torch.hann_window(n_fft, dtype=torch.float64)
    r = n_fft // hop_length
    env = torch.zeros(n_frames + r - 1, hop_length, dtype=torch.float64)
    for i, w in enumerate((window**2).view(r, hop_length)):
        env[i : i + n_frames] += w
    env = env.reshape(-1)[n_fft // 2 :]  # the signal's samples and, as torch.istft's `length`, the tail
    if bool((env < 1e-11).any()):
        raise ValueError(f"a Hann window of {n_fft} with hop {hop_length} does not overlap-add to a usable envelope")
    return window.to(dtype=dtype, device=device), (1.0 / env).to(dtype=dtype, device=device)
