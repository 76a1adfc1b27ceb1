"""Delta specs through the commands: delta-profile, info --groups, sample --sweep with specs, train's config."""

from __future__ import annotations

import csv

import torch
from click.testing import CliRunner

from doppel_torch.cli import main
from doppel_torch.train.cli import _parse_set, resolve_config
from doppel_torch.train.config import TrainConfig, make_config


def test_delta_profile_command_writes_csv_png_and_ranking(tmp_path):
    res = CliRunner().invoke(main, ["delta-profile", "--synth", "voice", "--n-theta", "2", "--out", str(tmp_path),
                                    "--duration", "0.25", "--grid", "0.05,0.25,1", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "ten strongest:" in res.output and "ten weakest:" in res.output
    rows = [r for r in csv.DictReader(line for line in open(tmp_path / "voice.csv") if not line.startswith("#"))]
    assert len(rows) == 78 and "effect@0.25" in rows[0] and "mean@1" in rows[0] and "effect@0.5" not in rows[0]
    assert (tmp_path / "voice.png").stat().st_size > 10_000
    bad = CliRunner().invoke(main, ["delta-profile", "--grid", "0.5,0.1", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "grid must be increasing" in bad.output
    for grid, expected in (("0.1,nan", "finite numbers"), ("0.1,0.25,nan,0.5", "finite numbers"),
                           ("0.1,0.2", "must reach --delta 0.25"), ("0.3,0.5", "must reach --delta 0.25")):
        bad = CliRunner().invoke(main, ["delta-profile", "--grid", grid, "--out", str(tmp_path / "x")])
        assert bad.exit_code == 2 and expected in bad.output, (grid, bad.output)
    # a profile made here is usable through "@"
    from doppel_torch.delta import resolve_delta
    from doppel_torch.synths import get_synth

    vec = resolve_delta(f"equal-effect:0.25@{tmp_path / 'voice.csv'}", get_synth("voice"))
    assert vec.shape == (78,) and (vec >= 0).all()


def test_info_groups_lists_the_pitch_group():
    res = CliRunner().invoke(main, ["info", "--groups", "--synth", "voicefm"])
    assert res.exit_code == 0, res.output
    assert "pitch" in res.output and "keyboard/midi_f0, vco_1/tuning" in res.output


def test_sample_sweep_renders_one_theta_under_two_specs(tmp_path):
    out = tmp_path / "s"
    res = CliRunner().invoke(main, ["sample", "--synth", "voice", "--pairs", "1", "--duration", "0.5", "--out", str(out),
                                    "--delta", "0.25+keep:pitch=0.02", "--sweep", "0.25;0.25+keep:pitch=0.02"])
    assert res.exit_code == 0, res.output
    import soundfile as sf

    keep, _ = sf.read(out / "sweep_00_delta_0.25_keep_pitch=0.02.wav")
    view_a, _ = sf.read(out / "pair_00_a.wav")
    scalar, _ = sf.read(out / "sweep_00_delta_0.25.wav")
    assert (keep == view_a).all() and not (keep == scalar).all()  # same theta and z_1, different pitch delta
    bad = CliRunner().invoke(main, ["sample", "--out", str(out), "--delta", "0.25+keep:pich=0.1"])
    assert bad.exit_code == 2 and "unknown group 'pich'" in bad.output and "Traceback" not in bad.output
    bad = CliRunner().invoke(main, ["sample", "--out", str(out), "--sweep", "0.25;keep:pitch=0.1"])
    assert bad.exit_code == 2 and "on top of a base delta" in bad.output


def test_train_config_keeps_the_spec(tmp_path):
    cfg = make_config("paper", {"data.synth": "voicefm", "data.delta": " equal-effect:0.25 + keep:pitch=0.02"})
    assert cfg.data.delta == "equal-effect:0.25+keep:pitch=0.02"  # canonical form
    again = TrainConfig.from_dict(cfg.to_dict())
    assert again.data.delta == cfg.data.delta and "equal-effect:0.25+keep:pitch=0.02" in cfg.describe()
    assert make_config("paper", {"data.delta": "0.1"}).data.delta == 0.1  # a number stays a number
    assert _parse_set(("data.delta=0.25+keep:pitch=0.02",)) == {"data.delta": "0.25+keep:pitch=0.02"}
    cfg = resolve_config("cpu-smoke", None, {"delta": "0.25+keep:pitch=0.02"}, {})
    assert cfg.data.delta == "0.25+keep:pitch=0.02"
    res = CliRunner().invoke(main, ["train", "--preset", "cpu-smoke", "--delta", "0.25+keep:pich=1", "--out",
                                    str(tmp_path)])
    assert res.exit_code == 2 and "unknown group 'pich'" in res.output


def test_train_prints_the_resolved_spec_and_resumes_with_it(tmp_path):
    args = ["train", "--preset", "cpu-smoke", "--synth", "voicefm", "--delta", "equal-effect:0.25+keep:pitch=0.02",
            "--out", str(tmp_path), "--max-steps", "1", "--no-progress", "--no-tensorboard", "--examples", "0",
            "--width", "8", "--batch-size", "4"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "delta equal-effect:0.25+keep:pitch=0.02 (per parameter: min" in res.output
    assert "pitch group 0.02, 0.02, 0.02, 0.02, 0.02" in res.output
    saved = torch.load(tmp_path / "last.pt", weights_only=True)["config"]["data"]["delta"]
    assert saved == "equal-effect:0.25+keep:pitch=0.02"
    resumed = resolve_config(None, str(tmp_path), {"max_steps": 2}, {})
    assert resumed.data.delta == saved
