"""Where backend="cpu" spends a render: time per stage of the native kernel, per synth, on one thread.

    python bench/cpu_stages.py [--batch 64] [--duration 1.0] [--synths voice,voicefm,parametric]

Builds the kernel a second time with -DDOPPEL_STAGE_TIMERS (marks after each stage of render_sound read the cycle
counter; a normal build compiles them to nothing) in its own cache folder, renders each synth on one thread and
prints, per stage, its share of the time and nanoseconds per output sample; the wall time of the normal build on
the same inputs is printed next to it (the marks' own cost is the difference).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import time

import torch


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--duration", type=float, default=1.0)
    parser.add_argument("--synths", default="voice,voicefm,parametric")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from doppel_torch import get_synth
    from doppel_torch.backends.cpu import build

    plain = {}
    for name in args.synths.split(","):
        plain[name] = _time(get_synth(name, duration=args.duration, backend="cpu"), args)
    # the profiling build: same source and flags plus the define; the cache key includes the flags
    os.environ["DOPPEL_TORCH_CXXFLAGS"] = build.DEFAULT_FLAGS + " -DDOPPEL_STAGE_TIMERS"
    build._library = None
    lib = build.library()
    lib.doppel_cpu_stage_names.restype = ctypes.c_char_p
    names = lib.doppel_cpu_stage_names().decode().strip(",").split(",")
    ticks = (ctypes.c_uint64 * len(names))()
    for name in args.synths.split(","):
        synth = get_synth(name, duration=args.duration, backend="cpu")
        lib.doppel_cpu_stage_read(ticks)
        wall = _time(synth, args)
        lib.doppel_cpu_stage_read(ticks)  # the counters of the timed calls (and the warm-up call before them)
        total = sum(ticks)
        samples = args.batch * synth.program.n_samples
        print(f"{name}: {synth.program.n_samples} samples x {args.batch} sounds, one thread; normal build "
              f"{plain[name] * 1e9 / samples:.2f} ns/sample, profiling build {wall * 1e9 / samples:.2f} ns/sample")
        for stage, t in zip(names, ticks):
            if t:
                share = t / total
                print(f"  {stage:14s} {100 * share:5.1f} %  {share * wall * 1e9 / samples:6.2f} ns/sample")
        sys.stdout.flush()


def _time(synth, args) -> float:
    """Best seconds of one render of `batch` sounds over `repeats` calls (after one warm-up call)."""
    theta = synth.random_params(args.batch, seed=0)
    synth(theta, validate=False)
    best = float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        synth(theta, validate=False)
        best = min(best, time.perf_counter() - start)
    return best


if __name__ == "__main__":
    main()
