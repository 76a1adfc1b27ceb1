"""Where backend="cpu" spends a render: time per stage of the native kernel, per synth, on one thread.

    python bench/cpu_stages.py [--batch 64] [--duration 1.0] [--synths voice,voicefm,parametric] [--grad]

Builds the kernel a second time with -DDOPPEL_STAGE_TIMERS (marks after each stage of render_sound read the cycle
counter; a normal build compiles them to nothing) in its own cache folder, renders each synth on one thread and
prints, per stage, its share of the time and nanoseconds per output sample; the wall time of the normal build on
the same inputs is printed next to it (the marks' own cost is the difference).

Then the limit: the same build times each per-sample building block alone, looped over one block in L1
(`doppel_cpu_primitive_ns`: a float32 sine, the float32 square-saw (sine, cosine, tanh), a float64 sine, a VCO's
phase in runs of 32, a running sum, a float64 power, a float32 upsampling run, a multiply, keyed noise, an FM
increment), and counts how many of each one output sample of the synth needs (from its program: per oscillator its
phase, waveform and VCA; each audio-rate modulation upsampled; noise; each mixer input; the envelopes' three
powers per control step, as if no ramp ever saturated). Their sum is the cost of the sample's arithmetic with these
formulas and no overhead at all (no loop structure, no memory beyond L1, no stage boundaries): the fraction of it
that the kernel reaches is printed next to the measured figure.

--grad: the differentiable path instead (theta requiring grad, loss = mean(audio * w), backward): the stages of
the forward call (doppel_cpu_grad_forward: for a float32 theta the plain render's stages, render_sound writing the
checkpoints; for float64 the float64 grad forward's) and of the backward call (doppel_cpu_grad_backward: its recompute of
each block under the forward's stage names, then the adjoint's adj_* stages), and the time of the whole Python
call that lies outside both kernels (to_human, the loss and its backward, autograd, allocations).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import sys
import time
from pathlib import Path

import torch

from test_synth import new_result_path  # bench/test_synth.py


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--duration", type=float, default=1.0)
    parser.add_argument("--synths", default="voice,voicefm,parametric")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="JSON (default bench/results/cpu-stages-<date>.json)")
    parser.add_argument("--grad", action="store_true", help="the forward + backward of the differentiable path")
    args = parser.parse_args(argv)
    report = {"date": datetime.date.today().isoformat(), "load_average": os.getloadavg(), "batch": args.batch,
              "duration_s": args.duration, "threads": 1, "synths": {}}
    torch.set_num_threads(1)
    if args.grad:
        return _grad_stages(args, report)
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
        stages = {}
        for stage, t in zip(names, ticks):
            if t:
                share = t / total
                stages[stage] = {"share": share, "ns_per_sample": share * wall * 1e9 / samples}
                print(f"  {stage:14s} {100 * share:5.1f} %  {share * wall * 1e9 / samples:6.2f} ns/sample")
        report["synths"][name] = {"ns_per_sample": plain[name] * 1e9 / samples,
                                  "profiling_ns_per_sample": wall * 1e9 / samples, "stages": stages}
        sys.stdout.flush()
    lib.doppel_cpu_primitive_names.restype = ctypes.c_char_p
    prims = lib.doppel_cpu_primitive_names().decode().split(",")
    ns = (ctypes.c_double * len(prims))()
    lib.doppel_cpu_primitive_ns(ctypes.c_int64(20000), ns)
    cost = dict(zip(prims, ns))
    print("primitives alone, ns per element (one thread, one block in L1): "
          + ", ".join(f"{k} {v:.3f}" for k, v in cost.items()))
    for name in args.synths.split(","):
        synth = get_synth(name, duration=args.duration, backend="cpu")
        counts = _counts(synth.program)
        limit = sum(n * cost[k] for k, n in counts.items())
        report["synths"][name].update(primitives_per_sample=counts, limit_ns_per_sample=limit)
        print(f"{name}: one sample needs " + ", ".join(f"{n:g} {k}" for k, n in counts.items() if n)
              + f" -> limit {limit:.2f} ns/sample; the kernel: {plain[name] * 1e9 / (args.batch * synth.program.n_samples):.2f}"
              f" ns/sample, {100 * limit / (plain[name] * 1e9 / (args.batch * synth.program.n_samples)):.0f} % of the limit")


    report["primitive_ns"] = cost
    out = args.out or new_result_path(f"cpu-stages-{report['date']}")
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")


def _counts(program) -> dict[str, float]:
    """How many of each primitive one output sample needs (see the module docstring)."""
    counts = dict.fromkeys(("sine_f32", "square_saw_f32", "sine_f64", "phase_geometric", "phase_sum", "pow_f64",
                            "upsample_f32", "multiply_f32", "noise_f32", "fm_increment_f64"), 0.0)
    square_saw, fm = 1, 2  # oscillator kinds (spec/program.py CODES; 0 is a sine)
    for kind, slot in zip(program.column("oscillators", "kind"), program.column("oscillators", "slot")):
        if kind == fm:
            counts["fm_increment_f64"] += 1
            counts["phase_sum"] += 1
        else:
            counts["phase_geometric"] += 1
            counts["multiply_f32"] += 2 if slot >= 0 else 1  # the VCA (float64 for a modulator: two lanes' worth)
        if slot >= 0:
            counts["sine_f64"] += 1
        else:
            counts["square_saw_f32" if kind == square_saw else "sine_f32"] += 1
    roles = program.column("mod_outputs", "role")
    counts["upsample_f32"] += sum(1 for r in roles if r != 0)  # every role but pitch runs at audio rate
    counts["noise_f32"] += program.rows("noise")
    counts["multiply_f32"] += program.rows("mixer")
    counts["pow_f64"] += 3 * program.rows("envelopes") * program.n_control / program.n_samples
    return counts


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


def _grad_step(synth, args):
    """A callable that runs one forward + backward of `batch` sounds, as bench/test_grad_cpu.py times it."""
    theta0 = synth.random_params(args.batch, seed=0)
    w = torch.randn(args.batch, synth.n_samples, generator=torch.Generator().manual_seed(0))

    def step():
        theta = theta0.clone().requires_grad_(True)
        (synth(theta, validate=False) * w).mean().backward()

    return step


def _grad_stages(args, report: dict) -> None:
    from doppel_torch import get_synth
    from doppel_torch.backends import cpu
    from doppel_torch.backends.cpu import build

    os.environ["DOPPEL_TORCH_CXXFLAGS"] = build.DEFAULT_FLAGS + " -DDOPPEL_STAGE_TIMERS"
    build._library = None
    lib = build.library()
    lib.doppel_cpu_grad_stage_names.restype = ctypes.c_char_p
    names = lib.doppel_cpu_grad_stage_names().decode().strip(",").split(",")
    ticks = (ctypes.c_uint64 * (2 * len(names)))()
    lib.doppel_cpu_stage_names.restype = ctypes.c_char_p
    plain_names = lib.doppel_cpu_stage_names().decode().strip(",").split(",")
    plain_ticks = [0] * len(plain_names)
    scratch = (ctypes.c_uint64 * len(plain_names))()
    kernel_s = {"doppel_cpu_grad_forward": 0.0, "doppel_cpu_grad_backward": 0.0}

    class Timed:  # the library, with the two kernels' wall time summed
        def __getattr__(self, key):
            fn = getattr(lib, key)
            if key not in kernel_s:
                return fn

            def timed(*a):
                # the plain render's marks of the forward call only (the backward's render_control marks them too)
                lib.doppel_cpu_stage_read(scratch)
                start = time.perf_counter()
                code = fn(*a)
                kernel_s[key] += time.perf_counter() - start
                if key == "doppel_cpu_grad_forward":
                    lib.doppel_cpu_stage_read(scratch)
                    for i, t in enumerate(scratch):
                        plain_ticks[i] += t
                return code

            return timed

    cpu.library = lambda: Timed()
    for name in args.synths.split(","):
        synth = get_synth(name, duration=args.duration, backend="cpu")
        step = _grad_step(synth, args)
        step()
        lib.doppel_cpu_grad_stage_read(ticks)
        plain_ticks[:] = [0] * len(plain_names)
        for key in kernel_s:
            kernel_s[key] = 0.0
        start = time.perf_counter()
        for _ in range(args.repeats):
            step()
        wall = (time.perf_counter() - start) / args.repeats
        lib.doppel_cpu_grad_stage_read(ticks)
        fwd, bwd = (kernel_s[k] / args.repeats for k in ("doppel_cpu_grad_forward", "doppel_cpu_grad_backward"))
        samples = args.batch * synth.program.n_samples
        per = lambda t: t * 1e9 / samples  # noqa: E731
        print(f"{name}: {synth.program.n_samples} samples x {args.batch} sounds, one thread, profiling build: "
              f"forward + backward {per(wall):.2f} ns/sample = forward kernel {per(fwd):.2f} + backward kernel "
              f"{per(bwd):.2f} + outside the kernels {per(wall - fwd - bwd):.2f}")
        entry = {"ns_per_sample": per(wall), "forward_ns_per_sample": per(fwd), "backward_ns_per_sample": per(bwd),
                 "outside_ns_per_sample": per(wall - fwd - bwd)}
        for bank, (key, kernel) in enumerate((("forward", fwd), ("backward", bwd))):
            row, row_names, label = ticks[bank * len(names):(bank + 1) * len(names)], names, key
            if bank == 0 and not any(row):  # a float32 forward: the plain render's stage marks
                row, row_names, label = plain_ticks, plain_names, "forward (the plain render's stages)"
            total = sum(row)
            print(f"  {label} kernel")
            stages = entry[f"{key}_stages"] = {}
            for stage, t in zip(row_names, row):
                if t:
                    share = t / total
                    stages[stage] = {"share": share, "ns_per_sample": share * per(kernel)}
                    print(f"    {stage:15s} {100 * share:5.1f} %  {share * per(kernel):6.2f} ns/sample")
        report["synths"][name] = entry
        sys.stdout.flush()
    report["step"] = "theta -> synth(theta) -> (audio * w).mean().backward(), float32, normalised"
    out = args.out or new_result_path(f"cpu-stages-grad-{report['date']}")
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
