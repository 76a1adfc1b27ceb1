"""The backend contract, the registry and the one validation of render arguments.

One contract for all three backends:

    backend = get_backend("cpu")                      # "torch" | "triton" (options: phase_dtype) | "cpu"
    audio = render(backend, program, theta, noise=None, seed=0, indices=None, normalize=True, out=None)

`render` here validates once (shapes, dtypes, devices, values, gradients, `out`), clamps theta to [eps, 1] and
calls `backend.render(program, theta, noise=..., seed=..., indices=..., normalize=..., out=...)` with arguments
that are known to be sound: a backend never repeats these checks. It renders with autocast off: a synth is not a
layer whose precision autocast may lower (a bf16 modulation matrix moved torch-backend sounds by 2-140 % relative
L2); the audio is in theta's dtype, as without autocast. Every backend then returns the same thing:
(B, N) audio in theta's dtype on theta's device, written into `out` when given, each sound divided by its own
peak when that exceeds 1 (normalize=True), noise keyed by (seed, indices[b]) unless an explicit (B, N) or
(1, N) `noise` is given.
"""

from __future__ import annotations

import importlib
from contextlib import nullcontext

import torch
from torch.autograd import forward_ad

from doppel_torch import rng
from doppel_torch.spec.program import Program

BACKENDS = ("torch", "triton", "cpu")
_MODULES = {"torch": "doppel_torch.backends.torch", "triton": "doppel_torch.backends.triton",
            "cpu": "doppel_torch.backends.cpu"}


class Backend:
    """What every backend provides (subclassed by each backend package's `Backend`)."""

    name = ""
    differentiable = False  # False: a theta that requires grad is refused by `render` with one message for all
    transformable = False  # forward-mode AD and torch.func transforms (True: the torch reference, plain autograd ops)

    def check_available(self) -> None:
        """Raise RuntimeError saying why this backend cannot run here; return quietly when it can."""

    def check_device(self, device: torch.device) -> None:
        """Raise ValueError when this backend cannot render tensors on `device`."""

    def render(self, program: Program, theta: torch.Tensor, *, noise: torch.Tensor | None, seed: int,
               indices: torch.Tensor, normalize: bool, out: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError


def get_backend(name: str, **options) -> Backend:
    """The backend called `name`, configured with its options (triton: phase_dtype)."""
    if name not in _MODULES:
        raise ValueError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    return importlib.import_module(_MODULES[name]).Backend(**options)


# The backends in order of speed, per device type (README "Numbers": the fused kernels render 15-30x faster than
# the eager reference); `fastest` takes the first one that loads here.
FASTEST_FIRST = {"cpu": ("cpu", "torch"), "cuda": ("triton", "torch")}


def as_device(device) -> torch.device:
    """torch.device(device), or ValueError in one line for what names none (None, "nope")."""
    try:
        return torch.device(device)
    except (TypeError, RuntimeError):
        raise ValueError(f"device must be a torch device or its name (cpu, cuda, cuda:1), got {device!r}") from None


def fastest(device: torch.device | str = "cpu", *, differentiable: bool = False) -> str:
    """The fastest backend that loads for `device` (the cpu kernel builds or loads, Triton imports), in the order of
    `FASTEST_FIRST`; with `differentiable`, only one that says it is (`Backend.differentiable`); "torch" where none
    of the others can."""
    for name in FASTEST_FIRST.get(as_device(device).type, ("torch",)):
        backend = get_backend(name)
        if differentiable and not backend.differentiable:
            continue
        try:
            backend.check_available()
        except (RuntimeError, ImportError):
            continue
        return name
    return "torch"


def render(backend: Backend, program: Program, theta: torch.Tensor, *, noise: torch.Tensor | None = None,
           seed: int = 0, indices: torch.Tensor | None = None, normalize: bool = True,
           out: torch.Tensor | None = None, validate: bool = True) -> torch.Tensor:
    """Check every argument once, clamp theta to [eps, 1], and render with `backend` (see the module docstring).

    validate=False skips only the check of theta's values (min, max, NaN: one host synchronisation)."""
    m, n_samples = program.num_params, program.n_samples
    if not isinstance(theta, torch.Tensor):
        raise ValueError(f"theta must be a torch.Tensor of shape (batch, {m}), got {type(theta).__name__}")
    if theta.is_nested:
        raise ValueError(f"theta must be one dense (batch, {m}) tensor, got a nested one: torch.stack its rows")
    if theta.layout != torch.strided:
        raise ValueError(f"theta must be a dense (batch, {m}) tensor, got a {str(theta.layout).removeprefix('torch.')}"
                         " one: pass theta.to_dense()")
    if not torch.compiler.is_compiling() and any(theta.names):
        theta = theta.rename(None)  # named dimensions: the render's own are (batch, samples)
    if noise is not None and not isinstance(noise, torch.Tensor):
        raise ValueError(f"noise must be a torch.Tensor of shape (batch, {n_samples}) or (1, {n_samples}), got "
                         f"{type(noise).__name__}")
    if isinstance(normalize, torch.Tensor) or normalize not in (True, False):
        raise ValueError(f"normalize must be True or False, got {normalize!r}")
    if theta.dim() != 2 or theta.shape[1] != m:
        raise ValueError(f"theta must have shape (batch, {m}) for {program.patch.name}, got {tuple(theta.shape)}")
    if theta.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"theta must be float32 or float64, got {theta.dtype}: pass theta.float() (the audio "
                         "comes back in theta's dtype)")
    if theta.device.type == "meta":
        raise ValueError("theta is on the meta device, which holds no values to render: make it on a real device")
    backend.check_device(theta.device)
    wants_grad = theta.requires_grad or (isinstance(noise, torch.Tensor) and noise.requires_grad)
    if wants_grad and torch.is_grad_enabled() and not backend.differentiable:
        raise ValueError(f"backend='{backend.name}' is not differentiable yet: use backend='torch' or 'cpu' for "
                         "gradients, or pass theta.detach() and noise.detach() (or render under torch.no_grad()) to "
                         "render without them")
    compiling = torch.compiler.is_compiling()
    if not backend.transformable and not compiling:
        _refuse_transforms(backend, theta, noise)
    batch = theta.shape[0]
    # the values' checks are data-dependent: skipped where a tracer or vmap cannot branch on data (theta is clamped
    # all the same)
    if validate and batch and not compiling and not _is_batched(theta):
        values = theta.detach()
        if torch.isnan(values).any():
            raise ValueError("theta contains NaN")
        lo, hi = float(values.min()), float(values.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"theta must lie in [0, 1] (normalised parameters); got values in [{lo!r}, {hi!r}]: "
                             "optimise unconstrained logits and pass torch.sigmoid(logits), clamp theta to [0, 1], "
                             "or call synth(theta, validate=False) to have it clipped")
    if indices is None:
        indices = torch.arange(batch, dtype=torch.int64, device=theta.device)
    else:
        indices = torch.as_tensor(indices, device=theta.device)
        if indices.dtype.is_floating_point or indices.dtype.is_complex or indices.dtype == torch.bool:
            raise ValueError(f"indices must be integer global sound indices, got {indices.dtype}")
        indices = indices.to(torch.int64)
        if indices.shape != (batch,):
            raise ValueError(f"indices must have shape ({batch},), got {tuple(indices.shape)}")
        if validate and batch and not compiling and not _is_batched(indices) and bool((indices < 0).any()):
            raise ValueError("indices must be >= 0 (global sound indices)")
    if noise is not None:
        if noise.device != theta.device:
            raise ValueError(f"noise is on {noise.device} but theta is on {theta.device}: move them to one device")
        if noise.dim() != 2 or noise.shape[1] != n_samples or noise.shape[0] not in (1, batch):
            raise ValueError(f"noise must have shape ({batch}, {n_samples}) or (1, {n_samples}), "
                             f"got {tuple(noise.shape)}")
        if not noise.dtype.is_floating_point:
            raise ValueError(f"noise must be a floating-point tensor, got {noise.dtype}")
        noise = noise.to(theta.dtype)  # checked as rendered: 1e300 in float64 is inf in float32
        if validate and noise.numel() and not compiling and not _is_batched(noise) \
                and not bool(torch.isfinite(noise.detach()).all()):
            raise ValueError(f"noise contains NaN or infinite values (in {theta.dtype}, theta's dtype, which it is "
                             "rendered in)")
    if out is not None:
        if (not isinstance(out, torch.Tensor) or out.shape != (batch, n_samples) or out.dtype != theta.dtype
                or out.device != theta.device or not out.is_contiguous()):
            raise ValueError(f"out must be a contiguous ({batch}, {n_samples}) {theta.dtype} tensor on {theta.device}")
        if out.requires_grad:
            raise ValueError("out must not require grad (autograd cannot record a render into it): pass "
                             "out=None and use the returned tensor")
    if not program.rows("noise"):  # a patch without a noise source ignores a given noise tensor
        noise = None
    theta = theta.clamp(program.eps, 1.0)
    device_type = theta.device.type
    autocast = device_type in _AUTOCAST and torch.is_autocast_enabled(device_type)
    with torch.autocast(device_type, enabled=False) if autocast else nullcontext():
        return backend.render(program, theta, noise=noise, seed=rng.check_seed(seed), indices=indices,
                              normalize=bool(normalize), out=out)


_AUTOCAST = ("cpu", "cuda", "xpu", "mps")  # device types torch.autocast accepts


def refuse_create_graph(backend_name: str) -> None:
    """Called first in a fused backward, which has no derivative of its own: a backward that must be differentiable
    (create_graph=True; autograd runs a backward with grad mode on only then) is refused, not silently treated as a
    constant."""
    if torch.is_grad_enabled():
        raise RuntimeError(f"backend='{backend_name}' has no second derivative (create_graph=True, double backward, "
                           "Hessians): use backend='torch' for those")


def _is_batched(x: torch.Tensor) -> bool:
    """x is a tensor inside torch.func.vmap (its values cannot decide a Python branch)."""
    return torch._C._functorch.is_batchedtensor(x)


def _refuse_transforms(backend: Backend, theta: torch.Tensor, noise: torch.Tensor | None) -> None:
    """A fused backend's kernels see plain tensors: a forward-mode tangent or a torch.func wrapper would be dropped
    (a tangent silently: the render's derivative would read as zero), so either is one error saying what works."""
    tensors = (theta,) if noise is None else (theta, noise)
    if forward_ad._current_level >= 0 and any(forward_ad.unpack_dual(t).tangent is not None for t in tensors):
        raise ValueError(f"backend='{backend.name}' has no forward-mode derivative (forward_ad / torch.func.jvp): "
                         "use backend='torch', or reverse mode (theta.requires_grad_() and .backward())")
    if any(torch._C._functorch.is_functorch_wrapped_tensor(t) for t in tensors):
        raise ValueError(f"torch.func transforms (grad, vjp, jacrev, vmap) work on backend='torch'; backend="
                         f"'{backend.name}' takes plain tensors: use theta.requires_grad_() and .backward() for "
                         "gradients, and a batch for vmap")


__all__ = ["BACKENDS", "Backend", "as_device", "get_backend", "refuse_create_graph", "render"]
