"""Augmentation chain: doppel-torch's batched per-example chain vs torch-audiomentations 0.12 on 100 one-second
sounds at 16 kHz (the paper's transforms: HPF 20-800 Hz, LPF 1.2-8 kHz, pitch +-2 semitones, shift +-25 %,
optionally reverb). Run: `pytest bench/test_augment.py --benchmark [--bench-device cpu|cuda]`.

`test_side_by_side` times every case in one run (median of interleaved repeats) and records the ratios
torch-audiomentations / doppel-torch in `extra_info`; the per-case tests give pytest-benchmark's statistics.
torch-audiomentations' ApplyImpulseResponse reads its files with `torchaudio.info/load`, which torchaudio 2.9
removed; its reverb cases use the same class with the files preloaded once (`TorchAudiomentationsChain`), which
only makes that baseline faster than the original (it loaded and resampled a file per call).
"""

from __future__ import annotations

import os
import statistics
import time
import warnings
from pathlib import Path

import pytest
import torch

from doppel_torch import get_synth
from doppel_torch.augment import AugmentChain, TorchAudiomentationsChain

# the project's shared folder next to the repository root, or DOPPEL_SHARED, as tests/conftest.py finds it
RIRS = Path(os.environ.get("DOPPEL_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data" / "rirs"
SR, N_SOUNDS = 16000, 100


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@pytest.fixture(scope="module")
def sounds(bench_device):
    synth = get_synth("voice", sample_rate=SR, duration=1.0)
    with torch.no_grad():
        audio = synth(synth.random_params(N_SOUNDS, seed=0), seed=0)
    return audio.to(bench_device)


def make_case(name: str, device: torch.device):
    """A zero-argument callable that augments the 100 sounds (argument bound later) and synchronises."""
    reverb = "reverb" in name
    p = 1.0 if "p=1" in name else 0.5
    if name.startswith("doppel_torch"):
        chain = AugmentChain(sample_rate=SR, p=p, ir_paths=RIRS if reverb else None).to(device)
        idx = torch.arange(N_SOUNDS, device=device)
        return lambda x: chain(x, idx)
    mode = "per_batch" if "per_batch" in name else "per_example"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        chain = TorchAudiomentationsChain(sample_rate=SR, p=p, ir_paths=RIRS if reverb else None, mode=mode, chunk_size=100)
    return lambda x: chain(x)


CASES = (
    "doppel_torch p=0.5",
    "doppel_torch p=1",
    "doppel_torch reverb p=0.5",
    "doppel_torch reverb p=1",
    "torch_audiomentations per_example p=0.5",
    "torch_audiomentations per_example p=1",
    "torch_audiomentations per_example reverb p=0.5",
    "torch_audiomentations per_example reverb p=1",
    "torch_audiomentations per_batch chunks of 100 p=0.5",
)


@pytest.mark.parametrize("case", CASES)
def test_augment(benchmark, case, sounds, bench_device):
    fn = make_case(case, bench_device)

    def run():
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = fn(sounds)
        synchronize(bench_device)
        return out

    run()  # warm-up (FFT plans, cached IR spectra)
    out = benchmark.pedantic(run, rounds=3, iterations=1)
    assert out.shape == sounds.shape and torch.isfinite(out).all()
    benchmark.extra_info.update(device=str(bench_device), sounds=N_SOUNDS, seconds_per_sound=1.0)


def test_side_by_side(benchmark, sounds, bench_device):
    """Every case interleaved, 3 repeats, medians in one run; ratios torch-audiomentations / doppel-torch."""
    fns = {case: make_case(case, bench_device) for case in CASES}
    times = {case: [] for case in CASES}

    def run_all():
        for case, fn in fns.items():
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.manual_seed(0)
                t0 = time.perf_counter()
                fn(sounds)
                synchronize(bench_device)
                times[case].append(time.perf_counter() - t0)

    run_all()  # warm-up
    for t in times.values():
        t.clear()
    load_before = os.getloadavg()
    benchmark.pedantic(run_all, rounds=3, iterations=1)
    load_after = os.getloadavg()
    med = {case: statistics.median(t) for case, t in times.items()}
    spread = {case: (min(t), max(t)) for case, t in times.items()}
    ratios = {
        "no reverb, p=0.5": med["torch_audiomentations per_example p=0.5"] / med["doppel_torch p=0.5"],
        "no reverb, p=1": med["torch_audiomentations per_example p=1"] / med["doppel_torch p=1"],
        "reverb, p=0.5": med["torch_audiomentations per_example reverb p=0.5"] / med["doppel_torch reverb p=0.5"],
        "reverb, p=1": med["torch_audiomentations per_example reverb p=1"] / med["doppel_torch reverb p=1"],
        "per_batch chunks vs ours, p=0.5": med["torch_audiomentations per_batch chunks of 100 p=0.5"] / med["doppel_torch p=0.5"],
    }
    benchmark.extra_info.update(
        device=str(bench_device),
        median_s={k: round(v, 4) for k, v in med.items()},
        min_max_s={k: [round(a, 4), round(b, 4)] for k, (a, b) in spread.items()},
        speedup=ratios,
        threads=torch.get_num_threads(),
        load_average_1_5_15_min={"before": [round(v, 2) for v in load_before], "after": [round(v, 2) for v in load_after]},
    )
    print()
    for case in CASES:
        print(f"{case:<52} {med[case] * 1e3:9.1f} ms  (min {spread[case][0] * 1e3:.1f}, max {spread[case][1] * 1e3:.1f})")
    for k, v in ratios.items():
        print(f"speedup {k:<40} {v:6.1f}x")
    print(f"load average before {load_before}, after {load_after}")


def make_pipeline(device: torch.device, batch: int = 768, augment: bool = True, synth_name: str = "voice",
                  ir_dir: Path | None = RIRS, duration: float = 1.0):
    """A zero-argument callable for one step's data: pairs of `batch` sounds (2 x batch renders), the
    augmentation chain on both views (with reverb from `ir_dir`; None: no reverb), the log-mel frontend
    -> (2 batch, 1, 96, 64). Indices advance every call, as in training. Uses the Triton backend on CUDA.
    For bench/gpu_check.py, which passes the impulse responses it carries to the GPU machine."""
    from doppel_torch.frontend import LogMelFrontend
    from doppel_torch.pairs import DoppelgangerPairs

    backend = "triton" if device.type == "cuda" else "torch"
    synth = get_synth(synth_name, sample_rate=SR, duration=duration, backend=backend)
    chain = AugmentChain(sample_rate=SR, ir_paths=ir_dir).to(device) if augment else None
    pairs = DoppelgangerPairs(synth, delta=0.25, seed=0, augment=chain).to(device)
    frontend = LogMelFrontend().to(device)
    step = [0]

    def run():
        with torch.no_grad():
            a, b = pairs(start=step[0] * batch, count=batch)
            out = frontend(torch.cat([a, b]))
        step[0] += 1
        synchronize(device)
        return out

    return run


@pytest.mark.parametrize("augment", [False, True])
def test_pipeline_step(benchmark, augment, bench_device):
    """Pairs + augmentation + log-mel: batch 768 on GPU, 16 on CPU (a 2-core CPU takes seconds per 16 pairs)."""
    batch = 768 if bench_device.type == "cuda" else 16
    run = make_pipeline(bench_device, batch=batch, augment=augment)
    run()
    out = benchmark.pedantic(run, rounds=3, iterations=1)
    assert out.shape == (2 * batch, 1, 96, 64) and torch.isfinite(out).all()
    benchmark.extra_info.update(device=str(bench_device), batch=batch, pairs_per_s=batch / benchmark.stats.stats.median)
