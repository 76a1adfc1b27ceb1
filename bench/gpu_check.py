"""GPU check of the synth kernels: correctness against the float64 reference on the GPU, then every synth
benchmark, a printed table and `bench/results/<device>-<date>.json` (device, versions, git commit). < 5 min on an H100.

Prepare here (once per session; `.gpu/` is ignored and carried), then run with the device tool:

    grep -qx '/.gpu/' .git/info/exclude || echo /.gpu/ >> .git/info/exclude
    mkdir -p .gpu/wheels .gpu/synthax && cp ../shared/wheels/device/*.whl .gpu/wheels/ \
        && cp ../shared/reference/synthax/*.npz .gpu/synthax/

    run(carry=[".gpu"], timeout_s=420, command=
        "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "
        ".gpu/wheels/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 && "
        "python3 bench/gpu_check.py --commit <git rev-parse HEAD> --reference-dir .gpu/synthax --out $OUT")

then copy the returned JSON into bench/results/ and commit it. Exit status 1 when a correctness check fails.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_synth import BATCHES, SYNTHS, Unavailable, copy_bandwidth, make_case, throughput, time_case  # noqa: E402

from doppel_torch import ParametricSynth, get_synth  # noqa: E402
from doppel_torch.kernels import render as kernel_render  # noqa: E402

SYNTHAX_FILES = {"voice": "voice", "voicefm": "voiceexpanded", "parametric": "parametric"}
BENCH_ORDER = ("triton", "triton_fast", "torch", "torchsynth", "synthax", "torch_compile")


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm(dim=-1) / b.norm(dim=-1).clamp_min(1e-300)).numpy()


def correctness(device: torch.device, reference_dir: Path | None) -> tuple[list[dict], bool]:
    rows, ok = [], True

    def record(**row):
        nonlocal ok
        row["pass"] = bool(row.pop("passed"))
        ok &= row["pass"]
        rows.append(row)
        print(f"  {row['case']:52s} {row['metric']:28s} {row['value']:.3e}  limit {row['limit']:.1e}  "
              f"{'ok' if row['pass'] else 'FAIL'}", flush=True)

    synths = {name: (get_synth(name, backend="triton"), get_synth(name)) for name in SYNTHS}
    for counts in ((1, 0, 0, 1), (0, 1, 1, 0)):
        kw = dict(zip(("sine", "square_saw", "fm_sine", "fm_square_saw"), counts))
        synths[f"parametric{counts}"] = (ParametricSynth(backend="triton", **kw), ParametricSynth(**kw))
    for name, (synth, ref) in synths.items():
        theta = synth.random_params(64, seed=1, device=device, dtype=torch.float64)
        corners = torch.stack([torch.zeros_like(theta[0]), torch.ones_like(theta[0])])
        theta = torch.cat([theta, corners])
        truth = ref(theta, seed=2)
        audio = synth(theta, seed=2)
        record(case=f"{name} float64 (64 random + 2 corners)", metric="max abs vs reference",
               value=float((audio - truth).abs().max()), limit=1e-9, passed=(audio - truth).abs().max() <= 1e-9)
        for label, kw, limit in (("float32", {}, 1e-3 if name == "voice" else 1e-2),
                                 ("float32 phase32", {"phase_dtype": torch.float32}, float("inf"))):
            out = kernel_render(synth, theta.float().clamp(synth.eps, 1.0), seed=2, **kw)  # as Synth.forward does
            r = rel_l2(out, truth)
            record(case=f"{name} {label}", metric="rel L2 median", value=float(np.median(r)), limit=limit,
                   passed=True)
            record(case=f"{name} {label}", metric="rel L2 worst", value=float(r.max()), limit=limit,
                   passed=r.max() <= limit)
    if reference_dir is not None and reference_dir.is_dir():
        for name, key in SYNTHAX_FILES.items():
            data = np.load(reference_dir / f"{key}.npz")
            synth = synths[name][0]
            noise = torch.tensor(data["noise_f32"], device=device)
            for which in ("init", "aug"):
                theta = torch.tensor(data[f"params_{which}"], device=device).clamp(synth.eps, 1.0)
                truth = torch.tensor(data[f"premix_{which}_f64"])
                synthax = float(rel_l2(torch.tensor(data[f"premix_{which}_f32"]), truth).max())
                out = kernel_render(synth, theta, noise=noise, normalize=False)
                r = rel_l2(out, truth)
                limit = 1e-3 if name == "voice" else synthax / 10
                record(case=f"{name} SynthAX {which} float32 (SynthAX f32 worst {synthax:.2e})",
                       metric="rel L2 worst vs SynthAX f64", value=float(r.max()), limit=limit, passed=r.max() <= limit)
    else:
        print("  SynthAX reference renders not found (--reference-dir): parity with SynthAX float64 unchecked")
    return rows, ok


def benchmarks(device: torch.device, budget_s: float) -> list[dict]:
    copy_gbps = copy_bandwidth(device)
    print(f"  device copy bandwidth (read + write): {copy_gbps:.0f} GB/s", flush=True)
    start, rows = time.perf_counter(), []
    for batch in BATCHES:
        for name in SYNTHS:
            for impl in BENCH_ORDER:
                row = {"synth": name, "batch": batch, "impl": impl}
                if time.perf_counter() - start > budget_s and not impl.startswith("triton"):
                    row["skipped"] = f"time budget of {budget_s:.0f} s spent"
                else:
                    try:
                        run = make_case(impl, name, batch, device)
                        times = time_case(run, device, warmup=2, repeats=5)
                        median = statistics.median(times)
                        row.update(median_s=median, min_s=min(times), max_s=max(times),
                                   **throughput(median, batch, copy_gbps))
                    except Unavailable as why:
                        row["skipped"] = str(why)
                    except Exception as err:  # a baseline that breaks on this image is reported, not fatal
                        row["skipped"] = f"failed: {type(err).__name__}: {str(err)[:200]}"
                rows.append(row)
                done = f"{row['median_s'] * 1e3:9.2f} ms {row['sounds_per_s']:12.0f} sounds/s" if "median_s" in row else row["skipped"]
                print(f"  {name:10s} {batch:5d} {impl:14s} {done}", flush=True)
    for row in rows:
        anchor = next((r for r in rows if r["synth"] == row["synth"] and r["batch"] == row["batch"]
                       and r["impl"] == "triton" and "median_s" in r), None)
        if anchor and "median_s" in row:
            row["triton_speedup"] = row["median_s"] / anchor["median_s"]
    return rows, copy_gbps


def print_table(rows: list[dict]) -> None:
    print(f"\n{'synth':10s} {'batch':>5s} {'impl':14s} {'ms':>9s} {'sounds/s':>12s} {'x realtime':>11s} "
          f"{'GB/s':>7s} {'of copy':>7s} {'triton x':>8s}")
    for r in rows:
        if "median_s" not in r:
            print(f"{r['synth']:10s} {r['batch']:5d} {r['impl']:14s} skipped: {r['skipped']}")
            continue
        print(f"{r['synth']:10s} {r['batch']:5d} {r['impl']:14s} {r['median_s'] * 1e3:9.2f} {r['sounds_per_s']:12.0f} "
              f"{r['x_realtime']:11.0f} {r['audio_gbps']:7.1f} {r.get('fraction_of_copy_bw', 0):7.1%} "
              f"{r.get('triton_speedup', float('nan')):8.1f}")


def versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    for module in ("triton", "jax", "synthax", "torchsynth", "numpy"):
        try:
            out[module] = getattr(__import__(module), "__version__", "unknown")
        except Exception as err:  # report what is missing rather than fail the check
            out[module] = f"unavailable ({type(err).__name__})"
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commit", default=None, help="git commit of the checkout (default: git rev-parse HEAD)")
    parser.add_argument("--reference-dir", type=Path, default=None, help="folder with SynthAX's *.npz renders")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here (the device tool's $OUT)")
    parser.add_argument("--bench-budget-s", type=float, default=180.0, help="baselines stop after this many seconds")
    parser.add_argument("--skip-tests", action="store_true", help="do not run pytest tests/kernels --device cuda")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check.py needs a CUDA device; none is visible", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    commit = args.commit
    if commit is None:
        try:
            commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            commit = "unknown"
    name = torch.cuda.get_device_name(device)
    print(f"{name}, commit {commit}, {versions()}", flush=True)
    t0 = time.perf_counter()
    tests = {"skipped": "--skip-tests"}
    if not args.skip_tests:
        print("kernel tests on CUDA: pytest tests/kernels --device cuda", flush=True)
        repo = Path(__file__).resolve().parents[1]
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "tests/kernels",
                               "--device", "cuda"], cwd=repo, capture_output=True, text=True, timeout=240)
        tail = proc.stdout.strip().splitlines()[-1:] or [proc.stderr.strip()[-300:]]
        tests = {"returncode": proc.returncode, "summary": tail[0], "wall_s": time.perf_counter() - t0}
        print(f"  {tail[0]}" if proc.returncode == 0 else proc.stdout[-4000:] + proc.stderr[-2000:], flush=True)
    print("correctness (GPU vs float64 reference on the same GPU):", flush=True)
    checks, ok = correctness(device, args.reference_dir)
    ok &= tests.get("returncode", 0) == 0
    print(f"  ({time.perf_counter() - t0:.0f} s)\nbenchmarks (16 kHz, 1 s, synchronised, median of 5):", flush=True)
    bench, copy_gbps = benchmarks(device, args.bench_budget_s)
    print_table(bench)
    date = datetime.date.today().isoformat()
    result = {"device": name, "date": date, "commit": commit, "versions": versions(), "copy_bandwidth_gbps": copy_gbps,
              "kernel_tests": tests, "correctness": checks, "correctness_pass": ok, "benchmarks": bench,
              "wall_s": time.perf_counter() - t0}
    slug = "".join(c if c.isalnum() else "-" for c in name).strip("-").lower()
    for folder in [Path(__file__).resolve().parent / "results"] + ([args.out] if args.out else []):
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{slug}-{date}.json"
        path.write_text(json.dumps(result, indent=1, default=float))
        print(f"wrote {path}")
    print(f"correctness: {'all passed' if ok else 'FAILURES above'}; total {time.perf_counter() - t0:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
