"""doppel-torch: self-supervised audio pretraining from synthetic audio doppelgangers, PyTorch-native."""

from doppel_torch.synths import SYNTHS, ParametricSynth, Synth, VoiceFMSynth, VoiceSynth, get_synth

__version__ = "0.1.0"
__all__ = ["Synth", "VoiceSynth", "VoiceFMSynth", "ParametricSynth", "get_synth", "SYNTHS", "__version__"]
