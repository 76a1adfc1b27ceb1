"""Synth architectures as data (patch.py, voice.py, voicefm.py, parametric.py) and the public classes (base.py)."""

from doppel_torch.synths.base import SYNTHS, ParametricSynth, Synth, VoiceFMSynth, VoiceSynth, get_synth

__all__ = ["SYNTHS", "Synth", "VoiceSynth", "VoiceFMSynth", "ParametricSynth", "get_synth"]
