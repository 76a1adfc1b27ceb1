"""The `doppel-torch` command line: info, sample, train, eval, match, delta-profile.

Each subcommand lives next to the code it drives; this file only assembles the group.
"""

from __future__ import annotations

import click

from doppel_torch.delta.cli import delta_profile_command
from doppel_torch.eval.cli import eval_command
from doppel_torch.matching.cli import match_command
from doppel_torch.synths.cli import info, sample
from doppel_torch.train.cli import train


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="doppel-torch")
def main() -> None:
    """Self-supervised audio pretraining from synthetic audio doppelgangers."""


main.add_command(info)
main.add_command(sample)
main.add_command(train)
main.add_command(eval_command, name="eval")
main.add_command(match_command, name="match")
main.add_command(delta_profile_command)
