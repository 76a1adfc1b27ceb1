"""`python -m doppel_torch.train ...` = `doppel-torch train ...` (the entry point for torchrun)."""

from doppel_torch.entry import _one_line_warnings
from doppel_torch.train.cli import train

if __name__ == "__main__":
    _one_line_warnings()
    train(prog_name="python -m doppel_torch.train")
