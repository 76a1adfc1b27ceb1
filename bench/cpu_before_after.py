"""The native CPU kernel before and after a change, side by side in one process: sounds/s over batch x duration.

    python bench/cpu_before_after.py --before aedea5a [--synths voice,voicefm,parametric] [--batches 1,8,128,1024]
        [--durations 0.25,1,4] [--threads 2] [--rounds 9] [--out bench/results/cpu-before-after-<date>.json]

The kernel source at the `--before` commit (synth_cpu.cpp and the files it includes, from `git show`) is compiled
with the same compiler and flags as the working tree's (backends/cpu/build.py) into a temporary folder, and both
libraries render the same human-unit parameters and noise keys into preallocated outputs (float32, normalised)
through the same C entry point (`doppel_cpu_render`, whose signature both must share). Each round times one call
of each library after one untimed call (after-then-before in odd rounds, before-then-after in even ones); the best
round counts. Also printed: the largest relative L2 difference per sound between the two float32 outputs and
between each and the working tree's float64 render (the accuracy bar of the kernel issue: float32 within 1e-6 of
float64 on voice and voicefm, 1e-4 on parametric).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import shlex
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from doppel_torch import get_synth, rng
from test_synth import new_result_path  # bench/test_synth.py
from doppel_torch.backends.cpu import build

REPO = Path(__file__).resolve().parents[1]


def _compile_at(commit: str, folder: Path) -> ctypes.CDLL:
    """The kernel library built from the sources at `commit`."""
    for path in build.SOURCES:
        rel = path.relative_to(REPO)
        try:
            text = subprocess.run(["git", "show", f"{commit}:{rel.as_posix()}"], capture_output=True, text=True,
                                  check=True, cwd=REPO).stdout
        except subprocess.CalledProcessError as err:
            raise SystemExit(f"cannot read {rel} at {commit}: {err.stderr.strip()}") from err
        (folder / path.name).write_text(text)
    target = folder / "libbefore.so"
    flags = shlex.split(build.DEFAULT_FLAGS)
    subprocess.run([build._compiler(), *flags, "-shared", "-fPIC", "-pthread", str(folder / build.SOURCE.name), "-o",
                    str(target)], check=True)
    lib = build.declare(ctypes.CDLL(str(target)))
    if hasattr(lib, "doppel_cpu_use_openmp"):  # the same workers as the working tree's, where the old kernel can
        lib.doppel_cpu_use_openmp(build.openmp_parallel())
    return lib


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="git commit of the old kernel")
    parser.add_argument("--synths", default="voice,voicefm,parametric")
    parser.add_argument("--batches", default="1,8,128,1024")
    parser.add_argument("--durations", default="0.25,1,4")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--max-samples", type=float, default=3e8, help="skip cases with more output samples")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    after = build.library()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        before = _compile_at(args.before, Path(tmp))
        print(f"before {args.before} vs after (working tree), {args.threads} threads, float32, best of {args.rounds}")
        print(f"{'synth':10s} {'batch':>5s} {'dur s':>5s} {'before/s':>9s} {'after/s':>9s} {'after/before':>12s} "
              f"{'relL2 a-b':>9s} {'b32-64':>8s} {'a32-64':>8s}")
        for name in args.synths.split(","):
            for duration in map(float, args.durations.split(",")):
                for batch in map(int, args.batches.split(",")):
                    synth = get_synth(name, duration=duration, backend="cpu")
                    if batch * synth.program.n_samples > args.max_samples:
                        continue
                    rows.append(_case(synth, name, batch, duration, before, after, args))
    if args.out is None:
        args.out = new_result_path(f"cpu-before-after-{datetime.date.today().isoformat()}")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    args.out.write_text(json.dumps({"before": args.before, "after": commit, "threads": args.threads,
                                    "cpu": build._cpu_fingerprint().splitlines()[0] if build._cpu_fingerprint() else "",
                                    "rows": rows}, indent=1))
    print(f"wrote {args.out}")


def _case(synth, name, batch, duration, before, after, args) -> dict:
    program = synth.program
    theta = synth.random_params(batch, seed=0)
    human = program.layout.table.to_human(theta.double()).contiguous()
    k1, k2 = rng.sound_keys(0, rng.Stream.NOISE, torch.arange(batch))
    keys = torch.stack((k1, k2), 1).contiguous()

    def call(lib, out):
        code = lib.doppel_cpu_render(human.data_ptr(), batch, human.shape[1], program.words.data_ptr(),
                                     program.words.numel(), keys.data_ptr(), None, 0, out.data_ptr(),
                                     int(out.dtype == torch.float64), program.n_samples, program.n_control,
                                     program.sample_rate, program.control_rate, program.eps, 1, args.threads)
        assert code == 0, code

    libs = (before, after)
    outs = [torch.empty(batch, program.n_samples) for _ in libs]
    best = [float("inf")] * 2
    for lib, out in zip(libs, outs):
        call(lib, out)
    for r in range(args.rounds):
        for i in ((0, 1) if r % 2 else (1, 0)):
            call(libs[i], outs[i])
            start = time.perf_counter()
            call(libs[i], outs[i])
            best[i] = min(best[i], time.perf_counter() - start)
    truth = torch.empty(batch, program.n_samples, dtype=torch.float64)
    call(after, truth)

    def rel(x, ref):
        return float(((x.double() - ref).norm(dim=1) / ref.norm(dim=1).clamp_min(1e-12)).max())

    row = dict(synth=name, batch=batch, duration_s=duration, before_sounds_per_s=batch / best[0],
               after_sounds_per_s=batch / best[1], speedup=best[0] / best[1], rel_l2_after_vs_before=rel(outs[1], outs[0].double()),
               rel_l2_before_f32_vs_f64=rel(outs[0], truth), rel_l2_after_f32_vs_f64=rel(outs[1], truth))
    print(f"{name:10s} {batch:5d} {duration:5.2f} {row['before_sounds_per_s']:9.0f} {row['after_sounds_per_s']:9.0f} "
          f"{row['speedup']:11.2f}x {row['rel_l2_after_vs_before']:9.1e} {row['rel_l2_before_f32_vs_f64']:8.1e} "
          f"{row['rel_l2_after_f32_vs_f64']:8.1e}", flush=True)
    return row


if __name__ == "__main__":
    main()
