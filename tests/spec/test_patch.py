"""Patch.validate: an invalid wiring is a ValueError that names the module at fault, before any backend runs."""

from __future__ import annotations

import dataclasses

import pytest

from doppel_torch import Synth
from doppel_torch.spec import Envelope, Filter, Oscillator
from doppel_torch.spec.patches import PATCHES
from tests.backends.patches import USER_PATCHES, fm_chain


def _with(patch, **changes):
    return dataclasses.replace(patch, **changes)


def _oscillators(patch, **by_name):
    return tuple(by_name.get(o.name, o) for o in patch.oscillators)


@pytest.mark.parametrize("make", [*PATCHES.values(), *USER_PATCHES.values()])
def test_every_shipped_and_test_patch_is_valid(make):
    assert make().validate() is not None


def test_unknown_fm_source():
    patch = fm_chain()
    bad = _with(patch, oscillators=_oscillators(patch, op_1=Oscillator("op_1", "fm", "keyboard", source="vco_9")))
    with pytest.raises(ValueError, match=r"op_1: source 'vco_9' is neither an oscillator"):
        Synth(bad)


def test_fm_cycle():
    patch = fm_chain()
    bad = _with(patch, oscillators=_oscillators(patch, op_1=Oscillator("op_1", "fm", "keyboard", source="op_2")))
    with pytest.raises(ValueError, match="FM operator op_1: its sources form a cycle"):
        Synth(bad)
    selfish = _with(patch, oscillators=_oscillators(patch, op_1=Oscillator("op_1", "fm", "keyboard", source="op_1")))
    with pytest.raises(ValueError, match="op_1: its sources form a cycle"):
        Synth(selfish)


def test_fm_before_its_modulator():
    patch = fm_chain()
    vco, op_1, op_2 = patch.oscillators
    with pytest.raises(ValueError, match="FM operator op_1 comes before its modulator vco"):
        Synth(_with(patch, oscillators=(op_1, vco, op_2)))


def test_unused_mod_output():
    patch = fm_chain()
    with pytest.raises(ValueError, match="mod-matrix output 'spare' drives nothing"):
        Synth(_with(patch, mod_outputs=(*patch.mod_outputs, "spare")))


@pytest.mark.parametrize("changes, message", [
    (dict(mixer_inputs=("op_2", "noise")), "the mixer lists 'noise' but the patch has no noise_amp"),
    (dict(mixer_inputs=("op_2", "vco_7")), "mixer: input 'vco_7' is neither an oscillator nor a filter"),
    (dict(mod_inputs=("adsr_1", "lfo_9")), "mod-matrix input 'lfo_9' is neither an envelope nor an LFO"),
    (dict(filters=(Filter("lpf", input="vco", cutoff="vco_amp"),)), "op_1: source 'vco' is filtered by lpf: name the filter instead"),
    (dict(filters=(Filter("lpf", input="op_9", cutoff="vco_amp"),)), "filter lpf: input 'op_9' is neither"),
    (dict(filters=(Filter("lpf", input="mix", cutoff="nowhere"),)), "lpf: cutoff 'nowhere' is not a mod-matrix output"),
    (dict(filters=(Filter("lpf", input="mix", cutoff="vco_amp", kind="hpf"),)), "filter lpf has unknown kind 'hpf'"),
    (dict(keyboards=("keyboard", "keyboard")), "module name 'keyboard' is used twice"),
    (dict(mixer_inputs=("op_1",)), "oscillator op_2 is neither mixed nor an FM source"),
    (dict(noise_amp="vco_amp"), "noise_amp is set but the mixer has no 'noise' input"),
    (dict(mixer_curves=(0.0, 1.0)), "mixer_curves must be positive numbers, got 0.0"),
    (dict(keyboards=("",)), "module name '' must be a non-empty string without '/'"),
    (dict(envelopes=(Envelope("adsr/1", "keyboard"),)), "module name 'adsr/1' must be a non-empty string"),
])
def test_other_wiring_errors_name_the_module(changes, message):
    with pytest.raises(ValueError, match=message):
        Synth(_with(fm_chain(), **changes))


def test_not_a_patch():
    with pytest.raises(ValueError, match="patch must be a doppel_torch.spec.Patch"):
        Synth("voice")


def test_settings_an_oscillator_kind_would_ignore_are_refused():
    patch = fm_chain()
    fm_with_pitch = Oscillator("op_1", "fm", "keyboard", pitch="vco_pitch", source="vco")
    with pytest.raises(ValueError, match="FM operator op_1: pitch='vco_pitch' would be ignored"):
        Synth(_with(patch, oscillators=_oscillators(patch, op_1=fm_with_pitch)))
    sine_with_source = Oscillator("vco", "sine", "keyboard", pitch="vco_pitch", amp="vco_amp", source="op_2")
    with pytest.raises(ValueError, match=r"oscillator vco \(sine\): source='op_2' would be ignored"):
        Synth(_with(patch, oscillators=_oscillators(patch, vco=sine_with_source)))


def test_lists_are_taken_as_tuples_and_a_string_is_refused():
    patch = fm_chain()
    listed = _with(patch, oscillators=list(patch.oscillators), mixer_inputs=list(patch.mixer_inputs))
    assert listed == patch and Synth(listed, duration=0.01).num_params == Synth(patch, duration=0.01).num_params
    with pytest.raises(ValueError, match=r"mixer_inputs must be a tuple of names, got the string 'vco'"):
        _with(patch, mixer_inputs="vco")
    # a module, a dict or None where a tuple belongs: one line each (they were raw TypeErrors)
    wired_by_list = Oscillator("vco", "sine", "keyboard", pitch=["vco_pitch"], amp="vco_amp")
    for changes, message in ((dict(oscillators=patch.oscillators[0]), r"got Oscillator \(write \(Oscillator"),
                             (dict(oscillators=_oscillators(patch, vco=wired_by_list)),
                              r"Oscillator 'vco': pitch must be a name, got \['vco_pitch'\]"),
                             (dict(mixer_curves=0.5), "mixer_curves must be None or a tuple of numbers"),
                             (dict(name=None), "a patch needs a name"),
                             (dict(oscillators=({"name": "vco"},)), "got an element {'name': 'vco'} of type dict"),
                             (dict(keyboards=None), "keyboards must be a tuple of names, got NoneType")):
        with pytest.raises(ValueError, match=message):
            _with(patch, **changes)
    mix_filter = Filter("lpf", input="mix", cutoff="vco_amp")
    with pytest.raises(ValueError, match="mixer: input 'lpf' filters the mix, the synth's output"):
        Synth(_with(patch, filters=(mix_filter,), mixer_inputs=(*patch.mixer_inputs, "lpf")))


def test_modules_whose_parameters_would_do_nothing_are_refused():
    """An envelope, LFO or keyboard that nothing reads rendered without a word, its parameters' gradients exactly 0
    (found from outside), where an unheard oscillator or an unused mod output was already refused."""
    from doppel_torch.spec import Lfo

    patch = fm_chain()
    idle_envelope = _with(patch, envelopes=(*patch.envelopes, Envelope("adsr_idle", "keyboard")))
    with pytest.raises(ValueError, match="envelope adsr_idle is neither a mod-matrix input nor an LFO's rate_env"):
        Synth(idle_envelope)
    first = patch.envelopes[0].name
    unrouted_lfo = _with(patch, lfos=(*patch.lfos, Lfo("lfo_idle", rate_env=first, amp_env=first)))
    with pytest.raises(ValueError, match="lfo lfo_idle is not a mod-matrix input"):
        Synth(unrouted_lfo)
    with pytest.raises(ValueError, match="keyboard kb_2 triggers no envelope and plays no oscillator"):
        Synth(_with(patch, keyboards=(*patch.keyboards, "kb_2")))


def test_a_patch_name_that_would_name_files_elsewhere_is_refused(tmp_path):
    """The patch name names files (delta-profile's CSV, equal-effect's lookup): '../x' wrote outside --out."""
    from doppel_torch.spec.patches import PATCHES

    voice = PATCHES["voice"]()
    for name in ("../../escaped", "sub/tractive", "a\\b", "..", "."):
        with pytest.raises(ValueError, match="names files"):
            dataclasses.replace(voice, name=name)
    assert dataclasses.replace(voice, name="my.voice").name == "my.voice"


def test_load_patch_reads_a_file_whose_path_holds_a_colon(tmp_path):
    """FILE.py[:NAME]: the ':' of a folder name is part of the path, not the separator."""
    import shutil
    from pathlib import Path

    from doppel_torch.spec.load import load_patch

    folder = tmp_path / "a:b"
    folder.mkdir()
    source = Path(__file__).resolve().parents[2] / "examples" / "subtractive.py"
    shutil.copy(source, folder / "sub.py")
    assert load_patch(str(folder / "sub.py")).name == load_patch(f"{folder / 'sub.py'}:patch").name == "subtractive"
    with pytest.raises(ValueError, match="does not exist"):
        load_patch(str(folder / "nope.py"))
    with pytest.raises(ValueError, match="is a folder"):
        load_patch(str(folder))
