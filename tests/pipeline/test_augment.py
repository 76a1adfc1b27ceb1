"""AugmentChain against torch-audiomentations 0.12 given the same draws; pitch shift by its effect on tones."""

import math
import warnings

import pytest
import soundfile as sf
import torch

from doppel_torch import functional as F
from doppel_torch.augment import TRANSFORMS, AugmentChain, AugmentParams, TorchAudiomentationsChain
from tests.conftest import RIRS  # $DOPPEL_SHARED/data/rirs, default ../shared

ta = pytest.importorskip("torch_audiomentations")
SR = 16000


def _audio(batch, n=SR, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / SR
    f0 = 100 + 3000 * torch.rand(batch, 1, generator=g)
    x = 0.5 * torch.sin(2 * math.pi * f0 * t) + 0.2 * torch.randn(batch, n, generator=g)
    return x.float()


def _frozen(transform, **params):
    """A torch-audiomentations transform that applies exactly the given draws (no randomisation)."""
    transform.transform_parameters = params
    transform.freeze_parameters()
    return transform


def _ta_apply(transform, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transform(x[:, None, :], sample_rate=SR).samples[:, 0, :]


KW = dict(mode="per_example", p=0.5, sample_rate=SR, output_type="dict")


@pytest.mark.parametrize("subset_rows", [True, False])
def test_filters_and_shift_equal_torch_audiomentations_given_the_draws(subset_rows):
    x = _audio(24)
    chain = AugmentChain(transforms=["highpass", "lowpass", "shift"], seed=3)
    chain.subset_rows = subset_rows  # False: the torch.where path used on GPUs
    idx = torch.arange(1000, 1024)
    params = chain.draw(idx, x.shape[-1])
    ours = chain(x, idx)

    expected = x.clone()
    for name, transform, key, value in [
        ("highpass", ta.HighPassFilter(20, 800, **KW), "cutoff_freq", params.highpass_hz),
        ("lowpass", ta.LowPassFilter(1200, 8000, **KW), "cutoff_freq", params.lowpass_hz),
        ("shift", ta.Shift(-0.25, 0.25, rollover=True, **KW), "num_samples_to_shift", params.shift.int()),
    ]:
        apply = params.enabled(name)
        assert 0 < int(apply.sum()) < 24  # the gating itself is exercised
        frozen = _frozen(transform, should_apply=apply, **{key: value[apply]})
        expected = _ta_apply(frozen, expected)
    assert not params.enabled("pitch_shift").any() and not params.enabled("reverb").any()
    torch.testing.assert_close(ours, expected, rtol=0, atol=2e-5)


# Not exactly 800 Hz: there torch-audiomentations' constant-cutoff path (used here, float64 800 / 16000 -> 80
# taps a side) and its random-cutoff path (float32 -> 79, followed by doppel-torch) disagree with each other.
@pytest.mark.parametrize("cutoff_hz", [20.0, 33.3, 150.0, 799.9, 1200.0, 4321.0, 8000.0])
def test_lowpass_and_highpass_equal_julius_filters_at_range_edges(cutoff_hz):
    x = _audio(2, n=5000, seed=1)
    lp = _ta_apply(ta.LowPassFilter(cutoff_hz, cutoff_hz, mode="per_example", p=1.0, sample_rate=SR, output_type="dict"), x)
    hp = _ta_apply(ta.HighPassFilter(cutoff_hz, cutoff_hz, mode="per_example", p=1.0, sample_rate=SR, output_type="dict"), x)
    c = torch.full((2,), cutoff_hz)
    torch.testing.assert_close(F.lowpass(x, c, SR, half_size=3200), lp, rtol=0, atol=2e-5)
    torch.testing.assert_close(F.highpass(x, c, SR), hp, rtol=0, atol=2e-5)


def test_too_short_filter_grid_is_rejected():
    with pytest.raises(ValueError, match="too short"):
        F.lowpass(torch.zeros(1, 100), torch.tensor([100.0]), SR, half_size=53)


def test_reverb_equals_torch_audiomentations_given_the_impulse_responses():
    torchaudio_f = pytest.importorskip("torchaudio.functional")
    x = _audio(12, seed=2)
    chain = AugmentChain(transforms=["reverb"], ir_paths=RIRS, seed=5)
    assert chain.n_irs == len(list(RIRS.glob("*.wav"))) >= 2
    idx = torch.arange(12)
    params = chain.draw(idx, x.shape[-1])
    apply = params.enabled("reverb")
    assert 0 < int(apply.sum()) < 12 and len(set(params.ir_index[apply].tolist())) >= 2
    # the impulse responses as torch-audiomentations prepares them: channel mean, torchaudio resampling
    files = sorted(p for p in RIRS.glob("*.wav"))
    irs = []
    for path in files:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
        irs.append(torchaudio_f.resample(torch.from_numpy(data.T).mean(0, keepdim=True), rate, SR))
    chosen = [irs[i] for i in params.ir_index[apply].tolist()]
    ir = torch.nn.utils.rnn.pad_sequence([c.T for c in chosen], batch_first=True).transpose(1, 2)
    frozen = _frozen(ta.ApplyImpulseResponse(str(RIRS), **KW), should_apply=apply, ir=ir, ir_paths=[])
    expected = _ta_apply(frozen, x)
    ours = chain(x, idx)
    scale = expected.abs().max()
    torch.testing.assert_close(ours / scale, expected / scale, rtol=0, atol=1e-5)


def test_cpu_row_blocks_do_not_change_results():
    """Pitch shift and reverb run in row blocks on CPU (F.PITCH_CPU_ROWS, REVERB_CPU_ROWS): a row's result is
    the same whatever the batch it comes in (up to FFT rounding)."""
    from doppel_torch.augment import REVERB_CPU_ROWS

    x = _audio(2 * REVERB_CPU_ROWS + 3, seed=4)
    semitones = torch.linspace(-2, 2, x.shape[0])
    alone = torch.cat([F.pitch_shift(x[i : i + 1].repeat(2, 1), semitones[i : i + 1].repeat(2))[:1]
                       for i in range(x.shape[0])])
    torch.testing.assert_close(F.pitch_shift(x, semitones), alone, rtol=0, atol=1e-5)
    chain = AugmentChain(transforms=["reverb"], ir_paths=RIRS)
    ir_index = torch.arange(x.shape[0]) % chain.n_irs
    alone = torch.cat([chain._reverb(x[i : i + 1], ir_index[i : i + 1]) for i in range(x.shape[0])])
    scale = alone.abs().max()
    torch.testing.assert_close(chain._reverb(x, ir_index) / scale, alone / scale, rtol=0, atol=1e-6)


@pytest.mark.parametrize("f0", [220.0, 440.0, 1000.0])
@pytest.mark.parametrize("semitones", [-2.0, -0.5, 1.0, 2.0])
def test_pitch_shift_moves_a_tone_by_the_ratio(f0, semitones):
    t = torch.arange(SR) / SR
    tone = 0.5 * torch.sin(2 * math.pi * f0 * t)
    x = torch.stack([tone, tone])
    y = F.pitch_shift(x, torch.tensor([semitones, 0.0]))
    n = 12000
    spec = torch.fft.rfft(y[0, 2000 : 2000 + n] * torch.hann_window(n)).abs()
    k = int(spec.argmax())
    peak_hz = (k + 0.5 * (spec[k - 1] - spec[k + 1]) / (spec[k - 1] - 2 * spec[k] + spec[k + 1])) * SR / n
    assert peak_hz == pytest.approx(f0 * 2 ** (semitones / 12), rel=2e-3)
    # loudness is kept within 2 dB (measured worst case here: -1.75 dB at 220 Hz, -2 semitones; a phase
    # vocoder without peak locking loses a little where a partial's lobe is resampled; torch-audiomentations'
    # own PitchShift loses 2.5 dB on a 440 Hz tone at ratio 0.9766) and r = 1 reconstructs the input
    rms = lambda v: float(v[2000:14000].pow(2).mean().sqrt())  # noqa: E731
    assert abs(20 * math.log10(rms(y[0]) / rms(tone))) < 2.0
    torch.testing.assert_close(y[1], tone, rtol=0, atol=1e-4)


def test_pitch_shift_agrees_with_torch_audiomentations_on_a_harmonic_tone():
    """Same ratio (a 'fast' one torch-audiomentations can use) -> same partials within 0.3 %."""
    from fractions import Fraction

    from torch_pitch_shift import pitch_shift as tps

    t = torch.arange(SR) / SR
    tone = sum(0.3 / h * torch.sin(2 * math.pi * 330 * h * t) for h in (1, 2, 3))
    ratio = Fraction(16, 15)  # +1.117 semitones
    theirs = tps(tone[None, None], ratio, SR)[0, 0]
    ours = F.pitch_shift(tone[None], torch.tensor([12 * math.log2(float(ratio))]))[0]

    def partials(v):
        spec = torch.fft.rfft(v[2000:14000] * torch.hann_window(12000)).abs()
        peaks = [int(spec[int(h * 330 * 1.0667 * 0.75 / SR * 12000) : int(h * 330 * 1.0667 * 1.25 / SR * 12000)].argmax()) for h in (1, 2, 3)]
        return [(p + int(h * 330 * 1.0667 * 0.75 / SR * 12000)) * SR / 12000 for p, h in zip(peaks, (1, 2, 3))]

    for a, b, h in zip(partials(ours), partials(theirs), (1, 2, 3)):
        assert a == pytest.approx(b, rel=3e-3) and a == pytest.approx(330 * h * float(ratio), rel=3e-3)


def test_fast_pitch_choices_are_torch_audiomentations_ratios():
    """At 16 kHz torch-audiomentations' '+-2 semitones' can only pick 125/128 or 128/125 (+-0.41 semitones)."""
    from torch_pitch_shift import get_fast_shifts

    from doppel_torch.augment import fast_pitch_semitones

    for sr, lo, hi in [(16000, -2, 2), (44100, -2, 2), (22050, -4, 4)]:
        theirs = get_fast_shifts(sr, lambda x: 2 ** (lo / 12) <= x <= 2 ** (hi / 12) and x != 1)
        expected = sorted(12 * math.log2(float(f)) for f in theirs)
        assert fast_pitch_semitones(sr, (lo, hi)) == pytest.approx(expected)
    chain = AugmentChain(pitch="fast_ratios")
    drawn = sorted(set(chain.draw(torch.arange(200), SR).semitones.tolist()))
    assert drawn == pytest.approx(fast_pitch_semitones(SR, (-2, 2)), abs=1e-6)


def test_draws_are_keyed_by_index_and_view():
    chain = AugmentChain(ir_paths=RIRS, seed=11)
    x = _audio(8, seed=4)
    idx = torch.arange(50, 58)
    full = chain(x, idx)
    scale = float(full.abs().max())  # reverb gains are not normalised
    torch.testing.assert_close(chain(x[3:6], idx[3:6]), full[3:6], rtol=0, atol=1e-5 * scale)  # batch-size invariant up to FFT rounding
    assert torch.equal(chain(x, idx), full)  # deterministic
    chain.subset_rows = False  # every row computed, then torch.where (the path used on GPUs)
    torch.testing.assert_close(chain(x, idx), full, rtol=0, atol=1e-5 * scale)
    chain.subset_rows = None
    a, b = chain.draw(idx, SR, view=0), chain.draw(idx, SR, view=1)
    assert not torch.equal(a.apply, b.apply) or not torch.equal(a.shift, b.shift)
    other = AugmentChain(ir_paths=RIRS, seed=12).draw(idx, SR)
    assert not torch.equal(other.semitones, a.semitones)
    with pytest.raises(ValueError, match="view"):
        chain.draw(idx, SR, view=2)


def test_draw_distribution_matches_the_paper_settings():
    chain = AugmentChain(ir_paths=RIRS)
    params = chain.draw(torch.arange(4000), SR)
    rate = params.apply.float().mean(0)
    assert torch.all((rate - 0.5).abs() < 0.04), rate  # p = 0.5 each; 4000 draws: sd 0.008
    assert 20 <= params.highpass_hz.min() and params.highpass_hz.max() <= 800
    assert 1200 <= params.lowpass_hz.min() and params.lowpass_hz.max() <= 8000
    assert -2 <= params.semitones.min() and params.semitones.max() <= 2 and params.semitones.std() > 1.0
    assert params.shift.min() >= -4000 and params.shift.max() <= 4000 and params.shift.unique().numel() > 2000
    assert set(params.ir_index.tolist()) == set(range(chain.n_irs))
    # apply draws of different transforms are independent (no shared counter)
    a = params.apply.float()
    corr = torch.corrcoef(a.T)
    assert (corr - torch.eye(5)).abs().max() < 0.08


def test_p_zero_is_identity_and_p_one_applies_everything():
    x = _audio(4, seed=6)
    assert torch.equal(AugmentChain(p=0.0, ir_paths=RIRS)(x), x)
    chain = AugmentChain(p=1.0, ir_paths=RIRS)
    params = chain.draw(torch.arange(4), SR)
    assert params.apply.all()
    y = chain(x)
    assert y.shape == x.shape and torch.isfinite(y).all() and not torch.allclose(y, x, atol=1e-2)


@pytest.mark.parametrize("subset_rows", [True, False])
def test_input_is_left_unchanged(subset_rows):
    # the chain writes selected rows in place into its own copy; the caller's tensor must not change
    x = _audio(6, seed=8)
    x0 = x.clone()
    chain = AugmentChain(p=0.5, ir_paths=RIRS, seed=5)
    chain.subset_rows = subset_rows
    assert 0 < int(chain.draw(torch.arange(6), SR).apply.sum()) < 6 * len(chain.transforms)
    y = chain(x)
    assert torch.equal(x, x0) and not torch.equal(y, x)


def test_errors_say_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="ir_paths"):
        AugmentChain(transforms=["reverb"])
    with pytest.raises(ValueError, match="unknown transforms"):
        AugmentChain(transforms=["chorus"])
    with pytest.raises(ValueError, match="probability"):
        AugmentChain(p=1.5)
    with pytest.raises(ValueError, match=r"sample_rate / 2 = 8000, got \(1200, 9000\): pass lowpass_hz="):
        AugmentChain(lowpass_hz=(1200, 9000))
    # the defaults follow the rate: 8 kHz audio low-passes at 1200 .. 4000 Hz (it raised on its own defaults)
    narrow = AugmentChain(8000)
    assert narrow.lowpass_hz == (1200.0, 4000.0) and narrow.highpass_hz == (20.0, 800.0)
    assert narrow(torch.randn(2, 4000), torch.arange(2)).shape == (2, 4000)
    with pytest.raises(ValueError, match=r"pass lowpass_hz=\(low, high\) for 2000 Hz audio"):
        AugmentChain(2000)
    with pytest.raises(ValueError, match=r"highpass_hz must be a \(low, high\) pair in Hz, got \(20,\)"):
        AugmentChain(8000, highpass_hz=(20,))
    with pytest.raises(ValueError, match="no audio files"):
        AugmentChain(ir_paths=tmp_path)
    with pytest.raises(ValueError, match=r"\(batch, samples\)"):
        AugmentChain()(torch.zeros(3, 1, 100))
    assert TRANSFORMS == ("highpass", "lowpass", "pitch_shift", "shift", "reverb")
    assert isinstance(AugmentChain().draw(torch.arange(2), 100), AugmentParams)


def test_torch_audiomentations_compatibility_chain_is_per_batch_in_chunks():
    torch.manual_seed(0)
    x = _audio(1, n=8000).repeat(6, 1)  # identical rows: per-batch draws keep rows of a chunk identical
    compat = TorchAudiomentationsChain(p=1.0, ir_paths=RIRS, chunk_size=3)
    y = compat(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    # Identical rows get identical draws; batched float32 kernels may round rows differently (3e-8 seen in CI).
    torch.testing.assert_close(y[0:3], y[0:1].expand(3, -1), rtol=0, atol=1e-6)
    torch.testing.assert_close(y[3:6], y[3:4].expand(3, -1), rtol=0, atol=1e-6)
    assert not torch.allclose(y[0], y[3])  # the two chunks got their own draws
    assert not torch.allclose(y[0], x[0])


@pytest.mark.parametrize("subset_rows", [True, False])
def test_empty_batch_gives_an_empty_batch(subset_rows):
    chain = AugmentChain(p=1.0, ir_paths=RIRS)
    chain.subset_rows = subset_rows
    out = chain(torch.zeros(0, SR), torch.zeros(0, dtype=torch.int64))
    assert out.shape == (0, SR)


def test_group_shares_one_draw_per_chunk_as_the_released_code():
    """group=100 (the released code's chunks of 100): rows of a chunk are augmented alike, chunks differ."""
    chain = AugmentChain(16000, p=1.0, group=3, transforms=("lowpass", "shift"))
    tone = torch.sin(torch.arange(8000) * 0.3).expand(7, -1).contiguous()
    out = chain(tone, torch.arange(40, 47))
    assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[2]) and torch.equal(out[3], out[5])
    assert not torch.equal(out[2], out[3]) and not torch.equal(out[5], out[6])
    # the shared draw is the chunk's first sound's own per-sound draw
    single = AugmentChain(16000, p=1.0, transforms=("lowpass", "shift"))
    torch.testing.assert_close(out[3], single(tone[:1], torch.tensor([43]))[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="group must be an integer >= 1"):
        AugmentChain(16000, group=0)
