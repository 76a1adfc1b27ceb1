from __future__ import annotations

import datetime
import os

import pytest
import torch
import torch.nn.functional as F

from doppel_torch.losses import align_loss, doppelganger_loss, gather_with_grad, uniform_loss
from doppel_torch.models import ResNet18Encoder
from doppel_torch.train.checkpoint import load_encoder, save_checkpoint


def test_resnet18_shapes_and_size():
    model = ResNet18Encoder()
    # torchvision's resnet18 has 11,689,512 parameters; a 1-channel stem removes 2 x 64 x 7 x 7 = 6,272 and a
    # 512-d head instead of 1000 classes removes 488 x 513 = 250,344.
    assert sum(p.numel() for p in model.parameters()) == 11_689_512 - 6_272 - 250_344
    z = model(torch.randn(3, 1, 96, 64))
    assert z.shape == (3, 512)
    assert model.features(torch.randn(1, 1, 96, 64)).shape == (1, 512)
    assert ResNet18Encoder(width=8, embed_dim=32)(torch.randn(2, 1, 96, 64)).shape == (2, 32)


def test_resnet18_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\(batch, 1, time, mel\)"):
        ResNet18Encoder(width=4)(torch.randn(2, 96, 64))
    with pytest.raises(ValueError, match="positive"):
        ResNet18Encoder(width=0)


def test_losses_match_definitions():
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(9, 5, generator=g, dtype=torch.float64), dim=1)
    y = F.normalize(torch.randn(9, 5, generator=g, dtype=torch.float64), dim=1)
    # Wang & Isola's reference code.
    assert torch.allclose(align_loss(x, y), (x - y).norm(dim=1).pow(2).mean())
    assert torch.allclose(uniform_loss(x), torch.pdist(x, p=2).pow(2).mul(-2).exp().mean().log())
    assert torch.allclose(uniform_loss(x, t=0.5), torch.pdist(x, p=2).pow(2).mul(-0.5).exp().mean().log())
    total, align, uniform = doppelganger_loss(3 * x, y)  # normalises its inputs
    assert torch.allclose(total, align + uniform, atol=1e-6)
    assert torch.allclose(uniform.double(), 0.5 * (uniform_loss(x) + uniform_loss(y)), atol=1e-6)
    # Far-apart points: exp underflows to 0 in the naive formula, the log-sum-exp stays finite.
    far = torch.tensor([[0.0], [100.0], [200.0]])
    assert torch.isfinite(uniform_loss(far)) and uniform_loss(far) < -1e3


def test_loss_errors_and_single_process_gather():
    with pytest.raises(ValueError, match="B >= 2"):
        uniform_loss(torch.randn(1, 4))
    with pytest.raises(ValueError, match="one shape"):
        align_loss(torch.randn(2, 4), torch.randn(3, 4))
    x = torch.randn(4, 3)
    assert gather_with_grad(x) is x


def test_load_encoder_roundtrip(tmp_path):
    model = ResNet18Encoder(width=4, embed_dim=16)
    config = {"model": {"in_channels": 1, "embed_dim": 16, "width": 4}, "data": {"synth": "voice"}}
    state = {"module." + k: v for k, v in model.state_dict().items()}  # as saved from a DDP wrapper
    save_checkpoint(tmp_path / "run" / "last.pt", {"model": state, "config": config})
    mask = os.umask(0o022)
    os.umask(mask)  # the file's mode is what open() gives, as metrics.csv beside it (mkstemp alone made it 0600)
    assert (tmp_path / "run" / "last.pt").stat().st_mode & 0o777 == 0o666 & ~mask
    encoder, loaded = load_encoder(tmp_path / "run")  # a run folder means its last.pt
    assert loaded == config and not encoder.training
    x = torch.randn(2, 1, 96, 64)
    model.eval()
    assert torch.equal(encoder(x), model(x))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not be loaded as a checkpoint"):
        load_encoder(tmp_path / "junk.pt")
    # An object that unpickling would construct (here a datetime; in an attack, anything) is refused.
    torch.save({"format": "doppel-torch-checkpoint", "config": {}, "when": datetime.datetime.now()}, tmp_path / "obj.pt")
    with pytest.raises(ValueError, match="(?s)weights_only=True.*datetime"):
        load_encoder(tmp_path / "obj.pt")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_encoder(tmp_path / "missing.pt")
    # weights that do not fit the config's model (edited, or from another version): one line, not torch's 135
    save_checkpoint(tmp_path / "wide.pt", {"model": state, "config": {**config, "model": {**config["model"],
                                                                                            "width": 8}}})
    with pytest.raises(ValueError, match=r"wide.pt: its weights do not fit the model its config describes "
                                         r"\(in_channels 1, embed_dim 16, width 8\): size mismatch for ") as err:
        load_encoder(tmp_path / "wide.pt")
    assert "\n" not in str(err.value)
    for broken, missing in (({"model": state}, "config"), ({"model": list(state), "config": config}, "model"),
                            ({"model": state, "config": {**config, "model": 4}}, "config.model")):
        save_checkpoint(tmp_path / "edited.pt", broken)  # a valid checksum over an edited file: a KeyError before
        with pytest.raises(ValueError, match=f"is not a whole doppel-torch checkpoint \\({missing} missing"):
            load_encoder(tmp_path / "edited.pt")
