"""`python -m doppel_torch ...` runs the `doppel-torch` command (doppel_torch.cli)."""

from doppel_torch.entry import main

main()
