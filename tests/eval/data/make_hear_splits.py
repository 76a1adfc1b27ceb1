"""Writes hear_splits.json: folds and a subsample drawn by hear-preprocess's own code, the golden values of
tests/eval/test_suite.py::test_hear_splits_match_hear_preprocess. Not part of the test run; needs pandas:

    git -C HEAR_PREPROCESS show HEAD:hearpreprocess/pipeline.py > /tmp/pipeline.py
    python tests/eval/data/make_hear_splits.py /tmp/pipeline.py COMMIT tests/eval/data/hear_splits.json

It executes `ExtractMetadata.split_k_folds`, taken verbatim from that pipeline.py, on random file stems and
labels, and repeats `SubsampleSplit.run`'s draw (sort by stem, pandas ``sample(frac=1, random_state=
str2int("SubsampleSplit(train)"))``, keep the first n).
"""

import ast
import copy
import hashlib
import json
import random
import sys
import textwrap

import numpy as np
import pandas as pd

pipeline_py, commit, out_path = sys.argv[1:4]
source = open(pipeline_py).read()
method = next(f for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ClassDef)
              and node.name == "ExtractMetadata" for f in node.body
              if isinstance(f, ast.FunctionDef) and f.name == "split_k_folds")


class _Diagnostics:
    def info(self, *args):
        pass


namespace = dict(copy=copy, random=random, np=np, pd=pd, diagnostics=_Diagnostics())
exec(textwrap.dedent(ast.get_source_segment(source, method)), namespace)
split_k_folds = namespace["split_k_folds"]


class _Task:
    longname = "golden"

    def __init__(self, n_folds):
        self.task_config = dict(nfolds=n_folds, mode="full", embedding_type="scene", prediction_type="multiclass")


def str2int(s: str) -> int:  # hear-preprocess util/luigi.py
    return int(hashlib.sha1(s.encode("utf-8")).hexdigest(), 16) % (2**32 - 1)


out = dict(generated_by=dict(hear_preprocess=commit, pandas=pd.__version__, numpy=np.__version__))
rng = np.random.default_rng(0)
for case, (n, n_labels, n_folds) in enumerate(((25, 3, 5), (40, 4, 3), (60, 4, 5), (300, 10, 3))):
    stems = [f"{int(rng.integers(0, 10))}_{int(rng.integers(0, 1 << 40)):010x}" for _ in range(n)]
    labels = [str(i % n_labels) if i < 2 * n_labels * n_folds else str(int(rng.integers(0, n_labels)))
              for i in range(n)]
    meta = pd.DataFrame(dict(relpath=stems, unique_filestem=stems, split_key=stems, label=labels, split="train"))
    folds = split_k_folds(_Task(n_folds), meta)["split"].tolist()
    out[f"kfold{case}"] = dict(keys=stems, labels=labels, n_folds=n_folds, folds=folds)
# 23 files, 3 labels, 5 folds: the first seed fails and the first retry seed ("split_k_folds_retry_0") wins
stems, labels = [f"clip{i:03d}" for i in range(23)], [str(i % 3) for i in range(23)]
meta = pd.DataFrame(dict(relpath=stems, unique_filestem=stems, split_key=stems, label=labels, split="train"))
out["kfold4"] = dict(keys=stems, labels=labels, n_folds=5, folds=split_k_folds(_Task(5), meta)["split"].tolist())

stems = [f"keyboard_{i:05d}-{60 + i % 20:03d}-100" for i in range(200)]
random.Random(1).shuffle(stems)
frame = pd.DataFrame(dict(unique_filestem=stems, relpath=stems)).drop_duplicates().sort_values("unique_filestem")
drawn = frame.sample(frac=1, random_state=str2int("SubsampleSplit(train)")).values
out["subsample"] = dict(split="train", stems=stems, kept=[row[0] for row in drawn[:37]])
with open(out_path, "w") as f:
    json.dump(out, f, separators=(",", ":"))
    f.write("\n")
