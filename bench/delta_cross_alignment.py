"""Alignment and uniformity of trained encoders on the validation pairs of several delta specs (one table).

Each run's own validation alignment is measured on its own pairs, so runs trained with different delta specs are not
comparable by it. This evaluates every checkpoint on the same pairs of every spec (validation indices 0 .. n-1, seed
0, shared noise, the cpu backend), in eval mode:

    python bench/delta_cross_alignment.py RUN_A RUN_B ... --spec 0.25 --spec equal-effect:0.25 --n 512
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from doppel_torch.frontend import LogMelFrontend
from doppel_torch.losses import align_loss, uniform_loss
from doppel_torch.pairs import DoppelgangerPairs
from doppel_torch.synths import get_synth
from doppel_torch.train.checkpoint import load_encoder


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--spec", action="append", required=True)
    ap.add_argument("--synth", default="voicefm")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()
    synth = get_synth(args.synth, backend="cpu")
    front = LogMelFrontend()
    views = {}
    for spec in args.spec:
        pairs = DoppelgangerPairs(synth, delta=spec, seed=0)
        a, b = [], []
        for s in range(0, args.n, args.batch):
            x, y = pairs(torch.arange(s, min(s + args.batch, args.n)))
            a.append(front(x)), b.append(front(y))
        views[spec] = (torch.cat(a), torch.cat(b))
    print("| run | " + " | ".join(f"{s}: align / uniform" for s in args.spec) + " |")
    print("|---|" + "---|" * len(args.spec))
    for run in args.runs:
        encoder, _ = load_encoder(run)
        cells = []
        for spec in args.spec:
            a, b = views[spec]
            za = torch.cat([F.normalize(encoder(a[s:s + args.batch]), dim=1) for s in range(0, args.n, args.batch)])
            zb = torch.cat([F.normalize(encoder(b[s:s + args.batch]), dim=1) for s in range(0, args.n, args.batch)])
            uni = (uniform_loss(za) + uniform_loss(zb)) / 2
            cells.append(f"{float(align_loss(za, zb)):.3f} / {float(uni):.3f}")
        print(f"| {run} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
