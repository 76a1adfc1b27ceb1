r"""The training loop: pairs -> [augmentation] -> log-mel -> ResNet18 -> alignment + uniformity -> SGD.

Single process (CPU or one GPU):

    doppel-torch train --synth voicefm

One node with 8 GPUs, and two nodes (run on each; torchrun's rendezvous joins them):

    torchrun --standalone --nproc_per_node 8 -m doppel_torch.train --synth voicefm
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \
        -m doppel_torch.train --synth voicefm

Rank 0 alone prints, logs and checkpoints. All ranks start from the same seeded initialisation (DDP also
broadcasts it); the data differs by rank through the global sound indices (`doppel_torch.train.data`).
"""

from __future__ import annotations

import csv
import inspect
import math
import os
from collections import Counter
import signal
import sys
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch.nn.parallel import DistributedDataParallel

from doppel_torch import losses
from doppel_torch.delta.spec import describe_delta
from doppel_torch.models import ResNet18Encoder
from doppel_torch.train import checkpoint as ckpt_io
from doppel_torch.train.config import TrainConfig
from doppel_torch.train.data import RealPairBatches, RealPairs, train_indices, val_batches, val_indices
from doppel_torch.train.distributed import DistEnv, any_rank, init_distributed, mean_over_ranks

CONTROL_RATE = 480  # Hz, the paper's synth control rate


def _ignore_sigint(worker_id: int) -> None:
    # Ctrl-C reaches the DataLoader workers too; the main process handles it (checkpoint, then exit), so the
    # workers must keep serving the batch it may be waiting for.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


# What a resumed run may change without changing its recipe: the epochs (extend or shorten the run), where its data
# and impulse responses are found (a moved folder, another machine), and how fast its sounds are made (DataLoader
# workers; the backend, whose renders agree to float rounding). Found from outside: --num-workers 0 on a smaller
# machine, and --data given as an absolute path, were refused as "the recipe differs".
RESUMABLE_CHANGES = {("optim", "epochs"), ("data", "data"), ("data", "ir_dir"), ("data", "num_workers"),
                     ("data", "backend")}


def _resumable(section: str, key: str, before: Any, now: Any) -> bool:
    """Whether a resumed run may change this field from `before` to `now`: a folder only for another folder (real
    data instead of synthetic, or reverb added, is another recipe)."""
    if (section, key) not in RESUMABLE_CHANGES:
        return False
    return (before is None) == (now is None) if key in ("data", "ir_dir") else True


class Trainer:
    """One rank of a training run. `fit()` runs it; the pieces are public for tests and benchmarks.

    Attributes: model (the bare encoder), optimizer (SGD), scheduler (MultiStepLR over epochs), step
    (optimizer steps done), epoch (epochs completed), frontend (LogMelFrontend), pairs (a callable
    global indices -> (audio1, audio2)), augment (None or a callable (audio, indices, view) -> audio).
    """

    def __init__(self, config: TrainConfig, env: DistEnv | None = None, log: Callable[[str], None] = print) -> None:
        from doppel_torch.frontend import LogMelFrontend

        self.config = cfg = config
        self.env = env if env is not None else init_distributed(cfg.run.device)
        self.device = self.env.device
        self._log = log
        self.bf16 = cfg.run.precision == "bf16" or (cfg.run.precision == "auto" and self.device.type == "cuda")
        self.batch_size = cfg.optim.batch_size
        self.global_batch = cfg.optim.batch_size * self.env.world_size
        if cfg.data.n_train < self.global_batch:  # an epoch would otherwise train one batch: more sounds than asked
            ranks = f" x {self.env.world_size} ranks" if self.env.world_size > 1 else ""
            raise ValueError(f"--sounds-per-epoch (data.sounds_per_epoch) {cfg.data.sounds_per_epoch} leaves "
                             f"{cfg.data.n_train} training sounds (the rest validate), fewer than one batch "
                             f"({self.batch_size}{ranks}): raise it to at least "
                             f"{cfg.data.sounds_for_train(self.global_batch)}, or lower the batch size")
        self.steps_per_epoch = cfg.steps_per_epoch(self.env.world_size)
        self.total_steps = cfg.optim.epochs * self.steps_per_epoch
        self.end_step = min(self.total_steps, cfg.run.max_steps or self.total_steps)
        self.out_dir = Path(cfg.run.out_dir)

        torch.manual_seed(cfg.run.seed)  # same initial weights on every rank
        self.model = ResNet18Encoder(cfg.model.in_channels, cfg.model.embed_dim, cfg.model.width).to(self.device)
        if cfg.run.sync_batchnorm and self.env.distributed:
            if self.device.type != "cuda":
                raise ValueError(
                    "--sync-batchnorm needs CUDA devices (torch's SyncBatchNorm does not run on CPU; the paper "
                    "preset turns it on): pass --no-sync-batchnorm"
                )
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        if cfg.run.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.peak_lr = cfg.optim.peak_lr(self.env.world_size)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=self.peak_lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, milestones=cfg.optim.milestone_epochs(), gamma=cfg.optim.gamma
        )
        self.step = 0
        self.epoch = 0

        self.frontend = LogMelFrontend(sample_rate=cfg.data.sample_rate).to(self.device)
        n_samples = int(round(cfg.data.duration * cfg.data.sample_rate))
        if n_samples < self.frontend.n_samples:
            raise ValueError(
                f"data.duration {cfg.data.duration} s gives {n_samples} samples but the log-mel frontend needs "
                f"{self.frontend.n_samples} ({self.frontend.n_samples / cfg.data.sample_rate:.3f} s): raise --duration"
            )
        self.real: RealPairs | None = None
        if cfg.data.data is not None:
            if not (cfg.data.jitter or cfg.data.augment or cfg.data.mix_layers > 1):
                raise ValueError(
                    "real data with --no-jitter, no --augment and --mix-layers 1 gives two identical views: "
                    "enable --jitter, --augment or --mix-layers > 1"
                )
            self.real = RealPairs(
                cfg.data.data,
                sample_rate=cfg.data.sample_rate,
                duration=cfg.data.duration,
                n_val=cfg.data.n_val,
                val_fraction=cfg.data.val_fraction,
                jitter=cfg.data.jitter,
                mix_layers=cfg.data.mix_layers,
                seed=cfg.run.seed,
            )
            self.pairs = lambda idx: tuple(a.to(self.device, non_blocking=True) for a in self.real(idx))
        else:
            self.pairs = self._synth_pairs()
        self.augment = self._augmenter() if cfg.data.augment else None

        self.train_model: torch.nn.Module = self.model
        if self.env.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=ids)
        if cfg.run.compile:
            self.train_model = torch.compile(self.train_model)

        self._stop_signal: int | None = None
        self._signals_seen = 0
        self._acc = torch.zeros(3, device=self.device)  # loss, align, uniform summed since the last log
        self._acc_steps = 0
        self._interval_start = time.perf_counter()
        self._interval_step = 0
        self.failed_files: set[str] = set()  # files that were readable at the scan and failed a read since
        self.history: list[dict[str, Any]] = []
        self.last_val: dict[str, float] = {}
        self._val_pending = False  # a validation stopped by a signal: the resumed run does it first
        self._val_seconds = 0.0  # time spent validating in this process (not in the pairs/s figures)
        self._carried: dict | None = None  # training metrics a save at a signal puts in the checkpoint
        self._start_time = time.perf_counter()  # fit() restarts it; a validate() before fit() reads it too
        self._csv = None
        self._tb = None
        self._resumed_step = 0  # the checkpoint's own step number (before a world-size conversion)
        # names the run in its checkpoints (a resume in the run's own folder keeps it; one elsewhere branches into a
        # new run): a checkpoint of another run is not continued over a folder's last.pt (cli.claim_run_folder)
        self.run_id = uuid.uuid4().hex
        if cfg.run.resume:
            self.load(cfg.run.resume)

    # ---- data ---------------------------------------------------------------------------------------
    def _synth_pairs(self) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        from doppel_torch.pairs import DoppelgangerPairs
        from doppel_torch.synths import get_synth

        from doppel_torch.backends import get_backend

        d = self.config.data
        self.synth_backend = d.backend
        if d.backend == "auto":
            self.synth_backend = "triton" if self.device.type == "cuda" else _cpu_backend()
        else:
            try:
                get_backend(self.synth_backend).check_available()
            except RuntimeError as err:  # e.g. --backend triton without CUDA: a usage error, not a crash
                raise ValueError(f"--backend {self.synth_backend} cannot run here: {err}") from None
        synth = get_synth(
            d.synth,
            sample_rate=d.sample_rate,
            control_rate=CONTROL_RATE,
            duration=d.duration,
            backend=self.synth_backend,
        ).to(self.device)
        generator = DoppelgangerPairs(synth, delta=d.delta, seed=self.config.run.seed, noise=d.noise).to(self.device)
        self.delta_summary = describe_delta(generator.delta.double().cpu(), synth)

        def pairs(indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return generator(indices.to(self.device))

        return pairs

    def _augmenter(self) -> Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]:
        from doppel_torch.augment import AugmentChain

        d = self.config.data
        chain = AugmentChain(
            sample_rate=d.sample_rate, ir_paths=d.ir_dir, seed=self.config.run.seed, group=d.augment_group,
            pitch=d.augment_pitch,
        ).to(self.device)

        def augment(audio: torch.Tensor, indices: torch.Tensor, view: int) -> torch.Tensor:
            return chain(audio, indices.to(self.device), view=view)

        return augment

    def train_batches(self, start: int, stop: int):
        """Yield (indices, audio1, audio2) of this rank for steps start .. stop - 1."""
        cfg = self.config
        if self.real is not None and cfg.data.num_workers > 0:
            dataset = RealPairBatches(self.real, self.env.rank, self.env.world_size, self.batch_size, cfg.data.n_val)
            loader = torch.utils.data.DataLoader(
                dataset,
                batch_size=None,
                sampler=range(start, stop),
                num_workers=cfg.data.num_workers,
                pin_memory=self.device.type == "cuda",
                prefetch_factor=2,
                worker_init_fn=_ignore_sigint,
            )
            for item in loader:
                self.failed_files.update(item["failed"])
                yield item["indices"], item["audio1"].to(self.device), item["audio2"].to(self.device)
            return
        # Synthetic pairs: indices made on the device, so a step never waits on a host-to-device copy.
        device = self.device if self.real is None else "cpu"
        for step in range(start, stop):
            indices = train_indices(step, self.env.rank, self.env.world_size, self.batch_size, cfg.data.n_val, device)
            audio1, audio2 = self.pairs(indices)
            if self.real is not None:
                self.failed_files |= self.real.failed_files
            yield indices, audio1, audio2

    # ---- one step -----------------------------------------------------------------------------------
    def embed(self, model: torch.nn.Module, audio1: torch.Tensor, audio2: torch.Tensor, indices: torch.Tensor):
        """Both views -> [augment] -> log-mel -> encoder in one batch: returns (z1, z2), each (B, embed_dim)."""
        if self.augment is not None:
            audio1 = self.augment(audio1, indices, 0)
            audio2 = self.augment(audio2, indices, 1)
        x = self.frontend(torch.cat([audio1, audio2]))
        if self.config.run.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            z = model(x)
        return z[: audio1.shape[0]], z[audio1.shape[0]:]

    def loss(self, z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        o = self.config.optim
        return losses.doppelganger_loss(
            z1, z2, alpha=o.align_alpha, t=o.uniform_t, align_weight=o.align_weight, uniform_weight=o.uniform_weight
        )

    def train_step(self, indices: torch.Tensor, audio1: torch.Tensor, audio2: torch.Tensor) -> torch.Tensor:
        """One optimizer step; returns the detached (loss, align, uniform) of this rank (no host sync)."""
        self.train_model.train()
        self.optimizer.zero_grad(set_to_none=True)
        z1, z2 = self.embed(self.train_model, audio1, audio2, indices)
        total, align, uniform = self.loss(z1, z2)
        total.backward()
        self.optimizer.step()
        self.step += 1
        return torch.stack([total, align, uniform]).detach()

    # ---- validation ---------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict[str, float] | None:
        """Alignment and uniformity on the fixed validation indices (eval-mode encoder), averaged over batches.

        A Ctrl-C / SIGTERM stops it between batches (a long validation held the signal for minutes, then the run
        ended "done"): nothing is recorded, None is returned, and the checkpoint notes the validation as pending,
        so a resumed run does it first."""
        started = time.perf_counter()
        try:
            return self._validate()
        finally:  # the throughput figures count training time only
            spent = time.perf_counter() - started
            self._val_seconds += spent
            self._interval_start += spent

    def _validate(self) -> dict[str, float] | None:
        if self.env.distributed:
            # every rank validates rank 0's model: BatchNorm's running statistics differ by rank after a step (DDP
            # broadcasts rank 0's at the next training forward, not here), and a resumed run has only rank 0's,
            # so a validation resumed after a signal read other values on the other ranks (found from outside)
            for buffer in self.model.buffers():
                torch.distributed.broadcast(buffer, src=0)
        self.model.eval()
        n_val = self.config.data.n_val
        n_batches = val_batches(n_val, self.env.world_size, self.batch_size)
        if self.config.run.val_batches is not None:
            n_batches = min(n_batches, self.config.run.val_batches)
        acc = torch.zeros(3, device=self.device)
        for b in range(n_batches):
            if any_rank(self._stop_signal is not None, self.env):
                self._val_pending = True
                return None
            indices = val_indices(b, self.env.rank, self.env.world_size, self.batch_size, n_val, self.device)
            audio1, audio2 = self.pairs(indices)
            z1, z2 = self.embed(self.model, audio1, audio2, indices)
            acc += torch.stack(self.loss(z1, z2))
            if b == 0 and self.env.is_main and self.config.run.examples > 0:
                self._write_examples(audio1, audio2, indices)
        values = mean_over_ranks(acc / n_batches, self.env).tolist()
        self.last_val = {"loss": values[0], "align": values[1], "uniform": values[2]}
        self._val_pending = False
        self._record("val", self.last_val)
        return self.last_val

    def _write_examples(self, audio1: torch.Tensor, audio2: torch.Tensor, indices: torch.Tensor) -> None:
        import matplotlib.pyplot as plt
        import soundfile as sf

        from doppel_torch.viz import logmel_grid_figure

        k = min(self.config.run.examples, audio1.shape[0])
        folder = self.out_dir / "examples" / f"step_{self.step:07d}"
        folder.mkdir(parents=True, exist_ok=True)
        views = [self.augment(a[:k], indices[:k], v) if self.augment else a[:k] for v, a in enumerate((audio1, audio2))]
        mels = [self.frontend(v).float().cpu() for v in views]
        sr = self.config.data.sample_rate
        for j in range(k):
            for v in range(2):
                wav = views[v][j].float().cpu()
                sf.write(folder / f"sound{int(indices[j])}_view{v + 1}.wav", wav.numpy(), sr)
                if self._tb is not None:
                    peak = wav.abs().max().clamp_min(1e-9)
                    self._tb.add_audio(f"examples/sound{j}_view{v + 1}", (wav / peak)[None], self.step, sample_rate=sr)
        # The frontend is built with its default band edges (125 and 7500 Hz, VGGish's).
        bands = inspect.signature(type(self.frontend)).parameters
        fig = logmel_grid_figure(
            [[mels[v][j, 0] for j in range(k)] for v in range(2)],
            hop_s=self.frontend.hop_length / sr, f_min=bands["f_min"].default, f_max=bands["f_max"].default,
            panel_titles=[[f"#{int(indices[j])} view {v + 1}" for j in range(k)] for v in range(2)],
            title=f"validation log-mel examples, step {self.step} (epoch {self.step / self.steps_per_epoch:.2f})"
            + (", augmented" if self.augment else ""),
        )
        fig.savefig(folder / "logmel.png", dpi=80, bbox_inches="tight")
        if self._tb is not None:
            self._tb.add_figure("examples/logmel", fig, self.step)
        plt.close(fig)

    # ---- logging ------------------------------------------------------------------------------------
    def _flush_train_metrics(self) -> dict[str, float] | None:
        """Average the accumulated training metrics over steps and ranks; raise on a non-finite loss."""
        if self._acc_steps == 0:
            return None
        values = mean_over_ranks(self._acc / self._acc_steps, self.env).tolist()
        now = time.perf_counter()
        pairs_per_s = (self.step - self._interval_step) * self.global_batch / max(now - self._interval_start, 1e-9)
        self._acc.zero_()
        self._acc_steps = 0
        self._interval_start, self._interval_step = now, self.step
        self._check_finite(values)
        metrics = {"loss": values[0], "align": values[1], "uniform": values[2], "pairs_per_s": pairs_per_s}
        self._record("train", metrics)
        return metrics

    def _check_finite(self, values: list[float]) -> None:
        """NonFiniteLoss, saying what to do, where the training metrics so far are not finite."""
        if not all(math.isfinite(v) for v in values):
            last = self.out_dir / "last.pt"
            kept = (f"the last good checkpoint is kept in {last}" if last.is_file()
                    else "no checkpoint was written before it")
            # a resumed run keeps its recipe, --lr included: a lower one is a new run (found from outside: the
            # advice was to resume with a lower --lr, which resuming refuses)
            advice = ["start a new run with a lower learning rate (--lr, another --out)"]
            if self.bf16:
                advice.append("use fp32 (--precision fp32)")
            if self.config.data.data:
                advice.insert(0, f"check {self.config.data.data} for recordings with NaN, infinite or silent samples")
            raise NonFiniteLoss(
                f"loss became {values[0]} (align {values[1]}, uniform {values[2]}) before step {self.step}; "
                f"stopping: {kept}. To continue, {' or '.join(advice)}"
            )

    def _record(self, kind: str, metrics: dict[str, float]) -> None:
        row = {
            "kind": kind,
            "step": self.step,
            "epoch": self.step / self.steps_per_epoch,
            "lr": self.optimizer.param_groups[0]["lr"],
            "loss": metrics["loss"],
            "align": metrics["align"],
            "uniform": metrics["uniform"],
            "pairs_per_s": metrics.get("pairs_per_s", float("nan")),
            "elapsed_s": time.perf_counter() - self._start_time,
        }
        self.history.append(row)
        if not self.env.is_main:
            return
        if self._csv is not None:
            self._csv[1].writerow(row)
            self._csv[0].flush()
        if self._tb is not None:
            for key in ("loss", "align", "uniform"):
                self._tb.add_scalar(f"{kind}/{key}", row[key], self.step)
            if kind == "train":
                self._tb.add_scalar("train/lr", row["lr"], self.step)
                self._tb.add_scalar("train/pairs_per_s", row["pairs_per_s"], self.step)

    def _open_logs(self) -> None:
        if not self.env.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for leftover in ckpt_io.remove_leftover_temporaries(self.out_dir):
            self._log(f"removed {leftover}: a checkpoint write that a killed process left unfinished")
        path = self.out_dir / "metrics.csv"
        fields = ["kind", "step", "epoch", "lr", "loss", "align", "uniform", "pairs_per_s", "elapsed_s"]
        kept = []
        source = path
        if self.step > 0 and not path.exists() and self.config.run.resume:  # resumed into another folder: the
            resumed = Path(self.config.run.resume)  # history comes along (it began with a bare header)
            source = (resumed if resumed.is_dir() else resumed.parent) / "metrics.csv"
        if source.exists() and self.step > 0:  # resuming: drop rows logged after the checkpoint
            with open(source, newline="") as f:
                kept = [row for row in csv.DictReader(f) if int(row["step"]) <= self._resumed_step]
        f = open(path, "w", newline="")
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(kept)
        self._csv = (f, writer)
        if self.config.run.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=self.step or None)

    def _close_logs(self) -> None:
        if self._csv is not None:
            self._csv[0].close()
            self._csv = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    # ---- checkpoints --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": ckpt_io.strip_prefixes(self.model.state_dict()),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "world_size": self.env.world_size,
            "run_id": self.run_id,
            "config": self.config.to_dict(),
            "rng": ckpt_io.rng_state(),
            "metrics": dict(self.last_val),
            "val_pending": self._val_pending,
            "train_metrics": self._carried,  # sums and steps since the last row (a save at a signal), or None
        }

    def save(self, keep: bool = False, row: bool = True) -> Path | None:
        """Write out_dir/last.pt (rank 0) after checking that the loss so far is finite; with `keep`, also
        out_dir/epoch-NNNN.pt (run.keep_every), which later saves leave alone. row=False (a save at a signal): the
        training metrics since the last row go into the checkpoint instead of a row of their own, so a resumed
        run's metrics.csv has the rows of an uninterrupted one (an extra row at the signal's step before)."""
        self._carried = None
        if row:
            self._flush_train_metrics()
        elif self._acc_steps:
            total = mean_over_ranks(self._acc, self.env)
            self._check_finite((total / self._acc_steps).tolist())
            self._carried = {"sums": total.tolist(), "steps": self._acc_steps}
        path = None
        if self.env.is_main:
            state = self.state_dict()
            if keep:  # first: a process killed while writing it resumes from the last.pt before and writes it again
                ckpt_io.save_checkpoint(self.out_dir / f"epoch-{self.epoch:04d}.pt", state)
            path = ckpt_io.save_checkpoint(self.out_dir / "last.pt", state)
        return path

    def load(self, path: str | Path) -> None:
        """Restore model, optimizer, scheduler, step, epoch and RNG from a checkpoint of the same recipe.

        The recipe (model, data, optim) must equal the checkpoint's, except optim.epochs: a different number of
        epochs extends (or shortens) the run, with the LR milestones recomputed as fractions of the new total and
        the LR set to what that schedule gives at the current epoch. A checkpoint of another world size continues
        at the same epoch and at the same fraction of it (the step counter is converted; global batch, peak LR
        and data order change).
        """
        ckpt = ckpt_io.load_checkpoint(path, map_location=self.device)
        mine, theirs = self.config.to_dict(), ckpt["config"]
        diffs = [
            f"{section}.{k}: checkpoint {theirs[section].get(k)!r}, now {v!r}"
            for section in ("model", "data", "optim")
            for k, v in mine[section].items()
            if theirs.get(section, {}).get(k) != v and not _resumable(section, k, theirs.get(section, {}).get(k), v)
        ]
        if diffs:
            raise ValueError(
                f"cannot resume {path}: the recipe differs from the checkpoint's ({'; '.join(diffs)}); resume "
                f"without those options, or start a new run with another --out"
            )
        step, epoch = int(ckpt["step"]), int(ckpt["epoch"])
        old_world = int(ckpt.get("world_size", self.env.world_size))
        if old_world != self.env.world_size:
            old_spe = self.config.steps_per_epoch(old_world)
            new_step = epoch * self.steps_per_epoch + (step - epoch * old_spe) * self.steps_per_epoch // old_spe
            warnings.warn(
                f"resuming a run of world size {old_world} on {self.env.world_size} rank(s): the global batch "
                f"({self.batch_size * old_world} -> {self.global_batch}), peak learning rate and data order change; "
                f"its step {step} (epoch {epoch} + {step - epoch * old_spe}/{old_spe} steps) is step {new_step} here "
                f"(epoch {epoch} + {new_step - epoch * self.steps_per_epoch}/{self.steps_per_epoch})",
                stacklevel=2,
            )
        else:
            new_step = step
        old_epochs = int(theirs["optim"]["epochs"])
        if new_step > self.total_steps:
            raise ValueError(
                f"cannot resume {path} with --epochs {self.config.optim.epochs}: the run has done {epoch} epochs "
                f"already (of {old_epochs}); pass --epochs {old_epochs} or more to continue or extend it"
            )
        ckpt_io.load_weights(self.model, ckpt["model"], path, theirs.get("model", {}))
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self._resumed_step = step
        resumed = Path(path)
        if (resumed if resumed.is_dir() else resumed.parent).resolve() == self.out_dir.resolve():
            self.run_id = ckpt.get("run_id", self.run_id)
        self.step, self.epoch = new_step, epoch
        self.last_val = dict(ckpt.get("metrics", {}))
        self._val_pending = bool(ckpt.get("val_pending", False))
        carried = ckpt.get("train_metrics")
        if carried and old_world == self.env.world_size:
            self._acc = torch.tensor(carried["sums"], dtype=self._acc.dtype, device=self.device)
            self._acc_steps = int(carried["steps"])
        ckpt_io.set_rng_state(ckpt["rng"])
        if old_epochs != self.config.optim.epochs or old_world != self.env.world_size:
            old_lr = self.optimizer.param_groups[0]["lr"]
            milestones = self.config.optim.milestone_epochs()
            lr = self.peak_lr * self.config.optim.gamma ** sum(m <= epoch for m in milestones)
            self.scheduler.milestones = Counter(milestones)
            self.scheduler.base_lrs = [self.peak_lr for _ in self.optimizer.param_groups]
            for group in self.optimizer.param_groups:
                group["lr"] = group["initial_lr"] = lr
            self.scheduler._last_lr = [lr for _ in self.optimizer.param_groups]
            if self.env.is_main:
                self._log(
                    f"resume: optim.epochs {old_epochs} -> {self.config.optim.epochs}, world size {old_world} -> "
                    f"{self.env.world_size}: LR milestones now at epochs {milestones} (fractions "
                    f"{list(self.config.optim.milestones)} of {self.config.optim.epochs}); lr {lr:g} from epoch "
                    f"{epoch} (it was {old_lr:g})"
                )

    # ---- the run ------------------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: Any) -> None:
        """The first Ctrl-C / SIGTERM stops after this step with a checkpoint; a second one is noted (the step and the
        write take moments); a third quits at once without it. Nothing is raised into the running code (a
        KeyboardInterrupt there can land in a weakref callback, which prints a traceback and swallows it), and a hard
        exit loses nothing written: last.pt is replaced whole or not at all."""
        name = signal.Signals(signum).name
        self._signals_seen += 1
        if self._stop_signal is None:
            self._stop_signal = signum
            if self.env.is_main:
                self._log(f"\nreceived {name}: saving a checkpoint after this step (twice more: quit without it)")
        elif self._signals_seen == 2:
            if self.env.is_main:
                self._log(f"\nreceived {name} again: the checkpoint is written after this step; once more quits "
                          "without it")
        else:
            if self.env.is_main:
                last = self.out_dir / "last.pt"
                kept = f"{last} holds the last one written" if last.exists() else "none was written before it"
                self._log(f"\nreceived {name} a third time: quitting without a checkpoint of this step ({kept})")
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(128 + self._stop_signal)

    def describe(self) -> str:
        cfg, env = self.config, self.env
        backend = "gloo (CPU)" if env.device.type == "cpu" else "nccl"
        lines = [
            f"doppel-torch train: {env.world_size} process(es), device {env.device}"
            + (f", process group {backend}" if env.distributed else ""),
        ]
        if env.device.type == "cpu":
            big = cfg.data.sounds_per_epoch * cfg.optim.epochs > 100_000  # the advice only where it is news
            lines.append("no CUDA device: training on CPU"
                         + (f" ({cfg.data.sounds_per_epoch * cfg.optim.epochs:,} sounds to render and train on: a "
                            "small preset such as --preset cpu-smoke finishes in seconds)" if big else ""))
        if self.real is not None:
            source = (
                f"real audio from {cfg.data.data} ({len(self.real.train_files)} train / {len(self.real.val_files)} "
                f"val files, {len(self.real.skipped)} unreadable skipped), jitter {cfg.data.jitter}, "
                f"mix layers {cfg.data.mix_layers}"
            )
        else:
            source = (f"synth {cfg.data.synth} (backend {self.synth_backend}), delta {cfg.data.delta} "
                      f"({getattr(self, 'delta_summary', '?')})")
        lines += [
            f"data: {source}; augmentation {_augmentation(cfg.data)}",
            f"global batch {self.global_batch} = {env.world_size} x {self.batch_size}; peak lr {self.peak_lr:g}; "
            f"{self.steps_per_epoch} steps/epoch x {cfg.optim.epochs} epochs = {self.total_steps} steps; "
            f"LR milestones at epochs {cfg.optim.milestone_epochs()} ({self._lr_phases()})",
            f"precision {'bf16 autocast' if self.bf16 else 'fp32'}, channels-last {cfg.run.channels_last}, "
            f"compile {cfg.run.compile}",
            "config:",
            cfg.describe(),
        ]
        return "\n".join(lines)

    def _lr_phases(self) -> str:
        """The learning rate of each stretch between milestones, e.g. "lr 0.015, from epoch 2 1.5e-05": three
        milestones at one epoch (cpu-smoke's 3 epochs) drop it by gamma ** 3 at once, which a list hides."""
        milestones = self.config.optim.milestone_epochs()
        phases = [f"lr {self.peak_lr:.3g}"]
        for epoch in sorted(set(milestones)):
            if epoch < self.config.optim.epochs:
                lr = self.peak_lr * self.config.optim.gamma ** sum(m <= epoch for m in milestones)
                phases.append(f"from epoch {epoch} {lr:.3g}")
        return ", ".join(phases)

    def fit(self) -> dict[str, Any]:
        """Train from the current step to the end (or max_steps, or a signal). Returns a summary dict.

        status is "done", "interrupted" (a signal: checkpoint written) or raises NonFiniteLoss.
        """
        from doppel_torch.progress import progress_bar

        cfg = self.config
        self._start_time = time.perf_counter()
        self._interval_start, self._interval_step = self._start_time, self.step
        start_step = self.step
        if self.env.is_main:
            self._log(self.describe())
            if cfg.run.resume:
                self._log(f"resumed from {cfg.run.resume} at step {start_step} (epoch {self.epoch})")
            if start_step >= self.end_step and not self._val_pending:
                self._log(
                    f"nothing to do: the run is at step {start_step} of {self.end_step} (epoch {self.epoch} of "
                    f"{cfg.optim.epochs}); pass a larger --max-steps or --epochs to extend it"
                )
        if start_step >= self.end_step and not self._val_pending:
            # nothing is written (a --resume X --out Y of a finished run leaves Y empty)
            resumed = Path(cfg.run.resume) if cfg.run.resume else self.out_dir
            return self._summary("done", start_step, checkpoint=resumed / "last.pt" if resumed.is_dir() else resumed)
        self._open_logs()
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                handlers[sig] = signal.signal(sig, self._on_signal)
        bar = progress_bar(
            total=self.end_step * self.global_batch,
            initial=start_step * self.global_batch,
            unit="pair",
            unit_scale=self.end_step * self.global_batch >= 10_000,  # "1.2M pair"; a small run's "0.00/32.0" read oddly
            dynamic_ncols=True,
            disable=not (self.env.is_main and cfg.run.progress),
            desc="train",
        )
        status = "done"
        try:
            if self._val_pending:  # the validation of the step this run resumes at, stopped by a signal
                self._report_val(self.validate(), bar)
                if not self._val_pending:
                    self.save(row=False)  # the checkpoint no longer asks for it
            stopped = self._val_pending  # stopped again (validate's check is collective: every rank agrees)
            while not stopped and self.step < self.end_step:
                epoch_end = min((self.step // self.steps_per_epoch + 1) * self.steps_per_epoch, self.end_step)
                for indices, audio1, audio2 in self.train_batches(self.step, epoch_end):
                    self._acc += self.train_step(indices, audio1, audio2)
                    self._acc_steps += 1
                    bar.update(self.global_batch)
                    if self.step % cfg.run.log_every == 0:
                        m = self._flush_train_metrics()
                        bar.set_postfix({k: f"{m[k]:.3f}" for k in ("loss", "align", "uniform")})
                        if bar.disable and self.env.is_main:  # --no-progress: one line per log interval
                            self._log(
                                f"step {self.step}/{self.end_step} (epoch {self.step / self.steps_per_epoch:.2f}): "
                                f"loss {m['loss']:.4f} align {m['align']:.4f} uniform {m['uniform']:.4f} "
                                f"lr {self.optimizer.param_groups[0]['lr']:.3g}, {m['pairs_per_s']:.1f} pairs/s"
                            )
                    if self.step % self.steps_per_epoch == 0:
                        self.epoch += 1
                        if self.epoch % cfg.run.val_every == 0 or self.step == self.total_steps:
                            self._report_val(self.validate(), bar)  # its row: the lr the epoch trained with
                        self.scheduler.step()
                        self.save(keep=cfg.run.keep_every > 0 and self.epoch % cfg.run.keep_every == 0)
                    elif self.step % cfg.run.checkpoint_every == 0:
                        self.save()
                    if any_rank(self._stop_signal is not None, self.env):
                        status = "interrupted"
                        break
                if status == "interrupted":
                    break
            if status == "interrupted":
                self.save(row=False)
            elif self.step % self.steps_per_epoch != 0 and self.step > start_step:  # max_steps inside an epoch
                self._report_val(self.validate(), bar)
                self.save()
            if any_rank(self._stop_signal is not None, self.env):  # during a validation or the last step: not "done"
                status = "interrupted"
                if self._val_pending:
                    self.save(row=False)
        finally:
            bar.close()
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            self._close_logs()
        return self._summary(status, start_step, checkpoint=self.out_dir / "last.pt")

    def _report_val(self, v: dict[str, float] | None, bar) -> None:
        """The validation's line (a stopped one: what the checkpoint keeps for the resumed run)."""
        if not self.env.is_main:
            return
        epoch = self.step / self.steps_per_epoch
        epoch = f"{epoch:.0f}" if epoch == int(epoch) else f"{epoch:.2f}"
        line = (f"validation at step {self.step} stopped by the signal: a resumed run does it first" if v is None
                else f"epoch {epoch}: val loss {v['loss']:.4f} align {v['align']:.4f} uniform {v['uniform']:.4f}")
        with bar.external_write_mode():  # through the run's log (a closed stdout goes quiet there), the bar cleared
            self._log(line)

    def _summary(self, status: str, start_step: int, checkpoint: str | Path) -> dict[str, Any]:
        elapsed = time.perf_counter() - self._start_time
        summary = {
            "status": status,
            "signal": self._stop_signal,
            "step": self.step,
            "epoch": self.step / self.steps_per_epoch,
            "steps_run": self.step - start_step,
            "elapsed_s": elapsed,
            "pairs_per_s": (self.step - start_step) * self.global_batch / max(elapsed - self._val_seconds, 1e-9),
            "val_s": self._val_seconds,
            "val": dict(self.last_val),
            # Files, not read attempts: one that fails on every read counts once.
            "skipped_files": 0 if self.real is None else len(self.real.skipped) + len(self.failed_files | self.real.failed_files),
            "checkpoint": str(checkpoint),
            "out_dir": str(self.out_dir),
        }
        if self.env.is_main:
            self._log(format_summary(summary))
        return summary


def format_summary(s: dict[str, Any]) -> str:
    val = s["val"]
    lines = [
        f"{s['status']}: step {s['step']} (epoch {s['epoch']:.2f}), {s['steps_run']} steps in {s['elapsed_s']:.1f} s, "
        f"{s['pairs_per_s']:.1f} pairs/s" + (f" (training; validation {s['val_s']:.1f} s)" if s.get("val_s") else ""),
    ]
    if val:
        lines.append(f"validation: loss {val['loss']:.4f}, align {val['align']:.4f}, uniform {val['uniform']:.4f}")
    if s["skipped_files"]:
        lines.append(f"unreadable audio files skipped: {s['skipped_files']}")
    lines.append(f"checkpoint: {s['checkpoint']}")
    if s["status"] == "interrupted":
        lines.append(f"--resume {s['out_dir']} continues it")
    return "\n".join(lines)


def _augmentation(d) -> str:
    """One phrase for the resolved augmentation settings, e.g. 'on (one draw per 100 sounds, no reverb: no --ir-dir)'."""
    if not d.augment:
        return "off"
    parts = ["one draw per sound" if d.augment_group == 1 else f"one draw per {d.augment_group} sounds",
             f"pitch {d.augment_pitch}", "reverb from " + d.ir_dir if d.ir_dir else "no reverb: no --ir-dir"]
    return f"on ({', '.join(parts)})"


def _cpu_backend() -> str:
    """"auto" on CPU: the native kernel (5-7x SynthAX here) when a C++ compiler can build it, else the reference."""
    from doppel_torch.backends import get_backend

    try:
        get_backend("cpu").check_available()
    except RuntimeError as err:
        print(f"backend auto: native CPU synth unavailable ({err}); using the torch reference")
        return "torch"
    return "cpu"
