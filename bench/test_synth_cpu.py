"""CPU synth throughput, side by side in one run: backend="cpu" (native kernel) vs the torch reference (eager),
torch.compile(reference), torchsynth's Voice and SynthAX (jax.jit); voice, voicefm, parametric; batch 128,
16 kHz, 1 s, float32, torch's default thread count (the machine's cores).

    pytest bench/test_synth_cpu.py --benchmark -p no:cacheprovider

Each case: one timed first call (torch.compile / jax.jit compile there: `first_call_s`), one more warm-up, then
ROUNDS rounds, each after a SETTLE_S pause; sounds/s from the best round (load from other processes only ever
slows a round down). A last test interleaves the kernel, torchsynth and SynthAX round by round, so that load
changes hit all of them alike; its ratios are the ones to quote. The
anchors' own calls do not synchronise anything: on CPU there is nothing to wait for (JAX: block_until_ready).
A table of sounds/s and of the cpu backend's ratio to each anchor is printed at the end and written to
`bench/results/cpu-<cores>core-<date>.json` with the CPU model, versions, git commit and load average (also when only
the interleaved test ran: `-k side_by_side`).
Set DOPPEL_BENCH_SKIP_COMPILE=1 to skip the torch.compile cases (their compilation takes minutes on 2 cores).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import pytest
import torch

from doppel_torch import get_synth
from test_synth import Unavailable, cpu_model, make_case, new_result_path  # bench/test_synth.py: the anchors' cases, shared with gpu_check

BATCH = 128
ROUNDS = {"cpu": 15, "torchsynth": 7, "synthax": 7, "torch": 3, "torch_compile": 5}
SYNTHS = ("voice", "voicefm", "parametric")
IMPLS = ("cpu", "torchsynth", "synthax", "torch_compile", "torch")  # the anchors next to the kernel
CASES = [(name, impl) for name in SYNTHS for impl in IMPLS]

_RESULTS: dict[tuple[str, str], dict] = {}
_SIDE_BY_SIDE: dict[tuple[str, str], float] = {}  # (synth, impl) -> best seconds, rounds interleaved
SIDE_BY_SIDE_ROUNDS = 15
# Pause before every timed round: JAX's CPU worker threads keep spinning for ~0.2 s after a call and halve the
# throughput of whatever runs next (measured here: the cpu backend's parametric 910 sounds/s right after a
# SynthAX call, 1,665 after a 0.2 s pause, 1,786 without SynthAX), and torch's OpenMP pool suffers alike.
SETTLE_S = 0.25
# ... and the call right after a pause runs cold (threads asleep, caches and clocks down): voice on the cpu backend,
# batch 128, best of 10: 6.28 ms back to back, 8.96 ms right after a 0.25 s pause, 6.19 ms when one untimed call
# follows the pause. A short call suffers most, so every interleaved round (all implementations alike) makes one
# untimed call after its pause and times the next: steady-state throughput, as in a training loop.


def _cpu_case(name: str):
    synth = get_synth(name, sample_rate=16000, control_rate=480, duration=1.0, backend="cpu")
    theta = synth.random_params(BATCH, seed=0)

    def run():
        return synth(theta, validate=False)

    return run


def _versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for module in ("jax", "synthax", "torchsynth", "numpy"):
        try:
            out[module] = getattr(__import__(module), "__version__", "unknown")
        except Exception as err:  # report what is missing rather than fail the benchmark
            out[module] = f"unavailable ({type(err).__name__})"
    return out


@pytest.fixture(scope="module")
def ratio_table(request):
    yield _RESULTS
    if not _RESULTS and not _SIDE_BY_SIDE:
        return
    lines = [f"CPU synth throughput, batch {BATCH}, 16 kHz, 1 s, float32, {torch.get_num_threads()} threads, "
             f"{cpu_model()} ({os.cpu_count()} cores); best of rounds (1 s sounds: sounds/s = x realtime)",
             f"{'synth':10s} {'impl':14s} {'sounds/s':>10s} {'cpu / impl':>10s} {'first call s':>12s}"]
    rows = []
    for (name, impl), r in _RESULTS.items():
        ours = _RESULTS.get((name, "cpu"))
        ratio = ours["sounds_per_s"] / r["sounds_per_s"] if ours else float("nan")
        rows.append(dict(synth=name, impl=impl, ratio_cpu_over_impl=ratio, **r))
        lines.append(f"{name:10s} {impl:14s} {r['sounds_per_s']:10.0f} {ratio:10.2f} "
                     f"{r['first_call_s']:12.1f}")
    if _SIDE_BY_SIDE:
        lines.append(f"interleaved: each of {SIDE_BY_SIDE_ROUNDS} rounds runs every case once (same load for all); "
                     "best round")
        for name in SYNTHS:
            ours = _SIDE_BY_SIDE.get((name, "cpu"))
            for impl in ("torchsynth", "synthax"):
                other = _SIDE_BY_SIDE.get((name, impl))
                if ours and other:
                    lines.append(f"  {name:10s} cpu {BATCH / ours:7.0f} sounds/s  {impl:10s} "
                                 f"{BATCH / other:7.0f} sounds/s  ratio {other / ours:5.2f}x")
            if ours and ("voice", "torchsynth") in _SIDE_BY_SIDE and name != "voice":
                other = _SIDE_BY_SIDE[("voice", "torchsynth")]
                lines.append(f"  {name:10s} cpu vs torchsynth Voice: {other / ours:5.2f}x")
    voice_ts = _RESULTS.get(("voice", "torchsynth"))
    if voice_ts:
        for name in SYNTHS:
            if (name, "cpu") in _RESULTS:
                ratio = _RESULTS[(name, "cpu")]["sounds_per_s"] / voice_ts["sounds_per_s"]
                lines.append(f"{name} cpu vs torchsynth Voice: {ratio:.2f}x")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    for line in lines:
        reporter.write_line(line)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                                cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    date = datetime.date.today().isoformat()
    result = {"device": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(), "date": date,
              "commit": commit, "versions": _versions(), "batch": BATCH, "rows": rows,
              "interleaved_best_sounds_per_s": {f"{n}/{i}": BATCH / t for (n, i), t in _SIDE_BY_SIDE.items()},
              "interleaved_ratio_cpu_over": {f"{n}/{i}": t / _SIDE_BY_SIDE[(n, "cpu")]
                                             for (n, i), t in _SIDE_BY_SIDE.items() if i != "cpu" and (n, "cpu") in _SIDE_BY_SIDE},
              "load_average": os.getloadavg()}
    path = new_result_path(f"cpu-{os.cpu_count()}core-{date}")
    path.write_text(json.dumps(result, indent=1))
    reporter.write_line(f"wrote {path}")


@pytest.mark.parametrize("name, impl", CASES, ids=[f"{n}-{i}" for n, i in CASES])
def test_cpu_synth_throughput(benchmark, ratio_table, name, impl):
    if impl == "torch_compile" and os.environ.get("DOPPEL_BENCH_SKIP_COMPILE") == "1":
        pytest.skip("DOPPEL_BENCH_SKIP_COMPILE=1")
    try:
        run = _cpu_case(name) if impl == "cpu" else make_case(impl, name, BATCH, torch.device("cpu"))
    except Unavailable as why:
        pytest.skip(str(why))
    start = time.perf_counter()
    run()  # compilation (torch.compile, jax.jit, the kernel's first build) happens here
    first_call_s = time.perf_counter() - start
    benchmark.group = f"{name} batch {BATCH} (cpu)"

    def settle_then_warm():  # returns None: pytest-benchmark reads a returned value as the call's (args, kwargs)
        time.sleep(SETTLE_S)
        run()

    benchmark.pedantic(run, setup=settle_then_warm, rounds=ROUNDS[impl], warmup_rounds=1, iterations=1)
    best = benchmark.stats.stats.min
    info = {"sounds_per_s": BATCH / best, "x_realtime": BATCH / best, "best_s": best,
            "median_s": benchmark.stats.stats.median, "first_call_s": first_call_s}
    benchmark.extra_info.update({k: round(v, 4) for k, v in info.items()})
    ratio_table[(name, impl)] = info


def test_cpu_side_by_side(ratio_table):
    """The kernel and the fast anchors (torchsynth, SynthAX jit) interleaved round by round, so a load change on
    a shared machine hits every case alike; the best round of each is kept (table at the end)."""
    cases = {}
    for name in SYNTHS:
        for impl in ("cpu", "torchsynth", "synthax"):
            try:
                cases[(name, impl)] = _cpu_case(name) if impl == "cpu" else make_case(impl, name, BATCH,
                                                                                     torch.device("cpu"))
            except Unavailable:
                continue
    for run in cases.values():  # compile and warm up
        run()
        run()
    best = {key: float("inf") for key in cases}
    for _ in range(SIDE_BY_SIDE_ROUNDS):
        for key, run in cases.items():
            time.sleep(SETTLE_S)
            run()  # untimed: the first call after a pause runs cold (measured: kernel 8.96 ms cold vs 6.19 warm)
            start = time.perf_counter()
            run()
            best[key] = min(best[key], time.perf_counter() - start)
    _SIDE_BY_SIDE.update(best)
