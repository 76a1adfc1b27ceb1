"""Counter-based random numbers keyed by (seed, stream, global sound index, counter).

Every random draw of data generation (synth parameters, perturbations, noise, augmentation draws) is a
pure function of its key, so a sound is the same whatever the batch size, device or number of ranks,
ranks need no communication to draw disjoint data, and a run is reproducible from its seed.

The generator is a 32-bit integer hash (Wellons' "lowbias32" finaliser) applied twice per draw:

    k1, k2 = sound_keys(seed, stream, index)          # two 32-bit keys per (seed, stream, sound)
    bits   = mix32(mix32((counter + k1) mod 2^32) ^ k2)
    u      = (bits >> 8) * 2^-24                        # uniform in [0, 1), 24 bits, exact in float32

It needs only 32-bit multiply, xor and shifts, so the Triton kernels compute the same bits
(`doppel_torch.backends.triton` and `backends.cpu` re-implement `mix32` with uint32 arithmetic). Here uint32 values live in int64
tensors: products wrap modulo 2^64 and are masked back to 32 bits, which keeps the low bits exact.
"""

from __future__ import annotations

import math
import numbers

import torch

MASK32 = 0xFFFFFFFF
MIX_MUL_1 = 0x7FEB352D
MIX_MUL_2 = 0x846CA68B
GOLDEN = 0x9E3779B9


class Stream:
    """Named sub-streams, so that draws of different purposes never share a key."""

    THETA = 1  # synth parameters theta ~ U(0, 1)^m
    NOISE = 2  # the synth's white-noise source
    PERTURB_1 = 3  # z_1 of a doppelganger pair
    PERTURB_2 = 4  # z_2 of a doppelganger pair
    AUGMENT = 5  # augmentation draws (first view); AUGMENT + 1 for the second view
    SHARED_NOISE = 7  # the one noise row shared by every doppelganger (pairs.DoppelgangerPairs, noise="shared")
    DATA = 16  # real-data sampling (segments, mixtures)
    MATCH = 17  # starting points of the restarts of sound matching (doppel_torch.matching)
    MATCH_AROUND = 18  # the spread of restarts around a given theta (doppel_torch.matching.starts_around)


def mix32(x: torch.Tensor) -> torch.Tensor:
    """Bijective 32-bit hash of an int64 tensor holding values in [0, 2^32)."""
    x = x ^ (x >> 16)
    x = (x * MIX_MUL_1) & MASK32
    x = x ^ (x >> 15)
    x = (x * MIX_MUL_2) & MASK32
    x = x ^ (x >> 16)
    return x


def _mix32_int(x: int) -> int:
    x &= MASK32
    x ^= x >> 16
    x = (x * MIX_MUL_1) & MASK32
    x ^= x >> 15
    x = (x * MIX_MUL_2) & MASK32
    x ^= x >> 16
    return x


def check_seed(seed) -> int:
    """seed as a Python int in [-2^63, 2^64): the 64 bits the keys read (a larger seed would wrap silently)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    seed = int(seed)
    if not -(2**63) <= seed < 2**64:
        raise ValueError(f"seed must lie in [-2^63, 2^64) (64 bits), got {seed}")
    return seed


def seed_key(seed: int, stream: int) -> int:
    """32-bit key of (seed, stream); seed is any integer in [-2^63, 2^64) (negative and > 32 bits included)."""
    seed = check_seed(seed) & 0xFFFFFFFFFFFFFFFF
    k = _mix32_int((seed >> 32) ^ _mix32_int(stream * GOLDEN + 1))
    return _mix32_int((seed & MASK32) ^ k)


def sound_keys(seed: int, stream: int, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two 32-bit keys per sound, as int64 tensors shaped like `index` (global sound indices >= 0)."""
    index = index.to(torch.int64)
    base = seed_key(seed, stream)
    lo = index & MASK32
    hi = (index >> 32) & MASK32
    k1 = mix32(mix32(lo ^ base) ^ hi)
    k2 = mix32(k1 ^ ((base * GOLDEN) & MASK32))
    return k1, k2


def bits32(k1: torch.Tensor, k2: torch.Tensor, counter: torch.Tensor) -> torch.Tensor:
    """Random 32-bit words for keys (..., 1) and counters (n,) -> (..., n) int64."""
    return mix32(mix32((counter + k1) & MASK32) ^ k2)


def uniform(
    seed: int,
    stream: int,
    index: torch.Tensor,
    n: int,
    *,
    dtype: torch.dtype = torch.float32,
    offset: int = 0,
) -> torch.Tensor:
    """U[0, 1) draws with 24-bit resolution: (len(index), n) for counters offset .. offset + n - 1."""
    index = torch.as_tensor(index)
    if index.dtype.is_floating_point or index.dtype.is_complex or index.dtype == torch.bool:
        raise ValueError(f"sound indices must be integers, got {index.dtype}")
    index = index.to(torch.int64)
    k1, k2 = sound_keys(seed, stream, index.reshape(-1, 1))
    counter = torch.arange(offset, offset + n, device=index.device, dtype=torch.int64)
    bits = bits32(k1, k2, counter)
    return (bits >> 8).to(dtype) * (2.0**-24)


def normal(
    seed: int,
    stream: int,
    index: torch.Tensor,
    n: int,
    *,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal draws (Box-Muller on counters 2j, 2j+1): (len(index), n)."""
    u = uniform(seed, stream, index, 2 * n, dtype=torch.float64)
    u1 = 1.0 - u[:, 0::2]  # in (0, 1]: log is finite
    u2 = u[:, 1::2]
    z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)
    return z.to(dtype)


def noise(
    seed: int, index: torch.Tensor, n_samples: int, *, dtype: torch.dtype = torch.float32, stream: int = Stream.NOISE
) -> torch.Tensor:
    """The synths' white noise: U[-1, 1) per sample, (len(index), n_samples), keyed by (seed, stream, sound index)."""
    return 2.0 * uniform(seed, stream, index, n_samples, dtype=dtype) - 1.0
