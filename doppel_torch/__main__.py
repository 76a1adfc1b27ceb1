"""`python -m doppel_torch ...` runs the `doppel-torch` command (doppel_torch.cli)."""

from doppel_torch.cli import main

main(prog_name="doppel-torch")
