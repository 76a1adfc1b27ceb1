"""The spectral loss's per-bin passes in the native library, for CPU tensors (doppel_torch/matching/loss.py calls them
where `available()`; the math, and why: csrc/spectral_cpu.inc). Each takes contiguous float32 / float64 tensors of
one dtype (complex spectra as their real view) and spreads the sounds over torch.get_num_threads() threads."""

from __future__ import annotations

import torch

from doppel_torch.backends.cpu.build import library

_available: bool | None = None


def available() -> bool:
    """Whether the native library loads here (built at first use; False without a C++ compiler)."""
    global _available
    if _available is None:
        try:
            library()
            _available = True
        except RuntimeError:
            _available = False
    return _available


def _check(code: int, what: str) -> None:
    if code != 0:
        raise RuntimeError(f"the native spectral loss failed in {what} (code {code}); this is a bug, please report it")


def magnitude(spectrum: torch.Tensor) -> torch.Tensor:
    """|S| of a complex (B, ...) spectrum with the rounding of `terms` (a target made by it scores its own sound 0)."""
    batch = spectrum.shape[0]
    out = torch.empty(spectrum.shape, dtype=spectrum.real.dtype)
    code = library().doppel_cpu_spectral_abs(
        torch.view_as_real(spectrum).data_ptr(), batch, spectrum[0].numel() if batch else 0,
        int(out.dtype == torch.float64), out.data_ptr(), torch.get_num_threads())
    _check(code, "its magnitudes")
    return out


def terms(spectrum: torch.Tensor, target: torch.Tensor, eps: float):
    """spectrum (B, frames, bins) complex; target (1 or B, frames, bins) magnitudes -> the per-sound sums of
    (|S| - T)^2 and |log((|S| + eps) / (T + eps))| (float64, (B,)) and the factors d_conv, d_log (B, frames, bins)."""
    batch = spectrum.shape[0]
    real = spectrum.real.dtype
    diff_sq = torch.empty(batch, dtype=torch.float64)
    log_abs = torch.empty(batch, dtype=torch.float64)
    d_conv = torch.empty(spectrum.shape, dtype=real)
    d_log = torch.empty(spectrum.shape, dtype=real)
    target = target.to(real).contiguous()
    code = library().doppel_cpu_spectral_terms(
        torch.view_as_real(spectrum).data_ptr(), target.data_ptr(), target.shape[0], batch,
        spectrum[0].numel() if batch else 0, int(real == torch.float64), eps, diff_sq.data_ptr(), log_abs.data_ptr(),
        d_conv.data_ptr(), d_log.data_ptr(), torch.get_num_threads())
    _check(code, "its forward")
    return diff_sq, log_abs, d_conv, d_log


def grad(spectrum: torch.Tensor, d_conv: torch.Tensor, d_log: torch.Tensor, w_conv: torch.Tensor,
         w_log: torch.Tensor) -> torch.Tensor:
    """d loss / d S = S (w_conv d_conv + w_log d_log) per sound (w_*: (B,) float64), the inner bins halved: the
    one-sided spectrum's gradient as the rfft's adjoint (an unnormalised irfft) wants it."""
    batch, frames, bins = spectrum.shape
    out = torch.empty_like(spectrum)
    w_conv, w_log = w_conv.to(torch.float64).contiguous(), w_log.to(torch.float64).contiguous()
    code = library().doppel_cpu_spectral_grad(
        torch.view_as_real(spectrum).data_ptr(), d_conv.data_ptr(), d_log.data_ptr(), w_conv.data_ptr(),
        w_log.data_ptr(), batch, frames, bins, int(d_conv.dtype == torch.float64), torch.view_as_real(out).data_ptr(),
        torch.get_num_threads())
    _check(code, "its backward")
    return out


def overlap_add(frames_grad: torch.Tensor, window: torch.Tensor, n_samples: int) -> torch.Tensor:
    """The adjoint of framing (pad n_fft / 2 each side, frames of n_fft every n_fft / 4, times window):
    frames_grad (B, frames, n_fft) -> (B, n_samples)."""
    batch, frames, n_fft = frames_grad.shape
    frames_grad, window = frames_grad.contiguous(), window.to(frames_grad.dtype).contiguous()
    out = frames_grad.new_empty(batch, n_samples)
    code = library().doppel_cpu_overlap_add(
        frames_grad.data_ptr(), window.data_ptr(), batch, frames, n_fft, n_samples,
        int(frames_grad.dtype == torch.float64), out.data_ptr(), torch.get_num_threads())
    _check(code, "its overlap-add")
    return out
