"""GPU check in one script (~6 min on an H100): correctness of the synth kernels, then every speed number the
issues ask for, and a short real training run evaluated on FSDD. Writes `<device>-<date>.json` into
bench/results/ and --out after EVERY stage, so a stage that fails or runs out of time loses nothing else.

Stages, in order, with their budgets in seconds (`--stages` picks a subset). A stage checks its budget between
measurements and stops with a note; a SIGALRM at budget + grace ends a stage that hangs; a stage whose budget
no longer fits in `--total-budget-s` (410 s) is skipped with a note.

    kernel_tests  45  pytest tests/backends/triton --device cuda (subprocess)
    correctness   30  Triton kernels vs the float64 reference on the GPU; SynthAX float64 renders
    synth_bench   40  synth throughput, Triton vs baselines (the baselines stop at the budget)
    grad_bench    35  forward + backward sounds/s, batch 64, 1 s, float32: backend="triton" vs the reference's
                      autograd on CUDA (target 20x; a backend without a backward is recorded with its refusal)
    tune          25  audio-kernel chunk length x warps sweep (voicefm, 2 x 768 sounds, both phase dtypes), to
                      set `backends.triton.synth.block_sizes` from measurements (chosen so far from register counts)
    frontend      10  log-mel: torch.stft vs matmul path, batch 100 and 2 x 768; agreement; the faster one
    data_share    25  pairs + augmentation (with reverb) + log-mel of 2 x 768 voicefm sounds vs a training step
                      at batch 768 (bf16, channels-last, same augmentation); target data share < 5 %
    train_step    70  full step pairs/s: fp32; bf16 + channels-last; + cudnn.benchmark; + torch.compile;
                      the paper's recipe (200 epochs x 117 steps x 768 = 18.0 M pairs) projected in minutes
    train_run     75  `doppel-torch train --synth voicefm` (the paper's recipe, fewer sounds: 10 epochs sized
                      from train_step's pairs/s to fill the budget, which stretches up to 160 s into time left
                      by earlier stages); SIGINT 20 s before the budget ends (checkpoint kept)
    eval          55  `doppel-torch eval last.pt --task fsdd-digit|fsdd-speaker --seeds S`: 6 processes in
                      parallel (2 tasks x 3 seeds), merged into mean +- std over (fold, seed) runs

Prepare here (once per session; `.gpu/` is ignored and carried; 48 MB of the 64 MiB carry limit with the
repository). cffi (needed by soundfile) is not in the GPU image nor in ../shared/wheels/device:

    mkdir -p .git/info && (grep -qx '/.gpu/' .git/info/exclude || echo /.gpu/ >> .git/info/exclude)
    rm -rf .gpu && mkdir -p .gpu/wheels .gpu/shared/data .gpu/shared/reference \
        && cp ../shared/wheels/device/*.whl .gpu/wheels/ && cp -r ../shared/data/fsdd ../shared/data/rirs \
        .gpu/shared/data/ && cp -r ../shared/reference/synthax .gpu/shared/reference/ \
        && python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux2014_x86_64 -d .gpu/wheels cffi==2.1.1 && du -sh .gpu

then run with the device tool (the script ends itself by ~6.5 min; timeout_s leaves room for the wheel install,
a slow start and the grace of a stage that hangs):

    run(carry=[".gpu"], timeout_s=540, command=
        "set -o pipefail; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "
        "--target /tmp/site .gpu/wheels/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 && "
        "python3 bench/gpu_check.py --commit <git rev-parse HEAD> --shared-dir .gpu/shared --out $OUT "
        "2>&1 | tee $OUT/gpu_check.log")

then copy the returned JSON into bench/results/ and commit it. Exit status 1 when a correctness check fails.

`--cpu-smoke` runs every stage at tiny sizes on the CPU (Triton kernels in the interpreter; < 3 min on a
2-core machine) to check this script itself; its JSON goes to --out (default /tmp/gpu_check_smoke) only.
"""

from __future__ import annotations

import os
import sys

if "--cpu-smoke" in sys.argv:  # the Triton interpreter must be chosen before doppel_torch.backends.triton is imported
    os.environ["TRITON_INTERPRET"] = "1"

import argparse  # noqa: E402
import csv  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from test_synth import SYNTHS, Unavailable, copy_bandwidth, make_case, throughput, time_case  # noqa: E402

from doppel_torch import ParametricSynth, get_synth  # noqa: E402
from doppel_torch.backends import get_backend, render as backend_render  # noqa: E402


def kernel_render(synth, theta, phase_dtype=None, **kwargs):
    """The Triton backend on `synth`'s program, with phase_dtype as its option, through the one validation."""
    return backend_render(get_backend("triton", phase_dtype=phase_dtype), synth.program, theta, validate=False,
                          **kwargs)

SYNTHAX_FILES = {"voice": "voice", "voicefm": "voiceexpanded", "parametric": "parametric"}
BENCH_ORDER = ("triton", "triton_fast", "torch", "torchsynth", "synthax", "torch_compile")
STAGES = {  # name: (budget on the GPU, budget in --cpu-smoke), seconds
    "kernel_tests": (45, 30),
    "correctness": (30, 40),
    "synth_bench": (40, 25),
    "grad_bench": (35, 15),  # includes compiling the Triton backward kernels of three synths (warm-up call)
    "tune": (25, 15),
    "frontend": (10, 10),
    "data_share": (25, 25),
    "train_step": (70, 30),
    "train_run": (75, 40),
    "eval": (55, 40),
}
TRAIN_RUN_STRETCH_S = 160  # train_run may use time left by earlier stages, up to this
DATA_SHARE_TARGET = 0.05
CLI = "import sys; from doppel_torch.cli import main; sys.exit(main(prog_name='doppel-torch'))"


class StageTimeout(BaseException):
    """Raised by SIGALRM when a stage overruns its budget and grace (BaseException: no `except Exception` eats it)."""


class Budget:
    def __init__(self, seconds: float):
        self.seconds = seconds
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()

    def spent(self) -> bool:
        return self.left() <= 0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, rounds: int, warmup: int, budget: Budget) -> list[float]:
    """Seconds per call of `fn` (synchronised), after `warmup` calls; stops early (>= 1 round) at the budget."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(rounds):
        if times and budget.spent():
            break
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def stats(times: list[float]) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "rounds": len(times)}


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm(dim=-1) / b.norm(dim=-1).clamp_min(1e-300)).numpy()


def tail(text: str, n: int = 3000) -> str:
    return text[-n:] if text else ""


# ------------------------------------------------------------------------------------------------ stages
class Check:
    """Runs the stages and keeps the results JSON up to date; --cpu-smoke shrinks every size."""

    def __init__(self, args, device: torch.device):
        self.args, self.device, self.smoke = args, device, args.cpu_smoke
        self.shared = args.shared_dir.resolve()
        self.fsdd, self.rirs = self.shared / "data" / "fsdd", self.shared / "data" / "rirs"
        self.synthax = self.shared / "reference" / "synthax"
        self.work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
        self.t0 = time.perf_counter()
        self.deadline = self.t0 + args.total_budget_s
        self.ok = True
        name = (torch.cuda.get_device_name(device) if device.type == "cuda"
                else f"cpu-smoke ({platform.processor() or platform.machine()})")
        self.result = {"device": name, "date": datetime.date.today().isoformat(), "commit": args.commit,
                       "mode": "cpu-smoke" if self.smoke else "gpu", "versions": versions(),
                       "total_budget_s": args.total_budget_s, "stages": {}}
        slug = "".join(c if c.isalnum() else "-" for c in name).strip("-").lower()
        slug = "-".join(filter(None, slug.split("-")))
        folders = [] if self.smoke else [REPO / "bench" / "results"]
        folders += [args.out] if args.out else []
        self.paths = [f / f"{slug}-{self.result['date']}.json" for f in folders]

    # ---- bookkeeping ----
    def write(self) -> None:
        self.result["wall_s"] = time.perf_counter() - self.t0
        self.result["correctness_pass"] = self.ok
        text = json.dumps(self.result, indent=1, default=_json_default)
        for path in self.paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)

    def stage(self, name: str, fn) -> None:
        budget_s = STAGES[name][1 if self.smoke else 0]
        left = self.deadline - time.perf_counter()
        if name == "train_run":  # use what earlier stages left, keeping the eval stage's budget
            later = STAGES["eval"][1 if self.smoke else 0] if "eval" in self.args.stages else 0
            budget_s = max(budget_s, min(TRAIN_RUN_STRETCH_S if not self.smoke else budget_s, left - later))
        entry: dict = {"budget_s": round(budget_s, 1)}
        self.result["stages"][name] = entry
        print(f"\n== {name} (budget {budget_s:.0f} s, {left:.0f} s of the total left)", flush=True)
        if left < 0.5 * budget_s:
            entry["status"] = "skipped"
            entry["note"] = f"total budget of {self.args.total_budget_s:.0f} s nearly spent ({left:.0f} s left)"
            print(f"  skipped: {entry['note']}", flush=True)
            self.write()
            return
        budget = Budget(min(budget_s, left))
        grace = max(15.0, 0.3 * budget_s)

        def on_alarm(signum, frame):
            raise StageTimeout(f"stage {name} passed its budget of {budget_s:.0f} s + {grace:.0f} s grace")

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, budget.seconds + grace)
        t0 = time.perf_counter()
        try:
            fn(budget, entry)
            entry.setdefault("status", "ok")
        except StageTimeout as err:
            entry["status"], entry["note"] = "timeout", str(err)
        except subprocess.TimeoutExpired as err:
            entry["status"], entry["note"] = "timeout", f"subprocess passed {err.timeout:.0f} s"
            entry["output_tail"] = tail(_text(err.stdout)) + tail(_text(err.stderr), 1000)
        except Exception as err:  # one broken stage must not lose the others' results
            entry["status"], entry["error"] = "error", f"{type(err).__name__}: {err}"
            entry["traceback"] = tail(traceback.format_exc(), 4000)
            print(entry["traceback"], flush=True)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            entry["wall_s"] = round(time.perf_counter() - t0, 2)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            self.write()
        print(f"  -> {entry['status']} in {entry['wall_s']:.1f} s" + (f": {entry.get('note') or entry.get('error')}"
              if entry["status"] != "ok" else ""), flush=True)

    # ---- (0) kernel tests ----
    def kernel_tests(self, budget: Budget, out: dict) -> None:
        # test_aot compiles for sm_90 without a GPU (~30 s of host CPU); on the GPU the kernels compile for real
        cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "tests/backends/triton",
               "--ignore=tests/backends/triton/test_aot.py", "--device", self.device.type]
        if self.smoke:
            cmd.append("--collect-only")  # the interpreter takes minutes for the whole file: check the call only
        out["command"] = " ".join(cmd[1:])
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=max(5.0, budget.left()))
        lines = proc.stdout.strip().splitlines()
        out.update(returncode=proc.returncode, summary=lines[-1] if lines else tail(proc.stderr, 300))
        if proc.returncode != 0:
            out["output_tail"] = tail(proc.stdout) + tail(proc.stderr, 1000)
            self.ok = False
        print(f"  {out['summary']}", flush=True)

    # ---- (0) correctness of the kernels ----
    def correctness(self, budget: Budget, out: dict) -> None:
        device, rows = self.device, out.setdefault("rows", [])
        n_random, duration = (2, 0.02) if self.smoke else (64, 1.0)

        def record(**row):
            row["pass"] = bool(row.pop("passed"))
            self.ok &= row["pass"]
            rows.append(row)
            print(f"  {row['case']:52s} {row['metric']:28s} {row['value']:.3e}  limit {row['limit']:.1e}  "
                  f"{'ok' if row['pass'] else 'FAIL'}", flush=True)

        synths = {name: (get_synth(name, backend="triton", duration=duration), get_synth(name, duration=duration))
                  for name in SYNTHS}
        for counts in ((1, 0, 0, 1), (0, 1, 1, 0)):
            kw = dict(zip(("sine", "square_saw", "fm_sine", "fm_square_saw"), counts), duration=duration)
            synths[f"parametric{counts}"] = (ParametricSynth(backend="triton", **kw), ParametricSynth(**kw))
        for name, (synth, ref) in synths.items():
            if budget.spent():
                out["note"] = f"stopped at the budget before {name}"
                break
            theta = synth.random_params(n_random, seed=1, device=device, dtype=torch.float64)
            theta = torch.cat([theta, torch.zeros_like(theta[:1]), torch.ones_like(theta[:1])])
            truth = ref(theta, seed=2)
            audio = synth(theta, seed=2)
            err = float((audio - truth).abs().max())
            record(case=f"{name} float64 ({n_random} random + 2 corners)", metric="max abs vs reference",
                   value=err, limit=1e-9, passed=err <= 1e-9)
            for label, kw, limit in (("float32", {}, 1e-3 if name == "voice" else 1e-2),
                                     ("float32 phase32", {"phase_dtype": torch.float32}, float("inf"))):
                r = rel_l2(kernel_render(synth, theta.float().clamp(synth.eps, 1.0), seed=2, **kw), truth)
                record(case=f"{name} {label}", metric="rel L2 median", value=float(np.median(r)), limit=limit,
                       passed=True)
                record(case=f"{name} {label}", metric="rel L2 worst", value=float(r.max()), limit=limit,
                       passed=r.max() <= limit)
        if self.smoke or not self.synthax.is_dir():
            out["synthax"] = "not checked: " + ("--cpu-smoke" if self.smoke else f"{self.synthax} not found")
            print(f"  SynthAX renders {out['synthax']}", flush=True)
            return
        for name, key in SYNTHAX_FILES.items():
            data = np.load(self.synthax / f"{key}.npz")
            synth = synths[name][0]
            noise = torch.tensor(data["noise_f32"], device=device)
            for which in ("init", "aug"):
                theta = torch.tensor(data[f"params_{which}"], device=device).clamp(synth.eps, 1.0)
                truth = torch.tensor(data[f"premix_{which}_f64"])
                synthax = float(rel_l2(torch.tensor(data[f"premix_{which}_f32"]), truth).max())
                r = rel_l2(kernel_render(synth, theta, noise=noise, normalize=False), truth)
                limit = 1e-3 if name == "voice" else synthax / 10
                record(case=f"{name} SynthAX {which} float32 (SynthAX f32 worst {synthax:.2e})",
                       metric="rel L2 worst vs SynthAX f64", value=float(r.max()), limit=limit, passed=r.max() <= limit)

    # ---- synth throughput ----
    def synth_bench(self, budget: Budget, out: dict) -> None:
        device = self.device
        batches, impls = ((4,), ("triton", "torch")) if self.smoke else ((768, 4096), BENCH_ORDER)
        warmup, repeats = (0, 1) if self.smoke else (2, 5)
        copy_gbps = copy_bandwidth(device, n_bytes=1 << 20 if self.smoke else 1 << 30)
        out["copy_bandwidth_gbps"] = copy_gbps
        print(f"  device copy bandwidth (read + write): {copy_gbps:.0f} GB/s", flush=True)
        rows = out.setdefault("rows", [])
        for batch in batches:
            for name in SYNTHS:
                for impl in impls:
                    row = {"synth": name, "batch": batch, "impl": impl}
                    rows.append(row)
                    if budget.spent() and not impl.startswith("triton"):
                        row["skipped"] = "stage budget spent"
                    else:
                        try:
                            times = time_case(make_case(impl, name, batch, device), device, warmup, repeats)
                            row.update(stats(times), **throughput(statistics.median(times), batch, copy_gbps))
                        except Unavailable as why:
                            row["skipped"] = str(why)
                        except Exception as err:  # a baseline that breaks on this image is reported, not fatal
                            row["skipped"] = f"failed: {type(err).__name__}: {str(err)[:200]}"
                    done = (f"{row['median_s'] * 1e3:9.2f} ms {row['sounds_per_s']:12.0f} sounds/s"
                            if "median_s" in row else row["skipped"])
                    print(f"  {name:10s} {batch:5d} {impl:14s} {done}", flush=True)
        for row in rows:
            anchor = next((r for r in rows if r["synth"] == row["synth"] and r["batch"] == row["batch"]
                           and r["impl"] == "triton" and "median_s" in r), None)
            if anchor and "median_s" in row:
                row["triton_speedup"] = row["median_s"] / anchor["median_s"]

    # ---- forward + backward throughput ----
    def grad_bench(self, budget: Budget, out: dict) -> None:
        device = self.device
        batch = 2 if self.smoke else 64
        warmup, repeats = (0, 1) if self.smoke else (1, 5)
        rows = out.setdefault("rows", [])
        for name in SYNTHS:
            per_impl = {}
            for backend in ("triton", "torch"):
                row = {"synth": name, "batch": batch, "impl": backend}
                rows.append(row)
                if budget.spent():
                    row["skipped"] = "stage budget spent"
                    continue
                synth = get_synth(name, backend=backend, duration=0.05 if self.smoke else 1.0)
                theta0 = synth.random_params(batch, seed=0, device=device)
                weights = torch.randn(batch, synth.n_samples, device=device,
                                      generator=torch.Generator(device=device).manual_seed(0))

                def step(synth=synth, theta0=theta0, weights=weights):
                    theta = theta0.clone().requires_grad_(True)
                    (synth(theta, validate=False) * weights).mean().backward()
                    return theta.grad

                try:
                    times = timed(step, device, repeats, warmup, budget)
                except ValueError as err:  # a backend without a backward refuses (never drops) the gradient
                    row["skipped"] = str(err)
                    print(f"  {name:10s} {backend:7s} {err}", flush=True)
                    continue
                row.update(stats(times), sounds_per_s=batch / statistics.median(times))
                per_impl[backend] = row
                print(f"  {name:10s} {backend:7s} {row['median_s'] * 1e3:9.2f} ms {row['sounds_per_s']:10.0f} "
                      "sounds/s (fwd + bwd)", flush=True)
            if "triton" in per_impl and "torch" in per_impl:
                per_impl["triton"]["speedup_over_reference"] = per_impl["torch"]["median_s"] / per_impl["triton"]["median_s"]

    # ---- audio-kernel launch configuration sweep ----
    def tune(self, budget: Budget, out: dict) -> None:
        from doppel_torch.backends.triton import synth as kernels

        device, batch = self.device, 2 if self.smoke else 2 * self._batch()
        synth = get_synth("voicefm", backend="torch", duration=0.05 if self.smoke else 1.0).to(device)
        theta = synth.random_params(batch, seed=1).to(device)
        grid = {torch.float64: [(t, w) for t in (256, 512, 1024) for w in (4, 8)],
                torch.float32: [(t, w) for t in (128, 256) for w in (4, 8)]}  # float32 phase: accuracy caps chunks at 256
        default = kernels.block_sizes
        rows = out.setdefault("rows", [])
        try:
            for phase, configs in grid.items():
                for block_t, warps in configs:
                    row = {"phase_dtype": str(phase).split(".")[-1], "BLOCK_T": block_t, "num_warps": warps,
                           "default": default(synth.n_samples, phase) == {"BLOCK_T": block_t, "num_warps": warps}}
                    rows.append(row)
                    if budget.spent():
                        row["skipped"] = "stage budget spent"
                        continue
                    kernels.block_sizes = lambda n, p, b=block_t, w=warps: {"BLOCK_T": b, "num_warps": w}
                    times = timed(lambda: kernel_render(synth, theta, phase_dtype=phase), device,
                                  rounds=1 if self.smoke else 5, warmup=1, budget=budget)
                    row.update(stats(times), sounds_per_s=batch / statistics.median(times))
                    print(f"  {row['phase_dtype']} BLOCK_T {block_t:5d} warps {warps}: {row['median_s'] * 1e3:8.2f} ms "
                          f"{row['sounds_per_s']:12.0f} sounds/s" + ("  (default)" if row["default"] else ""), flush=True)
        finally:
            kernels.block_sizes = default
        for phase in {r["phase_dtype"] for r in rows}:
            done = [r for r in rows if r["phase_dtype"] == phase and "median_s" in r]
            base = next((r for r in done if r["default"]), None)
            if done and base:
                best = min(done, key=lambda r: r["median_s"])
                out[f"best_{phase}"] = {"BLOCK_T": best["BLOCK_T"], "num_warps": best["num_warps"],
                                        "speedup_over_default": base["median_s"] / best["median_s"]}

    # ---- (a) log-mel frontend: torch.stft vs matmul ----
    def frontend(self, budget: Budget, out: dict) -> None:
        from doppel_torch.frontend import LogMelFrontend

        device = self.device
        batches = (4,) if self.smoke else (100, 1536)
        fronts = {m: LogMelFrontend(method=m).to(device) for m in ("stft", "matmul")}
        audio = torch.randn(max(batches), 16000, device=device, generator=None) * 0.3
        with torch.no_grad():
            ref = LogMelFrontend().double().to(device)(audio[: batches[0]].double())
            diffs = {m: float((f(audio[: batches[0]]).double() - ref).abs().max()) for m, f in fronts.items()}
        out["max_abs_vs_float64"] = diffs
        out["agree_1e-3"] = all(d <= 1e-3 for d in diffs.values())
        self.ok &= out["agree_1e-3"]
        print(f"  max abs vs float64 frontend: {diffs}", flush=True)
        rows = out.setdefault("rows", [])
        for batch in batches:
            x = audio[:batch].contiguous()
            for method, f in fronts.items():
                if budget.spent():
                    out["note"] = "stopped at the budget"
                    break

                def run(f=f, x=x):
                    with torch.no_grad():
                        return f(x)

                s = stats(timed(run, device, rounds=2 if self.smoke else 10, warmup=1, budget=budget))
                rows.append({"method": method, "batch": batch, **s, "sounds_per_s": batch / s["median_s"]})
                print(f"  {method:7s} batch {batch:5d}: {s['median_s'] * 1e3:8.3f} ms", flush=True)
            timed_here = {r["method"]: r["median_s"] for r in rows if r["batch"] == batch}
            if len(timed_here) == 2:
                out[f"faster_at_{batch}"] = min(timed_here, key=timed_here.get)
                out[f"stft_over_matmul_at_{batch}"] = timed_here["stft"] / timed_here["matmul"]
        if f"faster_at_{batches[-1]}" in out:
            out["recommended_method"] = out[f"faster_at_{batches[-1]}"]
            print(f"  faster at batch {batches[-1]}: {out['recommended_method']} "
                  f"(stft / matmul = {out[f'stft_over_matmul_at_{batches[-1]}']:.2f}); LogMelFrontend's default "
                  "is 'stft'", flush=True)

    # ---- (b) data share of a training step ----
    def _batch(self) -> int:
        return 4 if self.smoke else 768

    def _trainer_overrides(self) -> dict:
        return {"data.backend": "torch", "model.width": 8} if self.smoke else {}

    def data_share(self, budget: Budget, out: dict) -> None:
        from test_augment import make_pipeline
        from test_train_step import make_trainer

        from doppel_torch.train.data import train_indices

        device, batch = self.device, self._batch()
        rounds, warmup = (1, 1) if self.smoke else (5, 2)
        out.update(batch=batch, synth="voicefm", target=DATA_SHARE_TARGET,
                   what="t(pairs + augmentation with reverb + log-mel) / t(full training step with the same "
                        "augmentation, bf16 autocast, channels-last), both synchronised medians")
        for key, augment in (("data_aug", True), ("data_noaug", False)):
            run = make_pipeline(device, batch=batch, augment=augment, synth_name="voicefm", ir_dir=self.rirs)
            s = stats(timed(run, device, rounds, warmup, budget))
            out[key] = {**s, "pairs_per_s": batch / s["median_s"]}
            print(f"  {key:10s} {s['median_s'] * 1e3:9.2f} ms", flush=True)
        trainer = make_trainer(device, batch, precision="bf16", channels_last=True, compile=False, tmp=self.work,
                               synth="voicefm", overrides={"data.augment": True, "data.ir_dir": str(self.rirs),
                                                           **self._trainer_overrides()})

        def step():
            idx = train_indices(trainer.step, 0, 1, batch, trainer.config.data.n_val, device)
            return trainer.train_step(idx, *trainer.pairs(idx))

        s = stats(timed(step, device, rounds, warmup, budget))
        out["step_aug_bf16_cl"] = {**s, "pairs_per_s": batch / s["median_s"]}
        out["data_share"] = out["data_aug"]["median_s"] / s["median_s"]
        out["meets_target"] = out["data_share"] < DATA_SHARE_TARGET
        print(f"  step (aug, bf16, channels-last) {s['median_s'] * 1e3:9.2f} ms; data share "
              f"{out['data_share']:.1%} (target < {DATA_SHARE_TARGET:.0%})", flush=True)

    # ---- (c) full training step and the recipe projection ----
    def train_step(self, budget: Budget, out: dict) -> None:
        from test_train_step import make_trainer

        from doppel_torch.train.config import TrainConfig
        from doppel_torch.train.data import train_indices

        device, batch = self.device, self._batch()
        cases = [("fp32", "fp32", False, False, False), ("bf16_cl", "bf16", True, False, False)]
        if device.type == "cuda":
            cases += [("bf16_cl_cudnn_benchmark", "bf16", True, False, True),
                      ("bf16_cl_compile", "bf16", True, True, False)]
        rounds = 1 if self.smoke else 10
        paper = TrainConfig()
        steps = paper.steps_per_epoch(1) * paper.optim.epochs
        recipe_pairs = steps * paper.optim.batch_size
        val_pairs = paper.optim.epochs * (paper.data.n_val // paper.optim.batch_size) * paper.optim.batch_size
        out.update(batch=batch, synth="voicefm", recipe_train_pairs=recipe_pairs, recipe_val_pairs=val_pairs,
                   projection_how=(f"recipe minutes = ({recipe_pairs:,} training pairs [{paper.optim.epochs} epochs x "
                                   f"{paper.steps_per_epoch(1)} steps x {paper.optim.batch_size}] / pairs_per_s + "
                                   f"{val_pairs:,} validation pairs / (3 x pairs_per_s) [forward only, ~1/3 of a "
                                   "step]) / 60; pairs_per_s = batch / median synchronised step (pairs -> log-mel -> "
                                   "ResNet18 fwd/bwd -> SGD), one GPU, no augmentation (the CLI default)"))
        results = out.setdefault("cases", {})
        for label, precision, cl, comp, cudnn_bench in cases:
            if budget.spent():
                results[label] = {"skipped": "stage budget spent"}
                continue
            torch.backends.cudnn.benchmark = cudnn_bench
            try:
                trainer = make_trainer(device, batch, precision=precision, channels_last=cl, compile=comp,
                                       tmp=self.work, synth="voicefm", overrides=self._trainer_overrides())

                def step():
                    idx = train_indices(trainer.step, 0, 1, batch, trainer.config.data.n_val, device)
                    return trainer.train_step(idx, *trainer.pairs(idx))

                t_warm = time.perf_counter()
                warmup = 3 if comp else (1 if self.smoke else 2)
                times = timed(step, device, rounds, warmup, budget)
                s = stats(times)
                pps = batch / s["median_s"]
                results[label] = {**s, "warmup_s": time.perf_counter() - t_warm - sum(times), "pairs_per_s": pps,
                                  "recipe_min": (recipe_pairs / pps + val_pairs / (3 * pps)) / 60,
                                  "precision": precision, "channels_last": cl, "compile": comp,
                                  "cudnn_benchmark": cudnn_bench}
                print(f"  {label:25s} {s['median_s'] * 1e3:9.2f} ms {pps:10.0f} pairs/s  recipe "
                      f"{results[label]['recipe_min']:7.1f} min", flush=True)
            finally:
                torch.backends.cudnn.benchmark = False
                trainer = None
            self._summarize_steps(out)
            self.write()
        if "best" in out:
            print(f"  best {out['best']}: {out['best_pairs_per_s']:.0f} pairs/s -> paper's recipe "
                  f"{out['recipe_min']:.1f} min on this device", flush=True)

    def _summarize_steps(self, out: dict) -> None:
        """Best case, projection, compile speed-up and the no-augmentation data share, from the cases so far."""
        timed_cases = {k: v for k, v in out["cases"].items() if "pairs_per_s" in v}
        if not timed_cases:
            return
        best = max(timed_cases, key=lambda k: timed_cases[k]["pairs_per_s"])
        out.update(best=best, best_pairs_per_s=timed_cases[best]["pairs_per_s"],
                   recipe_min=timed_cases[best]["recipe_min"])
        out["meets_15_min"] = out["recipe_min"] < 15
        if "bf16_cl_compile" in timed_cases and "bf16_cl" in timed_cases:
            out["compile_speedup"] = (timed_cases["bf16_cl_compile"]["pairs_per_s"]
                                      / timed_cases["bf16_cl"]["pairs_per_s"])
        share = self.result["stages"].get("data_share", {})
        if "data_noaug" in share and "bf16_cl" in timed_cases:
            out["data_share_noaug"] = share["data_noaug"]["median_s"] / timed_cases["bf16_cl"]["median_s"]

    # ---- (d) a short real training run ----
    def train_run(self, budget: Budget, out: dict) -> None:
        run_dir = self.work / "run"
        epochs, batch = (2, 8) if self.smoke else (10, 768)
        if self.smoke:
            sounds, pps = 40, None
        else:
            pps = self.result["stages"].get("train_step", {}).get("cases", {}).get("bf16_cl", {}).get("pairs_per_s")
            pps_used = pps or 5000.0  # a guess when train_step did not run: the SIGINT at the budget still ends it
            train_s = max(10.0, budget.left() - 40)  # start-up, kernel builds, validation, checkpoints
            steps_per_epoch = max(1, int(0.9 * pps_used * train_s / batch) // epochs)
            n_train = steps_per_epoch * batch
            sounds = int(round(n_train / 0.9))
            while sounds - max(2, round(0.1 * sounds)) < n_train:
                sounds += 1
            out["sized_from_pairs_per_s"] = pps_used
        args = ["train", "--synth", "voicefm", "--epochs", str(epochs), "--sounds-per-epoch", str(sounds),
                "--out", str(run_dir), "--no-progress", "--no-tensorboard", "--examples", "0", "--log-every", "10"]
        if self.smoke:
            args += ["--device", "cpu", "--backend", "torch", "--width", "8", "--batch-size", str(batch),
                     "--log-every", "1"]
        out.update(command="doppel-torch " + " ".join(args), epochs=epochs, sounds_per_epoch=sounds)
        print(f"  {out['command']}", flush=True)
        log_path = self.work / "train.log"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        t0 = time.perf_counter()
        with open(log_path, "w") as log:
            proc = subprocess.Popen([sys.executable, "-c", CLI, *args], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                    env=env)
            try:
                try:  # SIGINT 20 s before the budget ends: the trainer finishes its step, checkpoints and stops
                    proc.wait(timeout=max(1.0, budget.left() - 20))
                except subprocess.TimeoutExpired:
                    out["note"] = "SIGINT 20 s before the stage budget: the trainer checkpointed and stopped"
                    proc.send_signal(signal.SIGINT)
                    proc.wait(timeout=max(5.0, budget.left() + 10))
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        out.update(returncode=proc.returncode, wall_s=time.perf_counter() - t0)
        text = log_path.read_text(errors="replace")
        out["log_tail"] = tail(text, 2500)
        ckpt = run_dir / "last.pt"
        out["checkpoint"] = str(ckpt) if ckpt.is_file() else None
        rows = []
        if (run_dir / "metrics.csv").is_file():
            with open(run_dir / "metrics.csv", newline="") as f:
                rows = [{k: (v if k == "kind" else float(v)) for k, v in r.items()} for r in csv.DictReader(f)]
        out["metrics"] = rows[-60:]
        train_rows = [r for r in rows if r["kind"] == "train"]
        if train_rows:
            steady = [r["pairs_per_s"] for r in train_rows[1:]] or [train_rows[0]["pairs_per_s"]]
            out.update(steps=int(train_rows[-1]["step"]), pairs_seen=int(train_rows[-1]["step"]) * batch,
                       pairs_per_s_steady=statistics.median(steady))
            if not self.smoke:
                rp = self.result["stages"].get("train_step", {}).get("recipe_train_pairs", 200 * 117 * 768)
                out["recipe_min_from_run"] = rp / out["pairs_per_s_steady"] / 60
        val = [r for r in rows if r["kind"] == "val"]
        if val:
            out["val_first"] = {k: val[0][k] for k in ("step", "loss", "align", "uniform")}
            out["val_last"] = {k: val[-1][k] for k in ("step", "loss", "align", "uniform")}
        print("  " + "\n  ".join(text.strip().splitlines()[-4:]), flush=True)
        if proc.returncode not in (0, 128 + signal.SIGINT) or ckpt is None:
            raise RuntimeError(f"training exited with {proc.returncode}; see log_tail")

    # ---- (d) FSDD evaluation of the run's checkpoint ----
    def eval(self, budget: Budget, out: dict) -> None:
        ckpt = self.result["stages"].get("train_run", {}).get("checkpoint")
        if not ckpt or not Path(ckpt).is_file():
            out["status"], out["note"] = "skipped", "no checkpoint from train_run"
            return
        seeds = (0,) if self.smoke else (0, 1, 2)
        extra = ["--max-files", "60", "--max-epochs", "5"] if self.smoke else []
        env = {**os.environ, "OMP_NUM_THREADS": "2",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        jobs = {}
        for task in ("fsdd-digit", "fsdd-speaker"):
            for seed in seeds:
                folder = self.work / f"eval-{task}-{seed}"
                args = ["eval", ckpt, "--task", f"{task}:{self.fsdd}", "--seeds", str(seed), "--out", str(folder),
                        "--no-cache", "-q", "--device", self.device.type, *extra]
                log = open(self.work / f"eval-{task}-{seed}.log", "w")
                jobs[(task, seed)] = (subprocess.Popen([sys.executable, "-c", CLI, *args], cwd=REPO, stdout=log,
                                                       stderr=subprocess.STDOUT, env=env), folder, log)
        out["command"] = " ".join(["doppel-torch eval", ckpt, "--task", f"{{fsdd-digit,fsdd-speaker}}:{self.fsdd}",
                                   "--seeds", "{" + ",".join(map(str, seeds)) + "}", "--out", "DIR", *args[8:]])
        print(f"  {out['command']} ({len(jobs)} processes)", flush=True)
        try:
            for proc, _, _ in jobs.values():
                try:
                    proc.wait(timeout=max(0.1, budget.left()))
                except subprocess.TimeoutExpired:
                    pass
        finally:
            for proc, _, log in jobs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                log.close()
        runs: dict = {}
        tasks: dict = {}
        failed = []
        for (task, seed), (proc, folder, _) in jobs.items():
            report = folder / "eval.json"
            if proc.returncode != 0 or not report.is_file():
                log_text = (self.work / f"eval-{task}-{seed}.log").read_text(errors="replace")
                failed.append({"task": task, "seed": seed, "returncode": proc.returncode,
                               "log_tail": tail(log_text, 800)})
                continue
            data = json.loads(report.read_text())
            for name, t in data["tasks"].items():
                tasks[name] = {k: t[k] for k in ("metric", "n_files", "n_used", "chance", "splits")}
                for extractor, res in t["results"].items():
                    runs.setdefault(name, {}).setdefault(extractor, []).extend(res["runs"])
        if failed:
            out["failed"] = failed
        from doppel_torch.eval.evaluate import summarize

        table = {}
        for name, by_extractor in runs.items():
            table[name] = {}
            for extractor, rs in by_extractor.items():
                extractor = "doppelganger (train_run)" if extractor not in ("random-init", "log-mel") else extractor
                table[name][extractor] = summarize(rs)
        out.update(tasks=tasks, results=table, seeds=list(seeds),
                   note_runs="mean +- std (ddof 1) over every (fold, seed) run, as `doppel-torch eval` reports")
        for name, rows in table.items():
            chance = tasks[name]["chance"]
            print(f"  {name} ({tasks[name]['metric']}, chance {chance:.3f}): " + ", ".join(
                f"{e} {r['mean']:.3f} +- {r['std']:.3f} (n {r['n']})" for e, r in rows.items()), flush=True)
        if failed and not table:
            raise RuntimeError(f"every eval process failed: {failed[0]['log_tail'][-400:]}")


def _text(value) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return str(value)


def versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    for module in ("triton", "torchaudio", "torch_audiomentations", "soundfile", "jax", "synthax", "torchsynth",
                   "numpy"):
        try:
            out[module] = getattr(__import__(module), "__version__", "unknown")
        except Exception as err:  # report what is missing rather than fail the check
            out[module] = f"unavailable ({type(err).__name__}: {str(err)[:80]})"
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commit", default=None, help="git commit of the checkout (default: git rev-parse HEAD)")
    parser.add_argument("--shared-dir", type=Path, default=REPO.parent / "shared",
                        help="the project's shared folder (data/fsdd, data/rirs, reference/synthax); on the GPU "
                             "machine .gpu/shared")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here (the device tool's $OUT)")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--total-budget-s", type=float, default=None,
                        help="stages that no longer fit are skipped (default 410 on the GPU, 185 in --cpu-smoke)")
    parser.add_argument("--cpu-smoke", action="store_true", help="every stage at tiny sizes on the CPU")
    args = parser.parse_args()
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(args.stages) - set(STAGES))
    if unknown:
        parser.error(f"unknown stages {unknown}; choose from {', '.join(STAGES)}")
    if args.total_budget_s is None:
        args.total_budget_s = 185.0 if args.cpu_smoke else 410.0
    if args.cpu_smoke:
        device = torch.device("cpu")
        args.out = args.out or Path(tempfile.gettempdir()) / "gpu_check_smoke"
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        print("gpu_check.py needs a CUDA device; none is visible (use --cpu-smoke to check the script on CPU)",
              file=sys.stderr)
        return 2
    if args.commit is None:
        try:
            args.commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                         check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            args.commit = "unknown"
    check = Check(args, device)
    print(f"{check.result['device']}, commit {args.commit}, {check.result['versions']}", flush=True)
    for name in STAGES:
        if name in args.stages:
            check.stage(name, getattr(check, name))
    print_summary(check.result)
    check.write()
    for path in check.paths:
        print(f"wrote {path}")
    print(f"correctness: {'all passed' if check.ok else 'FAILURES above'}; "
          f"total {time.perf_counter() - check.t0:.0f} s")
    return 0 if check.ok else 1


def print_summary(result: dict) -> None:
    st = result["stages"]
    print("\n== summary")
    for name, entry in st.items():
        print(f"  {name:13s} {entry.get('status', '?'):8s} {entry.get('wall_s', 0):6.1f} s / {entry['budget_s']:.0f} s"
              + (f"  {entry.get('note') or entry.get('error')}" if entry.get("status") != "ok" else ""))
    fe, ds, ts, tr = (st.get(k, {}) for k in ("frontend", "data_share", "train_step", "train_run"))
    for key in sorted(k for k in st.get("tune", {}) if k.startswith("best_")):
        best = st["tune"][key]
        print(f"  audio kernel, {key[5:]} phase: best BLOCK_T {best['BLOCK_T']} x {best['num_warps']} warps, "
              f"{best['speedup_over_default']:.2f}x the default")
    faster = sorted(k for k in fe if k.startswith("faster_at_"))
    for key in faster:
        batch = key.rsplit("_", 1)[1]
        ratio = fe[f"stft_over_matmul_at_{batch}"]
        print(f"  log-mel: {fe[key]} is faster at batch {batch} (stft / matmul = {ratio:.2f})")
    if "data_share" in ds:
        print(f"  data share of a bf16 step (with augmentation): {ds['data_share']:.1%} (target < 5 %)"
              + (f"; without augmentation {ts['data_share_noaug']:.1%}" if "data_share_noaug" in ts else ""))
    if "recipe_min" in ts:
        print(f"  step: {ts['best']} {ts['best_pairs_per_s']:.0f} pairs/s -> paper's recipe {ts['recipe_min']:.1f} min"
              + (f"; torch.compile x{ts['compile_speedup']:.2f}" if "compile_speedup" in ts else ""))
    if "recipe_min_from_run" in tr and math.isfinite(tr["recipe_min_from_run"]):
        print(f"  train_run: {tr.get('steps')} steps, {tr['pairs_per_s_steady']:.0f} pairs/s steady -> "
              f"recipe {tr['recipe_min_from_run']:.1f} min")


if __name__ == "__main__":
    sys.exit(main())
