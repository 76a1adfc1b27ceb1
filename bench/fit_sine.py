"""The coefficients of the CPU kernel's quarter sine (csrc/synth_cpu.cpp, `sin2pi_quarter` / `_f`).

    python bench/fit_sine.py

sin(2 pi w) / w as a polynomial in z = w^2 on w in [0, 1/4], fitted by least squares in relative error on
Chebyshev nodes in 40-digit arithmetic (mpmath), then rounded to float64 / float32; prints the coefficients
(highest power first, as the kernel's Horner scheme reads them) and the worst error of w * P(w^2) evaluated in
that type against float64 sin over 200,001 points.
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


if __name__ == "__main__":
    for degree, dtype in ((8, np.float64), (4, np.float32)):
        coef, err = fit(degree, dtype)
        print(f"{np.dtype(dtype).name}, degree {degree} in w^2, worst error {err:.2e}:")
        print("  " + ", ".join(repr(x) for x in coef))
