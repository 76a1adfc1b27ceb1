"""doppel-torch: self-supervised audio pretraining from synthetic audio doppelgangers, PyTorch-native.

    from doppel_torch import VoiceSynth, DoppelgangerPairs, AugmentChain, LogMelFrontend, match
"""

from doppel_torch.augment import AugmentChain
from doppel_torch.frontend import LogMelFrontend
from doppel_torch.matching import MatchResult, default_backend, match, spectral_loss
from doppel_torch.pairs import DoppelgangerPairs
from doppel_torch.synths import SYNTHS, ParametricSynth, Synth, VoiceFMSynth, VoiceSynth, get_synth

__version__ = "0.1.0"
__all__ = [
    "Synth",
    "VoiceSynth",
    "VoiceFMSynth",
    "ParametricSynth",
    "get_synth",
    "SYNTHS",
    "DoppelgangerPairs",
    "AugmentChain",
    "LogMelFrontend",
    "match",
    "MatchResult",
    "spectral_loss",
    "default_backend",
    "__version__",
]
