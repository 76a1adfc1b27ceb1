"""Sound matching: wall time of a `match` run, and how often random restarts recover a synth-rendered target.

    python bench/match_bench.py speed --backend torch              # 200 steps x 16 restarts, voice, 1 s (the issue's)
    python bench/match_bench.py speed --backend cpu                # the same with the fused backward, when it lands
    python bench/match_bench.py recovery --targets 20 --restarts 16 --steps 200 --duration 0.25
    python bench/match_bench.py recovery --targets 16 --delta 0.01 0.05 --pitch-semis 0.1 --pitch-step 0.05
    python bench/match_bench.py recovery --targets 8 --no-random --fit mixer adsr_1,adsr_2 mod_matrix 'lfo_*'
    python bench/match_bench.py recovery --backend cpu --targets 20 --pitch-scans 0 2   # random starts, scans or not

`speed` times `doppel_torch.match` end to end as the command runs it (defaults: no candidate pass), after a warm-up
call of one step. `recovery` renders
each target from a known theta (random, keyed by --target-seed) with the noise row the match renders with, runs
`match` from random restarts (and, with --delta, from starts perturbed around the known theta; with --fit, fitting
only those parameters from random values, the others held at the known theta's: `match(fit=...)`), and counts
restarts whose best loss falls under each threshold. Both write bench/results/match-<what>-<device>-<date>.json.
CPU timings move 2x with the machine's load: compare backends only within one run or one quiet period.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from doppel_torch import get_synth, match, rng, spectral_loss  # noqa: E402
from doppel_torch.matching import fit_columns, pitch_columns, starting_points  # noqa: E402
from test_synth import new_result_path  # noqa: E402  bench/test_synth.py

THRESHOLDS = (0.05, 0.1, 0.2, 0.5)


def _meta(device: torch.device) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "commit": commit,
            "device": name, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version()}


def _write(doc: dict, what: str, device: torch.device, out: Path | None) -> Path:
    path = out or new_result_path(f"match-{what}-{device.type}-{datetime.date.today().isoformat()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


def speed(args) -> None:
    device = torch.device(args.device)
    synth = get_synth(args.synth, backend=args.backend, duration=args.duration)
    target = synth(synth.random_params(1, seed=12345, device=device))[0].detach()
    match(synth, target, restarts=args.restarts, steps=1, seed=args.seed, pitch_scans=0)  # warm-up (kernel build)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = match(synth, target, restarts=args.restarts, steps=args.steps, seed=args.seed,
                   pitch_scans=args.pitch_scans)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - start
    doc = {**_meta(device), "what": "match wall time", "synth": args.synth, "backend": args.backend,
           "duration_s": args.duration, "restarts": args.restarts, "steps": args.steps, "candidates": 0,
           "pitch_scans": args.pitch_scans,
           "wall_s": round(wall, 3),
           "ms_per_step": round(1000 * wall / max(args.steps, 1), 2),
           "sounds_per_s_fwd_bwd": round(args.restarts * args.steps / wall, 1), "best_loss": result.loss}
    print(json.dumps(doc, indent=1))
    print(f"wrote {_write(doc, f'speed-{args.backend}', device, args.out)}")


def recovery(args) -> None:
    device = torch.device(args.device)
    synth = get_synth(args.synth, backend=args.backend, duration=args.duration)
    thetas = synth.random_params(args.targets, seed=args.target_seed, device=device)
    # each run's starts: (kind, value): random, around the target's theta (delta), or fitting some columns
    runs = {**({} if args.no_random else {("random" if k is None else f"random, {k} pitch scans"): ("random", k)
                                         for k in args.pitch_scans}),
            **{f"delta {d:g}": ("delta", d) for d in args.delta},
            **{f"fit {g}": ("fit", g.split(",")) for g in args.fit}}
    pitch = pitch_columns(synth)
    # a pitch column's spread in theta for --pitch-semis semitones: its human span (semitones) over the unit cube
    ends = synth.to_human(torch.stack([torch.zeros(synth.num_params), torch.ones(synth.num_params)]).double())
    semis_per_unit = (ends[1] - ends[0]).abs().float().to(device)

    def spread(delta: float) -> torch.Tensor:
        per_column = torch.full((synth.num_params,), delta, device=device)
        if args.pitch_semis is not None:
            per_column[pitch] = args.pitch_semis / semis_per_unit[pitch]
        return per_column
    rows = []
    start = time.perf_counter()
    for i in range(args.targets):
        noise = rng.noise(args.seed, torch.zeros(1, dtype=torch.int64, device=device), synth.n_samples)
        with torch.no_grad():
            target = synth(thetas[i : i + 1], noise=noise)[0]
            # the loss of the target's own theta with another noise row: what noise realisation alone costs
            other = rng.noise(args.seed + 1, torch.zeros(1, dtype=torch.int64, device=device), synth.n_samples)
            noise_floor = float(spectral_loss(synth(thetas[i : i + 1], noise=other), target))
        row = {"target": i, "noise_floor": noise_floor}
        for name, (kind, value) in runs.items():
            init, fit, scans = None, None, None
            if kind == "random":
                scans = value
            elif kind == "fit":  # those columns random (keyed by --seed), the others the target's
                fit, columns = value, fit_columns(synth, value)
                init = thetas[i].repeat(args.restarts, 1)
                fresh = starting_points(synth.num_params, args.restarts, args.seed, device=device)
                init[:, columns] = fresh[:, columns]
            elif kind == "delta":
                z = rng.normal(args.seed, rng.Stream.PERTURB_1, torch.arange(args.restarts), synth.num_params)
                init = (thetas[i] + spread(value) * z.to(device)).clamp(0.0, 1.0)
            r = match(synth, target, restarts=args.restarts, steps=args.steps, lr=args.lr, seed=args.seed,
                      candidates=(args.candidates or None) if init is None else None, init=init,
                      pitch_step=args.pitch_step, pitch_scans=scans, fit=fit)
            row[name] = {"best": r.loss, "restart_losses": [round(float(v), 5) for v in r.restart_losses],
                         "initial_median": float(r.initial_losses.median()), "seconds": round(r.seconds, 2)}
        rows.append(row)
        print(f"target {i}: noise floor {noise_floor:.3f}; " + "; ".join(
            f"{name}: best {row[name]['best']:.4f}, start median {row[name]['initial_median']:.3f}, "
            + "/".join(str(sum(v < t for v in row[name]["restart_losses"])) for t in THRESHOLDS)
            + f" restarts < {'/'.join(f'{t:g}' for t in THRESHOLDS)}" for name in runs), flush=True)
    summary = {}
    for name in runs:
        losses = torch.tensor([row[name]["restart_losses"] for row in rows])
        best = losses.min(dim=1).values
        summary[name] = {
            "restarts_under": {f"{t:g}": f"{int((losses < t).sum())}/{losses.numel()}" for t in THRESHOLDS},
            "targets_found_under": {f"{t:g}": f"{int((best < t).sum())}/{len(rows)}" for t in THRESHOLDS},
            "best_loss_median": float(best.median()),
            "start_loss_median": float(torch.tensor([row[name]["initial_median"] for row in rows]).median()),
            "match_seconds": round(sum(row[name]["seconds"] for row in rows), 1),
        }
    doc = {**_meta(device), "what": "match recovery of synth-rendered targets", "synth": args.synth,
           "backend": args.backend, "duration_s": args.duration, "targets": args.targets, "restarts": args.restarts,
           "steps": args.steps, "lr": args.lr, "candidates": args.candidates, "pitch_step": args.pitch_step,
           "delta_pitch_semitones": args.pitch_semis, "fit": args.fit, "pitch_scans": args.pitch_scans,
           "seed": args.seed,
           "target_seed": args.target_seed, "wall_s": round(time.perf_counter() - start, 1),
           "noise_floor_median": float(torch.tensor([r["noise_floor"] for r in rows]).median()),
           "summary": summary, "rows": rows}
    print(json.dumps({k: doc[k] for k in ("noise_floor_median", "summary", "wall_s")}, indent=1))
    print(f"wrote {_write(doc, 'recovery', device, args.out)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    for name, defaults in (("speed", dict(duration=1.0)), ("recovery", dict(duration=0.25))):
        p = sub.add_parser(name)
        p.add_argument("--synth", default="voice")
        p.add_argument("--backend", default="torch", help="torch | cpu | triton (must be differentiable)")
        p.add_argument("--device", default="cpu")
        p.add_argument("--duration", type=float, default=defaults["duration"])
        p.add_argument("--restarts", type=int, default=16)
        p.add_argument("--steps", type=int, default=200)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--out", type=Path, default=None)
        p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
        if name == "speed":
            p.add_argument("--pitch-scans", type=int, default=None, help="match(pitch_scans=) (default: match's)")
        if name == "recovery":
            p.add_argument("--targets", type=int, default=20)
            p.add_argument("--target-seed", type=int, default=1000)
            p.add_argument("--lr", type=float, default=0.05)
            p.add_argument("--candidates", type=int, default=0)
            p.add_argument("--delta", type=float, nargs="*", default=[],
                           help="also start every restart at the target's theta + delta * N(0, 1) (clipped)")
            p.add_argument("--pitch-semis", type=float, default=None,
                           help="with --delta: the pitch columns (pitch_columns) spread by this many semitones instead")
            p.add_argument("--pitch-step", type=float, default=1.0, help="match(pitch_step=)")
            p.add_argument("--fit", nargs="*", default=[], metavar="PATTERNS",
                           help="also fit only these parameters (one run per argument; commas join patterns), the "
                                "others held at the target's theta")
            p.add_argument("--no-random", action="store_true", help="skip the run from random restarts")
            p.add_argument("--pitch-scans", type=int, nargs="+", default=[None],
                           help="match(pitch_scans=) of the runs from random restarts, one run per value (default: "
                                "match's own)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    (speed if args.what == "speed" else recovery)(args)


if __name__ == "__main__":
    main()
