"""Clip embeddings, the HEAR API, the embedding cache and unreadable files, on real FSDD recordings."""

from __future__ import annotations

import shutil

import numpy as np

import pytest
import torch

from doppel_torch.eval import hear
from doppel_torch.eval.cache import EmbeddingCache
from doppel_torch.eval.embed import AudioReadError, Embedder, file_sha256, load_audio
from doppel_torch.eval.evaluate import extract_features
from doppel_torch.functional import resample
from doppel_torch.models import ResNet18Encoder


@pytest.fixture(scope="module")
def small_embedder():
    return Embedder.random_init(seed=0, embed_dim=32, width=8)


@pytest.fixture(scope="module")
def clip(fsdd_root):
    audio, sr = load_audio(fsdd_root / "recordings" / "7_jackson_32.wav")
    assert sr == 8000 and audio.ndim == 1 and audio.dtype == torch.float32
    return audio, sr


def test_framing_counts_and_padding(small_embedder):
    e = small_embedder
    assert (e.window, e.hop) == (15600, 15360)
    assert [e.n_windows(n) for n in (1, 15600, 15600 + 7679, 15600 + 7681, 15600 + 2 * 15360)] == [1, 1, 1, 2, 3]
    frames = e.frame(torch.arange(100.0))
    assert frames.shape == (1, 15600) and frames[0, 100:].abs().sum() == 0


def test_embedding_is_mean_of_examples(small_embedder):
    g = torch.Generator().manual_seed(0)
    x = 0.1 * torch.randn(15600 + 2 * 15360, generator=g)
    windows = torch.stack([x[k * 15360 : k * 15360 + 15600] for k in range(3)])
    expected = small_embedder.embed_windows(windows).mean(0)
    got = small_embedder.embed(x, 16000)
    assert got.shape == (1, 32)
    torch.testing.assert_close(got[0], expected)


def test_embed_any_rate_and_length(small_embedder, clip):
    audio, sr = clip
    long = torch.cat([audio, audio, audio])
    out = small_embedder.embed([audio, long], sr)
    assert out.shape == (2, 32) and torch.isfinite(out).all()
    at16k = resample(audio, sr, 16000)
    torch.testing.assert_close(out[0], small_embedder.embed(at16k, 16000)[0])
    batch = small_embedder.embed(torch.stack([audio, audio.flip(0)]), sr)  # (B, N) tensor input
    torch.testing.assert_close(batch[0], out[0])
    assert not torch.allclose(batch[0], batch[1])


def test_checkpoint_embedder_matches_its_encoder(tiny_checkpoint, clip):
    from doppel_torch.train.checkpoint import load_encoder

    emb = Embedder.from_checkpoint(tiny_checkpoint)
    encoder, _ = load_encoder(tiny_checkpoint)
    direct = Embedder(encoder, 64, "direct")
    audio, sr = clip
    torch.testing.assert_close(emb.embed(audio, sr), direct.embed(audio, sr))
    assert emb.key.startswith("ckpt-") and emb.embedding_size == 64
    assert Embedder.from_checkpoint(tiny_checkpoint.parent).key == emb.key  # run folder -> last.pt
    random = Embedder.random_init(0, embed_dim=64, width=8)
    assert not torch.allclose(random.embed(audio, sr), emb.embed(audio, sr))


def test_hear_api(tiny_checkpoint, clip):
    model = hear.load_model(str(tiny_checkpoint), device="cpu")
    assert model.sample_rate == 16000 and model.scene_embedding_size == model.timestamp_embedding_size == 64
    audio = resample(clip[0], clip[1], 16000)
    batch = torch.stack([audio, 0.5 * audio])
    scene = hear.get_scene_embeddings(batch, model)
    assert scene.shape == (2, 64)
    torch.testing.assert_close(scene, model.embedder.embed(batch, 16000))
    emb, ts = hear.get_timestamp_embeddings(batch, model)
    n_ts = audio.shape[0] // 800 + 1
    assert emb.shape == (2, n_ts, 64) and ts.shape == (2, n_ts)
    torch.testing.assert_close(ts[0, :3], torch.tensor([0.0, 50.0, 100.0]))
    # An empty batch gives empty outputs of the right shapes, as get_scene_embeddings does.
    emb0, ts0 = hear.get_timestamp_embeddings(batch[:0], model)
    assert emb0.shape == (0, n_ts, 64) and ts0.shape == (0, n_ts) and emb0.dtype == ts0.dtype == torch.float32
    assert hear.get_scene_embeddings(batch[:0], model).shape == (0, 64)
    # clips of no samples: silence in both (the scene embedding refused them while the timestamps padded them)
    torch.testing.assert_close(hear.get_scene_embeddings(batch[:, :0], model),
                               hear.get_scene_embeddings(torch.zeros(2, 1), model))
    assert hear.get_timestamp_embeddings(batch[:, :0], model)[0].shape == (2, 1, 64)
    for get in (hear.get_scene_embeddings, hear.get_timestamp_embeddings):
        with pytest.raises(ValueError, match="NaN or infinite"):
            get(torch.full((2, 1600), float("nan")), model)
    with pytest.raises(ValueError, match="checkpoint path"):
        hear.load_model("")
    # windows embedded in chunks (bounded memory on long audio): the same embeddings as all at once
    import doppel_torch.eval.hear as hear_module

    chunk, hear_module.WINDOW_CHUNK = hear_module.WINDOW_CHUNK, 3
    try:
        torch.testing.assert_close(hear.get_timestamp_embeddings(batch, model)[0], emb)
    finally:
        hear_module.WINDOW_CHUNK = chunk
    with pytest.raises(TypeError, match="audio must be a torch.Tensor"):
        hear.get_scene_embeddings(batch.tolist(), model)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA device: pass device='cpu'"):
            hear.load_model(str(tiny_checkpoint), device="cuda")


def test_cache_and_unreadable_files(fsdd_root, tmp_path, small_embedder):
    names = ["0_theo_0.wav", "1_theo_0.wav", "2_lucas_3.wav"]
    files = [fsdd_root / "recordings" / n for n in names]
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF not really a wav file")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    missing = tmp_path / "missing.wav"
    with pytest.raises(AudioReadError, match="corrupt.wav"):
        load_audio(corrupt)

    cache = EmbeddingCache(tmp_path / "cache")
    embedders = {"small": small_embedder, "log-mel": Embedder.log_mel()}
    feats, kept, bad = extract_features(embedders, [files[0], corrupt, files[1], missing, empty, files[2]],
                                        cache, progress=False)
    assert kept.tolist() == [0, 2, 5]
    assert sorted(p.rsplit("/", 1)[1] for p, _ in bad) == ["corrupt.wav", "empty.wav", "missing.wav"]
    assert feats["small"].shape == (3, 32) and feats["log-mel"].shape == (3, 128)
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 6

    # A renamed copy hits the cache (keyed by content); a poisoned encoder proves nothing is recomputed.
    copy = tmp_path / "renamed.wav"
    shutil.copy(files[2], copy)

    class Poisoned(torch.nn.Module):
        def forward(self, x):
            raise AssertionError("cache miss")

    poisoned = Embedder(Poisoned(), 32, small_embedder.key)
    again, kept2, _ = extract_features({"small": poisoned}, [files[0], files[1], copy], cache, progress=False)
    assert kept2.tolist() == [0, 1, 2]
    torch.testing.assert_close(again["small"], feats["small"])

    other = Embedder(ResNet18Encoder(embed_dim=32, width=8), 32, "another-checkpoint")
    with pytest.raises(AssertionError, match="cache miss"):
        extract_features({"p": Embedder(Poisoned(), 32, other.key)}, files[:1], cache, progress=False)


def test_damaged_cache_entries_are_recomputed(fsdd_root, tmp_path, small_embedder):
    files = [fsdd_root / "recordings" / n for n in ("0_theo_0.wav", "1_theo_0.wav", "2_lucas_3.wav")]
    cache = EmbeddingCache(tmp_path / "cache")
    first, _, _ = extract_features({"small": small_embedder}, files, cache, progress=False)
    entries = sorted((tmp_path / "cache").rglob("*.npy"))
    assert len(entries) == 3
    damage = {0: np.zeros(5, np.float32), 1: np.full(32, np.nan, np.float32), 2: np.zeros((32, 2), np.float32)}
    hashes = {}
    for i, f in enumerate(files):  # wrong length, all NaN, wrong shape
        h = file_sha256(f)
        np.save(cache.path(small_embedder.cache_key, h), damage[i])
        hashes[i] = h
        assert cache.get(small_embedder.cache_key, h, size=32) is None
    again, kept, bad = extract_features({"small": small_embedder}, files, cache, progress=False)
    assert kept.tolist() == [0, 1, 2] and not bad
    torch.testing.assert_close(again["small"], first["small"])
    for i in hashes:  # rewritten with the good vector
        torch.testing.assert_close(cache.get(small_embedder.cache_key, hashes[i], size=32), first["small"][i])


def test_free_cpu_threads_follows_the_load_average(monkeypatch):
    from doppel_torch.eval import embed
    from doppel_torch.eval.embed import cpu_threads, free_cpu_threads

    monkeypatch.setattr(embed.os, "cpu_count", lambda: 8)
    with cpu_threads(4):
        for load, expected in ((0.0, 4), (5.0, 3), (6.6, 1), (40.0, 1)):  # min(torch's 4, round(8 - load)), >= 1
            monkeypatch.setattr(embed.os, "getloadavg", lambda load=load: (load, load, load))
            assert free_cpu_threads() == expected, load

        def no_load_average():
            raise OSError("no load average here")

        monkeypatch.setattr(embed.os, "getloadavg", no_load_average)
        assert free_cpu_threads() == 4
    before = torch.get_num_threads()
    with cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_a_cache_that_cannot_be_written_warns_once_and_the_features_come(fsdd_root, tmp_path, small_embedder,
                                                                         monkeypatch):
    """A full disk under the embedding cache: one warning, the evaluation goes on without caching, and no temporary
    is left behind (it stopped the whole eval with a traceback)."""
    import numpy as np

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", full)
    files = [fsdd_root / "recordings" / n for n in ("0_theo_0.wav", "1_theo_0.wav")]
    cache = EmbeddingCache(tmp_path / "cache")
    with pytest.warns(UserWarning, match="going on without caching") as caught:
        feats, kept, _ = extract_features({"small": small_embedder}, files, cache, progress=False)
    assert kept.tolist() == [0, 1] and feats["small"].shape == (2, 32) and len(caught) == 1
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


def test_a_report_that_cannot_be_written_leaves_the_earlier_one(tmp_path, monkeypatch):
    """eval.json / eval.md whole or not at all: a full disk mid-write left an empty eval.json in place of an earlier
    run's."""
    from pathlib import Path

    from doppel_torch.eval import report as report_io

    (tmp_path / "eval.json").write_text("earlier\n")
    real = Path.write_text

    def full(self, text, *args, **kwargs):
        real(self, text[:3], *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError):
        report_io.write_report({"tasks": {}}, tmp_path)
    monkeypatch.setattr(Path, "write_text", real)
    assert [p.name for p in tmp_path.iterdir()] == ["eval.json"]
    assert (tmp_path / "eval.json").read_text() == "earlier\n"
