"""Device math shared by the synth kernels, identical under `TRITON_INTERPRET=1` and compiled.

float64 transcendentals go to libdevice when compiled (the `tl.*` versions are float32 approximations on
NVIDIA GPUs) and to numpy under the interpreter, which cannot run libdevice. float32 uses the fast `tl.*`
instructions: callers reduce angles to [-pi, pi) first, where `cos.approx.f32` is good to ~5e-7 absolute.
"""

import os

import triton
import triton.language as tl
from triton.language.extra import libdevice

INTERPRET = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") == "1")

MIX_MUL_1 = tl.constexpr(0x7FEB352D)
MIX_MUL_2 = tl.constexpr(0x846CA68B)


@triton.jit
def exp2(x):
    if INTERPRET:
        return tl.exp2(x)
    elif x.dtype == tl.float64:
        return libdevice.exp2(x)
    else:
        return tl.exp2(x)


@triton.jit
def log2(x):
    if INTERPRET:
        return tl.log2(x)
    elif x.dtype == tl.float64:
        return libdevice.log2(x)
    else:
        return tl.log2(x)


@triton.jit
def cos(x):
    if INTERPRET:
        return tl.cos(x)
    elif x.dtype == tl.float64:
        return libdevice.cos(x)
    else:
        return tl.cos(x)


@triton.jit
def sin(x):
    if INTERPRET:
        return tl.sin(x)
    elif x.dtype == tl.float64:
        return libdevice.sin(x)
    else:
        return tl.sin(x)


@triton.jit
def frac(x):
    """x - floor(x), in [0, 1)."""
    return x - tl.floor(x)


@triton.jit
def pow_nonneg(base, exponent):
    """base ** exponent for base >= 0 and exponent > 0 (0 at base 0), as exp2(exponent * log2(base))."""
    positive = base > 0
    safe = tl.where(positive, base, 1.0)
    return tl.where(positive, exp2(exponent * log2(safe)), 0.0)


@triton.jit
def tanh(x, log2e):
    """tanh from exp2: sign(x) (1 - e) / (1 + e), e = 2 ** (-2 |x| log2(e)); absolute error ~ 1 ulp of 1."""
    e = exp2(tl.abs(x) * (-2.0 * log2e))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def mix32(x):
    """`doppel_torch.rng.mix32` on uint32 (products wrap modulo 2 ** 32)."""
    x = x ^ (x >> 16)
    x = x * tl.full((), MIX_MUL_1, tl.uint32)
    x = x ^ (x >> 15)
    x = x * tl.full((), MIX_MUL_2, tl.uint32)
    x = x ^ (x >> 16)
    return x
