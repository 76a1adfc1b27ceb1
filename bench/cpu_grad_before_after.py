"""The CPU gradient path before and after a kernel change, side by side in one process: forward + backward steps/s.

    python bench/cpu_grad_before_after.py --before ed5dc0f [--synths voice,voicefm,parametric] [--batch 64]
        [--duration 1] [--threads 1] [--rounds 9] [--out bench/results/cpu-grad-before-after-<date>.json]

The kernel source at `--before` is compiled as bench/cpu_before_after.py does (same compiler and flags), and each
round runs, per synth, one step with each library (theta (batch, m) float32 requiring grad -> synth(theta) -> loss =
mean(audio * w) -> backward, as bench/test_grad_cpu.py), the order alternating between rounds, one untimed step
before each timed one; the library is swapped under the backend (doppel_torch.backends.cpu.library), so the Python
glue is the same for both. Printed: the best round's whole step and its two kernel calls (doppel_cpu_grad_forward,
doppel_cpu_grad_backward) for each library, their ratios, and the largest difference between the two libraries'
gradients relative to the row's norm.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from cpu_before_after import REPO, _compile_at  # bench/cpu_before_after.py
from doppel_torch import get_synth
from doppel_torch.backends import cpu
from doppel_torch.backends.cpu import build
from test_synth import new_result_path  # bench/test_synth.py

KERNELS = ("doppel_cpu_grad_forward", "doppel_cpu_grad_backward")


class _Timed:
    """A kernel library whose two gradient entry points add their wall time to `seconds`."""

    def __init__(self, lib):
        self.lib, self.seconds = lib, dict.fromkeys(KERNELS, 0.0)

    def __getattr__(self, key):
        fn = getattr(self.lib, key)
        if key not in KERNELS:
            return fn

        def timed(*a):
            start = time.perf_counter()
            code = fn(*a)
            self.seconds[key] += time.perf_counter() - start
            return code

        return timed


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="git commit of the old kernel")
    parser.add_argument("--synths", default="voice,voicefm,parametric")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--duration", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        libs = (_Timed(_compile_at(args.before, Path(tmp))), _Timed(build.library()))
        print(f"forward + backward, before {args.before} vs after (working tree), batch {args.batch}, "
              f"{args.duration} s, float32, {args.threads} threads, best of {args.rounds} interleaved rounds")
        print(f"{'synth':10s} {'':6s} {'step ms':>8s} {'fwd ms':>7s} {'bwd ms':>7s}")
        for name in args.synths.split(","):
            rows.append(_case(name, libs, args))
    if args.out is None:
        args.out = new_result_path(f"cpu-grad-before-after-{datetime.date.today().isoformat()}")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    args.out.write_text(json.dumps({"before": args.before, "after": commit, "threads": args.threads,
                                    "batch": args.batch, "duration_s": args.duration,
                                    "cpu": build._cpu_fingerprint().splitlines()[0] if build._cpu_fingerprint() else "",
                                    "rows": rows}, indent=1))
    print(f"wrote {args.out}")


def _case(name, libs, args) -> dict:
    synth = get_synth(name, duration=args.duration, backend="cpu")
    theta0 = synth.random_params(args.batch, seed=0)
    w = torch.randn(args.batch, synth.n_samples, generator=torch.Generator().manual_seed(0))

    def step(lib):
        cpu.library = lambda: lib
        theta = theta0.clone().requires_grad_(True)
        (synth(theta, validate=False) * w).mean().backward()
        return theta.grad

    best = [dict(step=float("inf"), **dict.fromkeys(KERNELS, float("inf"))) for _ in libs]
    try:
        grads = [step(lib) for lib in libs]
        for r in range(args.rounds):
            for i in ((0, 1) if r % 2 else (1, 0)):
                step(libs[i])
                libs[i].seconds = dict.fromkeys(KERNELS, 0.0)
                start = time.perf_counter()
                step(libs[i])
                elapsed = time.perf_counter() - start
                best[i]["step"] = min(best[i]["step"], elapsed)
                for key in KERNELS:
                    best[i][key] = min(best[i][key], libs[i].seconds[key])
    finally:
        cpu.library = build.library
    diff = float(((grads[1] - grads[0]).norm(dim=1) / grads[0].norm(dim=1).clamp_min(1e-30)).max())
    row = dict(synth=name, before=best[0], after=best[1], step_speedup=best[0]["step"] / best[1]["step"],
               forward_speedup=best[0][KERNELS[0]] / best[1][KERNELS[0]],
               backward_speedup=best[0][KERNELS[1]] / best[1][KERNELS[1]], grad_rel_diff=diff,
               before_sounds_per_s=args.batch / best[0]["step"], after_sounds_per_s=args.batch / best[1]["step"])
    for label, b in (("before", best[0]), ("after", best[1])):
        print(f"{name:10s} {label:6s} {1e3 * b['step']:8.1f} {1e3 * b[KERNELS[0]]:7.1f} {1e3 * b[KERNELS[1]]:7.1f}")
    print(f"{name:10s} {'ratio':6s} {row['step_speedup']:7.2f}x {row['forward_speedup']:6.2f}x "
          f"{row['backward_speedup']:6.2f}x  (before / after; gradients differ by {diff:.1e} relative)", flush=True)
    return row


if __name__ == "__main__":
    main()
