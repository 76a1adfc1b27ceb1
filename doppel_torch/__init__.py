"""doppel-torch: self-supervised audio pretraining from synthetic audio doppelgangers, PyTorch-native.

    from doppel_torch import VoiceSynth, DoppelgangerPairs, AugmentChain, LogMelFrontend, match

The names below are imported on first use (PEP 562), so that importing a submodule, such as the command line's
entry point (doppel_torch/entry.py), does not import torch first.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "Synth": "doppel_torch.synths",
    "VoiceSynth": "doppel_torch.synths",
    "VoiceFMSynth": "doppel_torch.synths",
    "ParametricSynth": "doppel_torch.synths",
    "get_synth": "doppel_torch.synths",
    "SYNTHS": "doppel_torch.synths",
    "DoppelgangerPairs": "doppel_torch.pairs",
    "AugmentChain": "doppel_torch.augment",
    "LogMelFrontend": "doppel_torch.frontend",
    "match": "doppel_torch.matching",
    "MatchResult": "doppel_torch.matching",
    "spectral_loss": "doppel_torch.matching",
    "default_backend": "doppel_torch.matching",
}
__all__ = [*_EXPORTS, "__version__"]

if TYPE_CHECKING:
    from doppel_torch.augment import AugmentChain
    from doppel_torch.frontend import LogMelFrontend
    from doppel_torch.matching import MatchResult, default_backend, match, spectral_loss
    from doppel_torch.pairs import DoppelgangerPairs
    from doppel_torch.synths import SYNTHS, ParametricSynth, Synth, VoiceFMSynth, VoiceSynth, get_synth


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'doppel_torch' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
