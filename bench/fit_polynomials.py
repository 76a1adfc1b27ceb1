"""The coefficients of the CPU kernel's polynomials (csrc/synth_cpu.cpp): the quarter sine (`sin2pi_quarter` /
`_f`) and the float32 exponential inside `tanh_f`.

    python bench/fit_polynomials.py

sin(2 pi w) / w as a polynomial in z = w^2 on w in [0, 1/4], fitted by least squares in relative error on
Chebyshev nodes in 40-digit arithmetic (mpmath), then rounded to float64 / float32; prints the coefficients
(highest power first, as the kernel's Horner scheme reads them) and the worst error of w * P(w^2) evaluated in
that type against float64 sin over 200,001 points. e^f on |f| <= ln(2) / 2 (degree 5, relative least squares, float32
coefficients, lowest power first): printed with the worst error of the kernel's tanh_f built on it, emulated in
float32 with one rounding per multiply-add, against float64 tanh over [-10, 10].
"""

from __future__ import annotations

import numpy as np
from mpmath import mp


def fit(degree: int, dtype) -> tuple[list[float], float]:
    mp.dps = 40
    n = 200
    nodes = [mp.mpf(1) / 8 + mp.cos(mp.pi * (k + mp.mpf(1) / 2) / n) / 8 for k in range(n)]
    z = [w * w for w in nodes]
    f = [mp.sin(2 * mp.pi * w) / w for w in nodes]
    a = mp.matrix([[zz ** j / ff for j in range(degree + 1)] for zz, ff in zip(z, f)])
    c = mp.lu_solve(a.T * a, a.T * mp.matrix([1] * n))
    coef = [dtype(float(c[j])) for j in range(degree + 1)]
    w = np.linspace(0, 0.25, 200_001).astype(dtype)
    zz = w * w
    p = np.full_like(w, coef[-1])
    for cc in coef[-2::-1]:
        p = p * zz + cc
    err = np.abs((w * p).astype(np.float64) - np.sin(2 * np.pi * w.astype(np.float64))).max()
    return [float(x) for x in coef[::-1]], float(err)


def fit_exp(degree: int) -> list[float]:
    mp.dps = 40
    n, h = 120, mp.log(2) / 2
    nodes = [h * mp.cos(mp.pi * (k + mp.mpf(1) / 2) / n) for k in range(n)]
    a = mp.matrix([[x ** j / mp.e ** x for j in range(degree + 1)] for x in nodes])
    c = mp.lu_solve(a.T * a, a.T * mp.matrix([1] * n))
    return [float(np.float32(float(c[j]))) for j in range(degree + 1)]


def tanh_error(coef: list[float]) -> float:
    """Worst |tanh_f - tanh| over [-10, 10] of the kernel's tanh_f with these coefficients (float32 emulated)."""
    f32 = np.float32
    y = np.clip(np.linspace(-10, 10, 2_000_001).astype(f32), f32(-9), f32(9))
    x = f32(2.8853900817779268) * y
    k = (x + f32(12582912.0)) - f32(12582912.0)
    f = (x - k) * f32(0.69314718055994531)
    p = np.full_like(f, f32(coef[-1]))
    for c in coef[-2::-1]:
        p = (p.astype(np.float64) * f + c).astype(f32)  # one rounding, as std::fma
    e = p * np.exp2(k).astype(f32)
    return float(np.abs((e - 1) / (e + 1) - np.tanh(np.linspace(-10, 10, 2_000_001).astype(f32).astype(np.float64))).max())


if __name__ == "__main__":
    for degree, dtype in ((8, np.float64), (4, np.float32)):
        coef, err = fit(degree, dtype)
        print(f"{np.dtype(dtype).name}, degree {degree} in w^2, worst error {err:.2e}:")
        print("  " + ", ".join(repr(x) for x in coef))
    coef = fit_exp(5)
    print(f"float32 e^f, degree 5, tanh_f worst error {tanh_error(coef):.2e}:")
    print("  " + ", ".join(repr(x) for x in coef))
