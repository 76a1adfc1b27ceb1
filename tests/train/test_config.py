from __future__ import annotations

import pytest
import torch

from doppel_torch.train.config import PRESETS, TrainConfig, make_config
from doppel_torch.train.loop import Trainer

from tests.train.helpers import tiny_config


def test_default_is_the_paper_recipe():
    cfg = TrainConfig()
    assert cfg.model.embed_dim == 512 and cfg.model.width == 64 and cfg.model.in_channels == 1
    assert cfg.optim.batch_size == 768 and cfg.optim.epochs == 200 and cfg.optim.weight_decay == 1e-6
    assert cfg.data.sounds_per_epoch == 100_000 and cfg.data.n_val == 10_000 and cfg.data.delta == 0.25
    assert cfg.optim.peak_lr(world_size=2) == pytest.approx(0.72)  # the paper: 0.12 x 1536 / 256
    assert cfg.optim.milestone_epochs() == [155, 170, 185]
    assert cfg.steps_per_epoch(world_size=2) == 90_000 // 1536
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_presets_and_overrides():
    smoke = make_config("cpu-smoke", {"optim.epochs": 5, "data.synth": "voicefm", "run.seed": None})
    assert smoke.optim.epochs == 5 and smoke.data.synth == "voicefm" and smoke.model.width == PRESETS["cpu-smoke"]["model.width"]
    assert "[optim]" in smoke.describe() and "epochs = 5" in smoke.describe()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"data.delta": -0.1}, "delta must be a finite number >= 0"),
        ({"data.delta": float("nan")}, "data.delta must be finite, got nan"),
        ({"data.synth": "moog"}, "synth must be one of voice, voicefm, parametric"),
        ({"optim.batch_size": 1}, "batch_size"),
        ({"optim.milestones": [0.9, 0.5]}, "increasing"),
        ({"run.precision": "fp8"}, "precision must be one of"),
        ({"data.mix_layers": 3}, "needs real data"),
        ({"model.widht": 3}, "unknown config field 'model.widht'"),
    ],
)
def test_bad_values_raise_clear_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        make_config("paper", overrides)
    with pytest.raises(ValueError, match="unknown preset"):
        make_config("tiny")


def test_lr_schedule_steps_at_milestone_epochs(tmp_path, audio_dir):
    """MultiStepLR over epochs: peak lr = 0.12 x batch / 256, x0.1 after 77.5 / 85 / 92.5 % of the epochs."""
    cfg = tiny_config(tmp_path, optim__epochs=40, data__data=str(audio_dir))
    trainer = Trainer(cfg, log=lambda s: None)
    peak = 0.12 * 4 / 256
    assert trainer.peak_lr == pytest.approx(peak)
    lrs = []
    for _ in range(cfg.optim.epochs):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.optimizer.step()
        trainer.scheduler.step()
    expected = [peak * 0.1 ** sum(e >= m for m in (31, 34, 37)) for e in range(40)]
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert torch.is_tensor(trainer.frontend.filterbank)


def test_paper_preset_is_the_released_code():
    """--preset paper field by field (sources in doppel_torch/train/config.py's docstring)."""
    paper, default = make_config("paper"), make_config("default")
    assert paper.optim.momentum == 0.0 and paper.optim.weight_decay == 1e-6 and paper.optim.base_lr == 0.12
    assert paper.run.sync_batchnorm and paper.run.precision == "fp32"
    assert paper.data.augment and paper.data.augment_group == 100 and paper.data.augment_pitch == "fast_ratios"
    assert (paper.run.val_every, paper.run.keep_every, paper.run.log_every) == (10, 10, 30)
    assert (paper.optim.batch_size, paper.optim.epochs, paper.data.sounds_per_epoch) == (768, 200, 100_000)
    assert paper.data.delta == 0.25 and paper.data.noise == "shared" and paper.data.val_fraction == 0.1
    assert paper.model == default.model
    # lr: the paper's formula, not the released integer division (0 below a batch of 256)
    assert paper.optim.peak_lr(world_size=2) == pytest.approx(0.72)
    assert make_config("paper", {"optim.batch_size": 64}).optim.peak_lr(world_size=1) == pytest.approx(0.03)
    # milestones as the released int(epochs x m)
    assert make_config("paper", {"optim.epochs": 10}).optim.milestone_epochs() == [7, 8, 9]


def test_help_states_the_true_defaults():
    from click.testing import CliRunner

    from doppel_torch.train.cli import train

    text = " ".join(CliRunner().invoke(train, ["--help"]).output.split())
    d = TrainConfig()
    assert f"SGD momentum [{d.optim.momentum:g}; --preset paper: 0]" in text
    assert f"[{'on' if d.run.sync_batchnorm else 'off'}; --preset paper: on]" in text
    assert "as the paper" not in text


def test_one_epoch_run_starts_at_the_peak_lr(tmp_path, audio_dir):
    cfg = tiny_config(tmp_path, optim__epochs=1, data__data=str(audio_dir))
    assert cfg.optim.milestone_epochs() == [1, 1, 1]
    trainer = Trainer(cfg, log=lambda s: None)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(trainer.peak_lr)
