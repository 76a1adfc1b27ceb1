"""The reference backend equals its anchors: SynthAX 0.2.2's float64 renders and torchsynth 1.0.2 run live."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from doppel_torch import get_synth
from tests.conftest import SYNTHAX_REF, import_torchsynth, tie_rows

REF_FILES = {"voice": "voice", "voicefm": "voiceexpanded", "parametric": "parametric"}


def _load(name: str) -> dict:
    path = SYNTHAX_REF / f"{REF_FILES[name]}.npz"
    if not path.exists():
        pytest.fail(f"missing SynthAX reference render {path}")
    return dict(np.load(path))


@pytest.mark.parametrize("name", list(REF_FILES))
def test_layout_matches_synthax(name):
    ref = _load(name)
    synth = get_synth(name)
    assert synth.num_params == {"voice": 78, "voicefm": 130, "parametric": 340}[name]
    assert synth.param_names == [str(n) for n in ref["names"]]
    specs = synth.param_specs
    # SynthAX holds its ranges in float32 (pi, 0.025): equal to float32 resolution.
    np.testing.assert_allclose([s.range.minimum for s in specs], ref["ranges_min"], rtol=1e-7)
    np.testing.assert_allclose([s.range.maximum for s in specs], ref["ranges_max"], rtol=1e-7)
    np.testing.assert_allclose([s.range.curve for s in specs], ref["ranges_curve"], rtol=1e-7)
    np.testing.assert_array_equal([s.range.symmetric for s in specs], ref["ranges_symmetric"])


@pytest.mark.parametrize("name", list(REF_FILES))
@pytest.mark.parametrize("which", ["init", "aug"])
def test_float64_equals_synthax(name, which):
    ref = _load(name)
    synth = get_synth(name)
    theta = torch.from_numpy(ref[f"params_{which}"]).double()
    noise = torch.from_numpy(ref["noise_f32"]).double()  # SynthAX: one noise row for the whole batch
    premix = synth(theta, noise=noise, normalize=False)
    ties = tie_rows(synth, theta, noise)  # voicefm/aug row 0: an LFO at 20 Hz and phase pi, clipped to exactly 1
    assert len(ties) <= 1, f"{name}/{which}: rows {ties} sit on a waveform's jump"
    keep = [i for i in range(theta.shape[0]) if i not in ties]
    err = (premix - torch.from_numpy(ref[f"premix_{which}_f64"]))[keep].abs().max().item()
    assert err <= 1e-6, f"{name}/{which}: max abs error {err:.3g} vs SynthAX float64"


@pytest.mark.parametrize("name", list(REF_FILES))
def test_normalization_is_per_sound(name):
    """SynthAX divides the whole batch by item 0's peak (quirk 1); we divide each sound by its own peak."""
    ref = _load(name)
    synth = get_synth(name)
    theta = torch.from_numpy(ref["params_init"]).double()
    noise = torch.from_numpy(ref["noise_f32"]).double()
    premix = torch.from_numpy(ref["premix_init_f64"])
    audio = synth(theta, noise=noise, normalize=True)
    peak = premix.abs().amax(dim=1, keepdim=True)
    expected = torch.where(peak > 1, premix / peak, premix)
    assert (audio - expected).abs().max().item() <= 1e-6
    assert audio.abs().max().item() <= 1.0 + 1e-12


def test_mixer_curve_options_differ_only_in_noise_level():
    plain, curved = get_synth("voice"), get_synth("voice", mixer_curve="torchsynth")
    i = plain.param_names.index("mixer/level[2]")
    theta = torch.full((1, 78), 0.5, dtype=torch.float64)
    assert plain.to_human(theta)[0, i].item() == pytest.approx(0.5)
    assert curved.to_human(theta)[0, i].item() == pytest.approx(0.5 ** (1 / 0.025))
    others = [j for j in range(78) if j != i]
    assert torch.equal(plain.to_human(theta)[:, others], curved.to_human(theta)[:, others])
    with pytest.raises(ValueError, match="mixer_curve"):
        get_synth("voice", mixer_curve="nope")


def _torchsynth_voice(batch: int):
    torchsynth = import_torchsynth()
    config = torchsynth.config.SynthConfig(
        batch_size=batch, sample_rate=16000, buffer_size_seconds=1.0, control_rate=480, reproducible=False
    )
    return torchsynth, torchsynth.synth.Voice(config)


def _set_torchsynth_params(ts_voice, synth, theta):
    """Map our flat theta onto torchsynth's parameters by name (mod matrix `in->out`, mixer levels by input)."""
    patch = synth.patch
    for j, spec in enumerate(synth.param_specs):
        if spec.module == "mod_matrix":
            out, inp = spec.index
            module, param = "mod_matrix", f"{patch.mod_inputs[inp]}->{patch.mod_outputs[out]}"
        elif spec.module == "mixer":
            module, param = "mixer", patch.mixer_inputs[spec.index[0]]
        else:
            module, param = spec.module, spec.param
        getattr(ts_voice, module).set_parameter_0to1(param, theta[:, j].clone())


@pytest.mark.parametrize("normalize", [False, True])
def test_voice_float64_equals_torchsynth(normalize, monkeypatch):
    batch = 8
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # torchsynth builds its tensors in the default dtype
    try:
        torchsynth, ts_voice = _torchsynth_voice(batch)
        if not normalize:
            monkeypatch.setattr(torchsynth.util, "normalize_if_clipping", lambda signal: signal)
        synth = get_synth("voice", mixer_curve="torchsynth")  # torchsynth applies the 0.025 noise curve
        # Fresh theta over the whole cube, plus the SynthAX doppelgangers (edges at eps).
        theta = torch.cat([synth.random_params(4, seed=7).double(), torch.from_numpy(_load("voice")["params_aug"][:4]).double()])
        _set_torchsynth_params(ts_voice, synth, theta)
        noise = torch.rand(batch, synth.n_samples, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 2 - 1
        ts_voice.noise.noise = noise.clone()
        with torch.no_grad():
            expected = ts_voice.output()
        ours = synth(theta, noise=noise, normalize=normalize)
    finally:
        torch.set_default_dtype(previous)
    assert expected.dtype == torch.float64
    err = (ours - expected).abs().max().item()
    assert err <= 1e-6, f"max abs error {err:.3g} vs torchsynth Voice (normalize={normalize})"
