"""The paper's three architectures as `Patch` data, each on one screen (SynthAX 0.2.2's `Voice`, `VoiceExpanded`
and `ParametricSynth`)."""

from doppel_torch.spec.patches.parametric import parametric_patch
from doppel_torch.spec.patches.voice import voice_patch
from doppel_torch.spec.patches.voicefm import voicefm_patch

PATCHES = {"voice": voice_patch, "voicefm": voicefm_patch, "parametric": parametric_patch}

__all__ = ["PATCHES", "voice_patch", "voicefm_patch", "parametric_patch"]
