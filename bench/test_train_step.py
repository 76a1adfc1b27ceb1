"""The full training step in pairs/s: pairs -> log-mel -> ResNet18 forward/backward -> SGD step.

Run: `pytest bench/test_train_step.py --benchmark` (add `--bench-device cpu` to force the CPU).
Cases, each timed with a device synchronisation at the end of every call:
- `data`: doppelganger pairs + log-mel for the batch (no model), to get the data share of a step;
- `step`: the whole optimizer step, as `Trainer.train_step` runs it in `doppel-torch train`;
and, on GPU, the step in fp32, in bf16 autocast + channels-last, and additionally with torch.compile.
Each case records pairs/s in `extra_info`; the `step` cases also record the projected wall time of the
paper's recipe on one device, `recipe_pairs / (pairs/s)` with recipe_pairs = 200 epochs x 90,000 training
pairs = 18 M (validation, 10,000 pairs per epoch forward-only, adds about 2 M / (3 x pairs/s) on top), and
the data share `t(data) / t(step)` measured in the same session.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch

from doppel_torch.train.config import make_config
from doppel_torch.train.data import train_indices
from doppel_torch.train.loop import Trainer

RECIPE_TRAIN_PAIRS = 200 * 90_000
RECIPE_VAL_PAIRS = 200 * 10_000
_DATA_SECONDS: dict[str, float] = {}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_trainer(
    device: torch.device,
    batch: int,
    *,
    precision: str,
    channels_last: bool,
    compile: bool,
    tmp,
    synth: str = "voice",
    overrides: dict | None = None,
) -> Trainer:
    """A Trainer with the paper's model and pair pipeline (delta 0.25) at `batch` pairs per step; `overrides`
    are further dotted config fields (e.g. {"data.augment": True}, as bench/gpu_check.py uses)."""
    backend = "triton" if device.type == "cuda" else "cpu"
    cfg = make_config(
        "paper",
        {
            "data.synth": synth,
            "data.backend": backend,
            "optim.batch_size": batch,
            "run.device": device.type,
            "run.precision": precision,
            "run.channels_last": channels_last,
            "run.compile": compile,
            "run.out_dir": str(tmp),
            "run.progress": False,
            "run.tensorboard": False,
            "run.examples": 0,
            **(overrides or {}),
        },
    )
    return Trainer(cfg, log=lambda s: None)


def time_calls(fn, device: torch.device, rounds: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    _synchronize(device)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        _synchronize(device)
        times.append(time.perf_counter() - t0)
    return times


def _settings(device: torch.device):
    if device.type == "cuda":
        return 768, 10, 3  # the paper's batch per GPU; rounds; warm-up (compile needs a few)
    return 16, 3, 1


def _cases(device: torch.device):
    if device.type == "cuda":
        return [("fp32", False, False), ("bf16", True, False), ("bf16", True, True)]
    return [("fp32", False, False)]


def test_data_share(benchmark, bench_device, tmp_path):
    batch, rounds, warmup = _settings(bench_device)
    trainer = make_trainer(bench_device, batch, precision="fp32", channels_last=False, compile=False, tmp=tmp_path)
    state = {"step": 0}

    def data():
        idx = train_indices(state["step"], 0, 1, batch, trainer.config.data.n_val, bench_device)
        state["step"] += 1
        a1, a2 = trainer.pairs(idx)
        return trainer.frontend(torch.cat([a1, a2]))

    def run():
        with torch.no_grad():
            out = data()
        _synchronize(bench_device)
        return out

    benchmark.pedantic(run, rounds=rounds, warmup_rounds=warmup, iterations=1)
    median = benchmark.stats.stats.median
    _DATA_SECONDS[bench_device.type] = median
    benchmark.extra_info.update({"device": str(bench_device), "batch": batch, "pairs_per_s": batch / median})


@pytest.mark.parametrize(
    "precision, channels_last, compile", [("fp32", False, False), ("bf16", True, False), ("bf16", True, True)]
)
def test_train_step(benchmark, bench_device, tmp_path, precision, channels_last, compile):
    if (precision, channels_last, compile) not in _cases(bench_device):
        pytest.skip(f"{precision}/channels_last={channels_last}/compile={compile} is measured on GPU only")
    batch, rounds, warmup = _settings(bench_device)
    trainer = make_trainer(
        bench_device, batch, precision=precision, channels_last=channels_last, compile=compile, tmp=tmp_path
    )

    def step():
        idx = train_indices(trainer.step, 0, 1, batch, trainer.config.data.n_val, bench_device)
        a1, a2 = trainer.pairs(idx)
        terms = trainer.train_step(idx, a1, a2)
        _synchronize(bench_device)
        return terms

    benchmark.pedantic(step, rounds=rounds, warmup_rounds=warmup, iterations=1)
    median = benchmark.stats.stats.median
    spread = statistics.pstdev(benchmark.stats.stats.data) if rounds > 1 else 0.0
    pairs_per_s = batch / median
    info = {
        "device": torch.cuda.get_device_name(bench_device) if bench_device.type == "cuda" else "cpu",
        "batch": batch,
        "pairs_per_s": pairs_per_s,
        "step_s_median": median,
        "step_s_stdev": spread,
        "recipe_projection_s": RECIPE_TRAIN_PAIRS / pairs_per_s + RECIPE_VAL_PAIRS / (3 * pairs_per_s),
    }
    if bench_device.type in _DATA_SECONDS:
        info["data_share"] = _DATA_SECONDS[bench_device.type] / median
    benchmark.extra_info.update(info)
    summary = ", ".join(f"{k}={v}" for k, v in info.items())
    print(f"\n{precision} channels_last={channels_last} compile={compile}: {summary}")
