"""Shared test helpers: where the read-only project data lives, and the anchors' import fixes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

# Without a GPU the Triton kernels run in Triton's CPU interpreter, as Triton's own CI does. `@triton.jit` reads
# the flag when it decorates a function, so it must be set before any test module imports the kernels: a kernel
# module imported without it cannot run interpreted later in the same process.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]
# CI and developers have the project's shared folder next to the repository root (../shared).
SHARED = Path(os.environ.get("DOPPEL_SHARED", REPO.parent / "shared"))
SYNTHAX_REF = SHARED / "reference" / "synthax"
FSDD = SHARED / "data" / "fsdd"
RIRS = SHARED / "data" / "rirs"


# Where the folder is missing (a clone of its own elsewhere), the tests that read it skip with one reason; CI sets
# DOPPEL_REQUIRE_SHARED=1 (.ci/run), and there they fail instead, so a lost folder cannot pass unseen.
_SHARED_NAMES = ("SHARED", "SYNTHAX_REF", "FSDD", "RIRS", "shared_dir", "fsdd_root", "audio_dir")
_MISSING = (f"needs the project's data folder {SHARED} (FSDD recordings, impulse responses, SynthAX renders): "
            "put it beside the checkout as ../shared or set DOPPEL_SHARED")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"project data folder {SHARED} is missing (set DOPPEL_SHARED to its path)")
    return SHARED


def _reads_shared(item) -> bool:
    """The test, a fixture it uses, or a module-level helper it calls names the data folder or one of its parts."""
    import inspect

    function = getattr(item, "function", None)
    if function is None:
        return False
    if set(_SHARED_NAMES) & set(item.fixturenames):
        return True
    names = set(function.__code__.co_names)
    helpers = [getattr(item.module, n) for n in names if inspect.isfunction(getattr(item.module, n, None))]
    return any(set(f.__code__.co_names) & set(_SHARED_NAMES) for f in (function, *helpers))


def pytest_collection_modifyitems(config, items):
    if not SHARED.is_dir() and os.environ.get("DOPPEL_REQUIRE_SHARED") != "1":
        for item in items:
            if _reads_shared(item):
                item.add_marker(pytest.mark.skip(reason=_MISSING))


def import_torchsynth():
    """torchsynth 1.0.2 imports `pytorch_lightning.core.lightning`, which Lightning 2 renamed to
    `pytorch_lightning.core.module`; alias it before importing (needs setuptools<81 for pkg_resources)."""
    import pytorch_lightning.core.module as lightning_module

    sys.modules.setdefault("pytorch_lightning.core.lightning", lightning_module)
    import torchsynth.config
    import torchsynth.synth

    return torchsynth


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # Two cores in CI: keep each test's intra-op threads bounded and results independent of load.
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield


def tie_rows(synth, theta, noise) -> list[int]:
    """Rows whose render jumps O(1) (> 0.5) when theta moves 1e-9 inward from the clip bounds: an LFO's phase sits on
    its square's or saw's edge there, and SynthAX's float rounding picks a side no other implementation reproduces.
    On the reference renders only voicefm/aug row 0 does (jump 0.95); elsewhere a 1e-9 move changes the FM synths
    by at most 0.04 (chaotic, not a tie). bench/test_ties_synthax.py renders SynthAX itself at the moved theta: it
    and doppel-torch agree to 1.8e-7 on every row there."""
    at = synth(theta, noise=noise, normalize=False)
    inward = synth(theta.clamp(synth.eps + 1e-9, 1.0 - 1e-9), noise=noise, normalize=False)
    return (at - inward).abs().amax(dim=1).gt(0.5).nonzero().flatten().tolist()
