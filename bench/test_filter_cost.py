"""What a filter costs, cpu backend, side by side in one run: the subtractive patch (examples/subtractive.py: a
square/saw through an envelope-swept one-pole low-pass, plus a sine) vs the same patch without the filter (the
square/saw mixed directly), and the same with a second low-pass on the mix; batch 128, 16 kHz, 1 s, float32.

    pytest bench/test_filter_cost.py --benchmark -q -s

Rounds are interleaved (A, B, C, A, B, C, ...) so that load from other processes hits all three alike; the best
round of each gives sounds/s and the extra microseconds per sound of each filter. Results go to
`bench/results/cpu-filter-cost-<date>.json`.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import sys
import time
from pathlib import Path

import torch

from doppel_torch import Synth
from doppel_torch.spec import Filter
from test_synth import new_result_path  # bench/test_synth.py

REPO = Path(__file__).resolve().parents[1]
BATCH, ROUNDS = 128, 15


def _patches():
    sys.path.insert(0, str(REPO / "examples"))
    try:
        from subtractive import subtractive_patch
    finally:
        sys.path.remove(str(REPO / "examples"))
    filtered = subtractive_patch()
    plain = dataclasses.replace(filtered, name="no_filter", filters=(), mixer_inputs=("saw", "sine"),
                                mod_outputs=filtered.mod_outputs[:-1])
    on_mix = dataclasses.replace(filtered, name="two_filters", mod_outputs=(*filtered.mod_outputs, "mix_cutoff"),
                                 filters=(*filtered.filters, Filter("mix_lpf", input="mix", cutoff="mix_cutoff")))
    return {"no filter": plain, "lpf on the saw": filtered, "+ lpf on the mix": on_mix}


def test_filter_cost_side_by_side():
    cases = {}
    for label, patch in _patches().items():
        synth = Synth(patch, backend="cpu")
        theta = synth.random_params(BATCH, seed=0)
        synth(theta, validate=False)  # warm-up
        cases[label] = (synth, theta)
    best = {label: float("inf") for label in cases}
    for _ in range(ROUNDS):
        for label, (synth, theta) in cases.items():
            start = time.perf_counter()
            synth(theta, validate=False)
            best[label] = min(best[label], time.perf_counter() - start)
    base = best["no filter"]
    rows = []
    for label, seconds in best.items():
        rows.append({"case": label, "sounds_per_s": BATCH / seconds, "us_per_sound": 1e6 * seconds / BATCH,
                     "extra_us_per_sound": 1e6 * (seconds - base) / BATCH, "relative": seconds / base})
        print(f"{label:18s} {BATCH / seconds:9.0f} sounds/s  {1e6 * seconds / BATCH:7.1f} us/sound  "
              f"{seconds / base:5.2f}x the unfiltered patch")
    out = new_result_path(f"cpu-filter-cost-{datetime.date.today()}")
    meta = {"batch": BATCH, "rounds": ROUNDS, "threads": torch.get_num_threads(), "torch": torch.__version__}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    assert all(r["sounds_per_s"] > 0 for r in rows)
