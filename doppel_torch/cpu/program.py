"""Flatten a synth's `Layout` into the int32 program the native kernel interprets (see synth_cpu.cpp)."""

from __future__ import annotations

import torch

from doppel_torch.synths.layout import Layout

KIND_CODE = {"sine": 0, "square_saw": 1, "fm": 2}
LFO_SHAPES = ("sin", "tri", "saw", "rsaw", "sqr")  # weight order, paired with (cos, tri, saw, rsaw, square)


def build_program(layout: Layout) -> torch.Tensor:
    """The patch as a flat int32 tensor: header, then one fixed-size record per module (columns of theta)."""
    patch, index = layout.patch, layout.index
    keyboards = {name: i for i, name in enumerate(patch.keyboards)}
    envelopes = {e.name: i for i, e in enumerate(patch.envelopes)}
    lfos = {lfo.name: i for i, lfo in enumerate(patch.lfos)}
    outputs = {name: i for i, name in enumerate(patch.mod_outputs)}
    oscillators = {o.name: i for i, o in enumerate(patch.oscillators)}

    words = [len(keyboards), len(envelopes), len(lfos), len(patch.mod_inputs), len(outputs), len(oscillators)]
    words += [len(patch.mixer_inputs), outputs[patch.noise_amp]]
    for name in patch.keyboards:
        words += [index[name]["midi_f0"], index[name]["duration"]]
    for env in patch.envelopes:
        p = index[env.name]
        words += [p["attack"], p["decay"], p["sustain"], p["release"], p["alpha"], keyboards[env.keyboard]]
    for lfo in patch.lfos:
        p = index[lfo.name]
        words += [p["frequency"], p["mod_depth"], p["initial_phase"], *(p[s] for s in LFO_SHAPES)]
        words += [envelopes[lfo.rate_env], envelopes[lfo.amp_env]]
    for name in patch.mod_inputs:
        words.append(envelopes[name] if name in envelopes else len(envelopes) + lfos[name])
    for row in layout.mod_matrix:
        words += row
    for osc in patch.oscillators:
        p = index[osc.name]
        words += [KIND_CODE[osc.kind], keyboards[osc.keyboard], p["tuning"], p["mod_depth"], p["initial_phase"]]
        words.append(p["shape"] if osc.kind == "square_saw" else -1)
        words.append(outputs[osc.pitch] if osc.pitch is not None else -1)
        words.append(outputs[osc.amp] if osc.amp is not None else -1)
        if osc.kind == "fm" and oscillators[osc.source] >= oscillators[osc.name]:
            raise ValueError(f"{patch.name}: FM operator {osc.name} must come after its source {osc.source}")
        words.append(oscillators[osc.source] if osc.source is not None else -1)
    for name, column in zip(patch.mixer_inputs, layout.mixer_levels):
        words += [-1 if name == "noise" else oscillators[name], column]
    return torch.tensor(words, dtype=torch.int32)
