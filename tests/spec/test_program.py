"""The lowered Program: one set of tables per patch, read by every backend; the C++ kernel's declared table layout
is checked against the spec when the library loads."""

from __future__ import annotations

import pytest
import torch

from doppel_torch.backends.cpu import build
from doppel_torch.spec import TABLES, lower
from doppel_torch.spec.patches import PATCHES
from doppel_torch.spec.program import MATRIX, OSC_FM, col, layout_signature
from tests.backends.patches import fan_out


def test_tables_have_the_declared_columns():
    program = lower(PATCHES["parametric"]())
    for name, columns in TABLES.items():
        assert program.tables[name].dtype == torch.int32 and program.tables[name].shape[1] == len(columns)
    assert program.tables[MATRIX].shape == (program.rows("mod_outputs"), program.rows("mod_inputs"))
    assert program.rows("oscillators") == 8 and program.rows("noise") == 1


def test_fm_sources_are_explicit_and_get_scratch_slots():
    program = lower(fan_out())
    osc = program.tables["oscillators"]
    kinds, sources, slots = (osc[:, col("oscillators", c)].tolist() for c in ("kind", "source", "slot"))
    assert kinds == [1, OSC_FM, OSC_FM] and sources == [-1, 0, 0] and slots == [0, -1, -1]


def test_words_hold_every_table():
    program = lower(PATCHES["voicefm"]())
    words = program.words
    assert words.dtype == torch.int32 and int(words[0]) == len(TABLES) + 1
    assert words.numel() == 1 + 2 * (len(TABLES) + 1) + sum(t.numel() for t in program.tables.values()) + 1


def test_cpu_kernel_declares_the_spec_layout():
    assert build.library().doppel_cpu_layout().decode() == layout_signature()


def test_a_layout_mismatch_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("DOPPEL_TORCH_CACHE", str(tmp_path))
    monkeypatch.setattr(build, "layout_signature", lambda: layout_signature().replace("midi_f0", "note"))
    with pytest.raises(RuntimeError, match="reads other program tables than doppel_torch.spec.program defines"):
        build._build()


@pytest.mark.parametrize("kwargs, message", [
    (dict(sample_rate=0), "sample_rate must be a positive number"),
    (dict(control_rate=48000), "must not exceed sample_rate"),
    (dict(duration=0.001), "fewer than 2 control samples"),
    (dict(eps=0.7), "eps must be a number in"),
    (dict(duration=1e9), "samples a sound; at most 2,147,483,647"),
    (dict(sample_rate=True), "sample_rate must be a positive number"),
])
def test_bad_rates_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        lower(PATCHES["voice"](), **kwargs)
