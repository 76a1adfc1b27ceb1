"""A few CPU steps of each training mode, resume equality, NaN handling and unreadable files."""

from __future__ import annotations

import csv
import shutil

import pytest
import torch

from doppel_torch.train import checkpoint as ckpt_io
from doppel_torch.train import loop
from doppel_torch.train.loop import NonFiniteLoss, Trainer

from tests.conftest import FSDD
from tests.train.helpers import tiny_config



def _quiet(_: str) -> None:
    pass


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_real_data_mix_layers_run_logs_and_checkpoint(tmp_path, audio_dir):
    cfg = tiny_config(
        tmp_path, data__data=str(audio_dir), data__mix_layers=2, data__num_workers=1, run__max_steps=2,
        run__examples=1, run__tensorboard=True,
    )
    summary = Trainer(cfg, log=_quiet).fit()
    assert summary["status"] == "done" and summary["step"] == 2
    rows = _rows(tmp_path / "metrics.csv")
    assert [r["kind"] for r in rows] == ["train", "train", "val"]
    for r in rows:
        assert all(torch.isfinite(torch.tensor(float(r[k]))) for k in ("loss", "align", "uniform"))
    assert float(rows[0]["align"]) > 0  # jittered, mixed views differ
    ckpt = ckpt_io.load_checkpoint(tmp_path / "last.pt")
    assert ckpt["step"] == 2 and ckpt["config"]["data"]["mix_layers"] == 2
    assert set(ckpt) >= {"model", "optimizer", "scheduler", "step", "epoch", "config", "rng"}
    pngs = list((tmp_path / "examples").rglob("logmel.png"))
    wavs = list((tmp_path / "examples").rglob("*.wav"))
    assert len(pngs) == 1 and len(wavs) == 2
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    encoder, config = ckpt_io.load_encoder(tmp_path / "last.pt")
    assert config["model"]["width"] == 4 and encoder(torch.randn(2, 1, 96, 64)).shape == (2, 16)


def test_lr_schedule_in_the_loop(tmp_path, audio_dir):
    # 1 step per epoch (4 training sounds, batch 4), 4 epochs: milestones int(0.775 x 4) = 3, int(3.4) = 3,
    # int(3.7) = 3 (the released code's int(); round() gave 3, 3, 4).
    cfg = tiny_config(
        tmp_path, data__data=str(audio_dir), data__sounds_per_epoch=8, data__val_fraction=0.5, optim__epochs=4,
        run__val_every=10, run__keep_every=2,
    )
    Trainer(cfg, log=_quiet).fit()
    # run.keep_every=2 keeps epoch 2 and 4 beside last.pt (the released code keeps one every 10 epochs)
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["epoch-0002.pt", "epoch-0004.pt", "last.pt"]
    lrs = [float(r["lr"]) for r in _rows(tmp_path / "metrics.csv") if r["kind"] == "train"]
    peak = 0.12 * 4 / 256
    assert lrs == pytest.approx([peak, peak, peak, peak * 0.001])


def test_resume_equals_uninterrupted_run(tmp_path, audio_dir):
    common = dict(
        data__data=str(audio_dir), data__sounds_per_epoch=12, data__val_fraction=1 / 3, optim__epochs=2,
        optim__milestones=[0.5],
    )
    # 2 steps per epoch; the interrupted run stops inside epoch 1 and resumes across the LR milestone.
    full = Trainer(tiny_config(tmp_path / "full", **common), log=_quiet)
    full.fit()
    first = Trainer(tiny_config(tmp_path / "split", run__max_steps=1, **common), log=_quiet)
    first.fit()
    assert first.step == 1
    with open(tmp_path / "split" / "metrics.csv", "a") as f:  # a row logged after the checkpoint, then a crash
        f.write("train,2,1.0,0.001,9,9,9,1,1\n")
    second = Trainer(tiny_config(tmp_path / "split", run__resume=str(tmp_path / "split"), **common), log=_quiet)
    second.fit()
    assert second.step == full.step == 4
    assert second.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * second.peak_lr)
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[key]), key
    m_full = full.optimizer.state_dict()["state"]
    m_split = second.optimizer.state_dict()["state"]
    assert all(torch.equal(m_full[i]["momentum_buffer"], m_split[i]["momentum_buffer"]) for i in m_full)
    assert second.scheduler.state_dict() == full.scheduler.state_dict()
    rows = [r for r in _rows(tmp_path / "split" / "metrics.csv") if r["kind"] == "train"]
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]


def test_resume_with_a_different_recipe_is_refused(tmp_path, audio_dir):
    Trainer(tiny_config(tmp_path, data__data=str(audio_dir), run__max_steps=1), log=_quiet).fit()
    other = tiny_config(tmp_path, data__data=str(audio_dir), optim__lr=0.5, run__resume=str(tmp_path / "last.pt"))
    with pytest.raises(ValueError, match=r"optim\.lr: checkpoint None, now 0\.5"):
        Trainer(other, log=_quiet).fit()


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, audio_dir, monkeypatch):
    real_loss = loop.losses.doppelganger_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        total, align, uniform = real_loss(*args, **kwargs)
        if calls["n"] >= 3:  # the third step goes NaN
            total = total * float("nan")
        return total, align, uniform

    monkeypatch.setattr(loop.losses, "doppelganger_loss", poisoned)
    cfg = tiny_config(tmp_path, data__data=str(audio_dir), run__checkpoint_every=2, run__log_every=1)
    with pytest.raises(NonFiniteLoss, match="last good checkpoint"):
        Trainer(cfg, log=_quiet).fit()
    ckpt = ckpt_io.load_checkpoint(tmp_path / "last.pt")
    assert ckpt["step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_unreadable_files_are_skipped_and_counted(tmp_path, audio_dir):
    folder = tmp_path / "audio"
    folder.mkdir()
    for name in ("0_george_0.wav", "1_jackson_0.wav", "2_theo_0.wav", "3_nicolas_0.wav"):
        shutil.copy(audio_dir / name, folder / name)
    (folder / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    (folder / "notes.txt").write_text("not audio")
    cfg = tiny_config(tmp_path / "run", data__data=str(folder), run__max_steps=1)
    with pytest.warns(UserWarning, match="skipping unreadable audio file .*broken.wav"):
        trainer = Trainer(cfg, log=_quiet)
    assert len(trainer.real.files) == 4 and len(trainer.real.skipped) == 1
    assert trainer.fit()["skipped_files"] == 1


def test_real_data_views_must_differ(tmp_path, audio_dir):
    cfg = tiny_config(tmp_path, data__data=str(audio_dir), data__jitter=False)
    with pytest.raises(ValueError, match="two identical views"):
        Trainer(cfg, log=_quiet)


@pytest.mark.parametrize(
    "synth, augment",
    [("voice", False), ("voice", True), ("voicefm", False), ("parametric", False)],
)
def test_synth_modes_take_steps(tmp_path, synth, augment):
    from tests.conftest import RIRS

    extra = {"data__augment": True, "data__ir_dir": str(RIRS)} if augment else {}
    if synth == "voicefm":  # the GPU options, on CPU: bf16 autocast and channels-last
        extra.update(run__precision="bf16", run__channels_last=True)
    cfg = tiny_config(tmp_path, data__synth=synth, run__max_steps=2, run__val_batches=1, **extra)
    trainer = Trainer(cfg, log=_quiet)
    indices = torch.arange(4, 8)
    audio1, audio2 = trainer.pairs(indices)
    assert audio1.shape == audio2.shape == (4, 16000) and not torch.equal(audio1, audio2)
    summary = trainer.fit()
    assert summary["status"] == "done" and summary["step"] == 2
    rows = _rows(tmp_path / "metrics.csv")
    assert [r["kind"] for r in rows] == ["train", "train", "val"]
    assert all(float(r["align"]) > 0 for r in rows)
    assert all(-4.5 < float(r["uniform"]) < 0 for r in rows)  # log-mean-exp(-2 d^2), d^2 in [0, 4]


def test_real_pairs_read_stereo_flac_ogg_at_other_rates(tmp_path):
    """Segments are the channel mean of the file, cut at the drawn offset and resampled to 16 kHz."""
    import numpy as np
    import soundfile as sf

    from doppel_torch import rng
    from doppel_torch.functional import resample
    from doppel_torch.train.data import RealPairs

    from tests.conftest import RIRS

    folder = tmp_path / "audio"
    folder.mkdir()
    hall, sr = sf.read(RIRS / "hall.wav", dtype="float32", always_2d=True)  # 5 s, stereo, 44.1 kHz
    sf.write(folder / "hall.flac", hall, sr)
    church, sr_church = sf.read(RIRS / "large_church.wav", dtype="float32", always_2d=True)  # 2 s, 48 kHz
    sf.write(folder / "church.ogg", church, sr_church)
    pairs = RealPairs(folder, n_val=4, val_fraction=0.5, seed=3)
    assert sorted(f.path.suffix for f in pairs.files) == [".flac", ".ogg"]
    indices = torch.tensor([10, 11, 12])
    view1, view2 = pairs(indices)
    assert view1.shape == view2.shape == (3, 16000) and torch.isfinite(view1).all()
    assert not torch.allclose(view1, view2)  # two different segments (temporal jitter)

    clip = pairs.train_files[0]
    data, _ = sf.read(clip.path, dtype="float32", always_2d=True)
    mono = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    seg_len = int(np.ceil(clip.sample_rate))
    u = rng.uniform(3, rng.Stream.DATA, indices, 3, dtype=torch.float64)
    for row in range(3):
        for view, out in ((0, view1), (1, view2)):
            start = int(u[row, 1 + view] * (clip.frames - seg_len + 1))
            expected = resample(mono[start : start + seg_len][None], clip.sample_rate, 16000)[0, :16000]
            peak = expected.abs().max()
            expected = expected / peak if peak > 1 else expected
            torch.testing.assert_close(out[row], expected, atol=1e-5, rtol=1e-4)


def test_dangling_links_and_link_loops_are_counted_as_skipped(tmp_path, audio_dir):
    folder = tmp_path / "audio"
    (folder / "sub").mkdir(parents=True)
    for name in ("0_george_0.wav", "1_jackson_0.wav", "2_theo_0.wav"):
        shutil.copy(audio_dir / name, folder / name)
    shutil.copy(audio_dir / "3_nicolas_0.wav", folder / "sub" / "3_nicolas_0.wav")
    (folder / "gone.wav").symlink_to(folder / "deleted.wav")  # dangling
    (folder / "loop.wav").symlink_to(folder / "loop.wav")  # a link to itself
    (folder / "sub" / "up").symlink_to(folder)  # a folder link back to the top: a loop
    linked = tmp_path / "linked"  # a linked folder of audio is read
    linked.mkdir()
    shutil.copy(audio_dir / "0_theo_0.wav", linked / "0_theo_0.wav")
    (folder / "more").symlink_to(linked)
    cfg = tiny_config(tmp_path / "run", data__data=str(folder), run__max_steps=1)
    with pytest.warns(UserWarning) as seen:
        trainer = Trainer(cfg, log=_quiet)
    warned = " | ".join(str(w.message) for w in seen)
    assert "gone.wav: dangling symbolic link" in warned and "up: a link to a folder already read" in warned, warned
    reasons = {p.name: r for p, r in trainer.real.skipped}  # files only: the loop folder is read once, not a file
    assert reasons == {"gone.wav": "dangling symbolic link (no target)", "loop.wav": "symbolic link loop"}
    assert sorted(f.path.name for f in trainer.real.files) == [
        "0_george_0.wav", "0_theo_0.wav", "1_jackson_0.wav", "2_theo_0.wav", "3_nicolas_0.wav"
    ]  # fmt: skip
    assert trainer.fit()["skipped_files"] == 2


@pytest.mark.parametrize("workers", [0, 1])
def test_a_file_failing_every_read_counts_once(tmp_path, audio_dir, workers):
    folder = tmp_path / "audio"
    folder.mkdir()
    for name in ("0_george_0.wav", "1_jackson_0.wav", "2_theo_0.wav", "3_nicolas_0.wav"):
        shutil.copy(audio_dir / name, folder / name)
    cfg = tiny_config(tmp_path / "run", data__data=str(folder), data__num_workers=workers, run__max_steps=3,
                      data__val_fraction=0.25)  # fmt: skip
    trainer = Trainer(cfg, log=_quiet)
    broken = trainer.real.train_files[0].path
    broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")  # readable at the scan, unreadable since
    if workers == 0:
        with pytest.warns(UserWarning, match=f"skipping unreadable audio file {broken}"):
            summary = trainer.fit()
    else:  # the worker process warns on its own stderr
        summary = trainer.fit()
    assert summary["skipped_files"] == 1
    assert trainer.failed_files | trainer.real.failed_files == {str(broken)}
    if workers == 0:
        assert trainer.real.read_failures > 1  # read attempts, counted apart


def test_audio_with_nan_is_skipped_and_a_folder_of_it_is_one_error(tmp_path, audio_dir):
    """A recording holding NaN would turn every batch it joins into a NaN loss: it is skipped like an unreadable
    file (warned, counted); when no file is left, the run stops with one message that says what to give."""
    import numpy as np
    import soundfile as sf

    from doppel_torch.train.data import NoAudioLeft, RealPairs

    folder = tmp_path / "audio"
    folder.mkdir()
    for name in ("0_george_0.wav", "1_jackson_0.wav"):
        shutil.copy(audio_dir / name, folder / name)
    sf.write(folder / "2_george_0.wav", np.full(8000, np.nan, dtype=np.float32), 8000, subtype="FLOAT")
    bad = folder / "2_george_0.wav"
    candidates = (RealPairs(folder, n_val=0, seed=seed) for seed in range(20))
    pairs = next(p for p in candidates if bad in [f.path for f in p.train_files])  # a seed that trains on it
    with pytest.warns(UserWarning, match="NaN or infinite samples"):
        for start in range(0, 24, 6):
            view1, view2 = pairs(torch.arange(start, start + 6))
            assert torch.isfinite(view1).all() and torch.isfinite(view2).all()
    assert pairs.failed_files == {str(bad)}
    for name in ("0_george_0.wav", "1_jackson_0.wav"):
        (folder / name).unlink()
    sf.write(folder / "3_george_0.wav", np.full(8000, np.inf, dtype=np.float32), 8000, subtype="FLOAT")
    only_nan = RealPairs(folder, n_val=0, seed=0)  # one file for validation, one (not finite either) for training
    with pytest.warns(UserWarning), pytest.raises(NoAudioLeft, match="give --data a folder of working recordings"):
        only_nan(torch.arange(2))


@pytest.mark.parametrize("n_val,world,batch", [(10_000, 16, 768), (16, 1, 32), (32, 2, 32), (4, 1, 4), (5, 8, 4),
                                               (2, 1, 64), (100, 3, 8)])
def test_validation_reads_only_validation_sounds(n_val, world, batch):
    """Every rank's validation indices lie in 0 .. n_val - 1, at least 2 a batch (uniformity compares pairs), and a
    split of at least one global batch validates on whole training-size batches as before. Found from outside: a
    split smaller than a global batch (cpu-smoke under torchrun, the README's 16-GPU example) read training sounds."""
    from doppel_torch.train.data import val_batch_size, val_batches, val_indices

    per = val_batch_size(n_val, world, batch)
    seen = torch.cat([val_indices(b, r, world, batch, n_val) for b in range(val_batches(n_val, world, batch))
                      for r in range(world)])
    assert per >= 2 and int(seen.min()) >= 0 and int(seen.max()) < n_val
    if n_val >= world * batch:
        assert per == batch and seen.unique().numel() == seen.numel()
    elif n_val >= 2 * world:  # a smaller batch, no sound read twice
        assert seen.unique().numel() == seen.numel() == world * per


def test_a_signal_during_validation_stops_it_and_the_resumed_run_does_it(tmp_path):
    """Ctrl-C / SIGTERM while a validation runs: it stops between batches (it used to run to the end, minutes on a
    big split, and a run whose last validation it was ended "done"), nothing of it is recorded, the run ends
    "interrupted" with a checkpoint that marks it pending, and the resumed run validates first: the same row as a
    run never interrupted."""
    import signal

    common = dict(data__sounds_per_epoch=44, data__val_fraction=8 / 44, optim__epochs=1, run__max_steps=2)
    full = Trainer(tiny_config(tmp_path / "full", **common), log=_quiet)
    full.fit()
    first = Trainer(tiny_config(tmp_path / "split", **common), log=_quiet)
    real_embed = first.embed

    def embed(model, *args):
        if not model.training:  # a validation batch: the signal arrives now, before the second of two
            first._stop_signal = signal.SIGINT
        return real_embed(model, *args)

    first.embed = embed
    summary = first.fit()
    assert summary["status"] == "interrupted" and summary["step"] == 2 and not first.last_val
    assert not any(r["kind"] == "val" for r in _rows(tmp_path / "split" / "metrics.csv"))
    assert ckpt_io.load_checkpoint(tmp_path / "split" / "last.pt")["val_pending"]
    second = Trainer(tiny_config(tmp_path / "split", run__resume=str(tmp_path / "split"), **common), log=_quiet)
    assert second.fit()["status"] == "done"
    val = [r for r in _rows(tmp_path / "split" / "metrics.csv") if r["kind"] == "val"]
    want = [r for r in _rows(tmp_path / "full" / "metrics.csv") if r["kind"] == "val"]
    assert len(val) == len(want) == 1 and val[0]["loss"] == want[0]["loss"] and val[0]["step"] == "2"
    assert not ckpt_io.load_checkpoint(tmp_path / "split" / "last.pt")["val_pending"]


def test_a_run_stopped_by_a_signal_resumes_to_the_same_metrics_rows(tmp_path):
    """A signal between two log rows: the checkpoint carries the training metrics since the last row instead of
    writing a row of its own, so the resumed run's metrics.csv has the rows (and values) of an uninterrupted run
    (an extra row at the signal's step before, and a next row averaging fewer steps)."""
    import signal

    common = dict(data__sounds_per_epoch=44, data__val_fraction=8 / 44, optim__epochs=1, run__log_every=3)
    full = Trainer(tiny_config(tmp_path / "full", **common), log=_quiet)
    full.fit()
    first = Trainer(tiny_config(tmp_path / "split", **common), log=_quiet)
    real_step = first.train_step

    def step(*args):
        out = real_step(*args)
        if first.step == 4:  # between the rows of steps 3 and 6
            first._stop_signal = signal.SIGTERM
        return out

    first.train_step = step
    assert first.fit()["status"] == "interrupted" and first.step == 4
    assert ckpt_io.load_checkpoint(tmp_path / "split" / "last.pt")["train_metrics"]["steps"] == 1
    Trainer(tiny_config(tmp_path / "split", run__resume=str(tmp_path / "split"), **common), log=_quiet).fit()
    keys = ("kind", "step", "loss", "align", "uniform")
    rows = [tuple(r[k] for k in keys) for r in _rows(tmp_path / "split" / "metrics.csv")]
    assert rows == [tuple(r[k] for k in keys) for r in _rows(tmp_path / "full" / "metrics.csv")]
