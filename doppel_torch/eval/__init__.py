"""Evaluation of frozen encoders: clip embeddings, probes, tasks from disk, baselines and reports.

- `embed`: `Embedder` (checkpoint / random-init / log-mel), `load_audio`.
- `hear`: the HEAR API (`load_model`, `get_scene_embeddings`, `get_timestamp_embeddings`).
- `probe`: the probe protocols paper (linear), hear (hear-eval-kit's MLP grid) and arch; `metrics`: accuracy, mAP, F1.
- `tasks`: FSDD, ESC-50, UrbanSound8K, VIVAE, NSynth pitch, CREMA-D, FSD50K, Vocal Imitation, LibriCount,
  HEAR task folders, label folders, CSV manifests; `suite`: the paper's Table 1 found under one folder.
- `evaluate`: embed, cross-validate and summarise; `report`: markdown and JSON; `cli`: `doppel-torch eval`.
"""

from doppel_torch.eval.cache import EmbeddingCache
from doppel_torch.eval.embed import AudioReadError, Embedder, load_audio
from doppel_torch.eval.evaluate import cross_validate, evaluate, extract_features
from doppel_torch.eval.metrics import accuracy, mean_average_precision
from doppel_torch.eval.probe import ProbeConfig, fit_probe
from doppel_torch.eval.tasks import Task, parse_task_spec

__all__ = [
    "AudioReadError", "EmbeddingCache", "Embedder", "ProbeConfig", "Task", "accuracy", "cross_validate",
    "evaluate", "extract_features", "fit_probe", "load_audio", "mean_average_precision", "parse_task_spec",
]
