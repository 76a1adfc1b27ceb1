"""The kernels (forward, and the backward's two) compile for a real GPU (sm_90) on this CPU-only machine, without
register spills.

The interpreter runs the kernels' Python semantics; this checks the other half: Triton -> LLVM -> PTX -> ptxas for
the compiled code path (libdevice float64 math, the launch configuration `render` uses). It runs in a subprocess
because this test session set TRITON_INTERPRET=1 before the kernels were imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")
BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


@pytest.fixture(scope="module")
def compiled() -> list[dict]:
    if not (BIN / "ptxas").exists() or not (BIN / "cuobjdump").exists():
        pytest.skip(f"this triton wheel ships no ptxas/cuobjdump in {BIN}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "doppel_torch.backends.triton.aot", "--arch", "90", "--json", "--grad",
           "--synth", "voice", "--synth", "voicefm", "--synth", "parametric",
           "--patch", "tests/backends/patches.py:filtered", "--patch", "tests/backends/patches.py:fm_chain"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=Path(__file__).parents[3])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_every_kernel_compiles_for_sm90(compiled):
    got = {(r["synth"], r["kernel"], r["phase_dtype"]) for r in compiled}
    synths = ("voice", "voicefm", "parametric", "filtered", "fm_chain")  # the paper's, and user patches: filters, chains
    want = {(s, k, p) for s in synths for k in ("control", "audio") for p in ("fp64", "fp32")}
    want |= {(s, k, "fp64") for s in synths for k in ("control_grad", "audio_grad")}  # the backward runs in float64
    assert got == want
    assert all(r["cubin_bytes"] > 0 for r in compiled)


def test_no_register_spills(compiled):
    # Spilled registers live in the stack frame; 32-64 B is the ABI frame libdevice calls need. Parametric's
    # control kernel at 128-sample tiles spilled 1,352 B (see backends.triton.synth.CONTROL_TILE).
    for r in compiled:
        assert r["reg"] <= 255 and r["local"] == 0, r
        assert r["stack"] <= 128, f"{r['synth']} {r['kernel']} kernel ({r['phase_dtype']}) spills: {r}"
