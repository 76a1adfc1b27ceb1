"""`python -m doppel_torch.train ...` = `doppel-torch train ...` (the entry point for torchrun)."""

from doppel_torch.train.cli import train

if __name__ == "__main__":
    train(prog_name="python -m doppel_torch.train")
