"""`doppel-torch delta-profile`: how much each synth parameter moves the log-mel, and the equal-effect deltas."""

from __future__ import annotations

import math
from pathlib import Path

import click

from doppel_torch.delta.profile import PROFILE_GRID
from doppel_torch.delta.spec import MAX_DELTA
from doppel_torch.options import SEED, FolderPath, NumberRange
from doppel_torch.progress import progress_bar
from doppel_torch.synths.base import BACKENDS, SYNTHS, synth_from_options


@click.command("delta-profile")
@click.option("--synth", "synth_name", type=click.Choice(list(SYNTHS)), default=None,
              help="A shipped synthesizer (default: voicefm; or --patch).")
@click.option("--patch", "patch_spec", default=None, metavar="FILE.py[:NAME] | MODULE[:NAME]",
              help="Profile your own Patch instead of --synth.")
@click.option("--delta", type=NumberRange(min=0.0, max=MAX_DELTA, min_open=True), default=0.25,
              show_default=True, help="Scalar delta of the bar chart, the printed ranking and the CSV's equal-effect column.")
@click.option("--n-theta", type=click.IntRange(min=1), default=128, show_default=True,
              help="Random patches per parameter (the effect is the median over them).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of theta, the perturbations and the noise.")
@click.option("--backend", type=click.Choice(list(BACKENDS)), default="cpu", show_default=True,
              help="Synth backend (finite differences: the fast native one by default).")
@click.option("--out", "out_dir", type=FolderPath(path_type=Path), default=Path("."),
              show_default=True, help="Folder for <synth>.csv and <synth>.png.")
@click.option("--duration", type=NumberRange(min=0.05, max=30.0), default=1.0, show_default=True,
              help="Seconds per sound (the log-mel keeps up to 96 frames); shipped profiles use 1 s.")
@click.option("--grid", default=",".join(f"{g:g}" for g in PROFILE_GRID), show_default=True,
              help="Increasing deltas in (0, 1] at which every parameter is measured; must include --delta's neighbours.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def delta_profile_command(synth_name, patch_spec, delta, n_theta, seed, backend, out_dir, duration, grid,
                          progress) -> None:
    """Measure, for each parameter, the median log-mel change when it alone is perturbed by delta z.

    Writes OUT/<synth>.csv (the effect at each delta of the grid 0.01 ... 1, and the equal-effect delta at --delta)
    and OUT/<synth>.png (one bar per parameter, grouped by module), and prints the ten strongest and weakest
    parameters. `equal-effect:D` reads the CSVs shipped in doppel_torch/delta/profiles/, made by this command with
    its defaults and `--out doppel_torch/delta/profiles`; pass `equal-effect:D@OUT/<synth>.csv` for another one.
    """
    from doppel_torch.delta.profile import delta_profile, plot_profile, save_profile
    from doppel_torch.options import out_folder

    try:
        grid_values = tuple(float(g) for g in grid.split(",") if g.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated deltas, e.g. 0.01,0.1,0.25,1; got {grid!r}",
                                 param_hint="--grid") from None
    if not all(math.isfinite(g) for g in grid_values):
        raise click.BadParameter(f"deltas must be finite numbers, got {grid!r}", param_hint="--grid")
    if grid_values and not min(grid_values) <= delta <= max(grid_values):
        raise click.BadParameter(f"the grid {grid} must reach --delta {delta:g} on both sides (its equal-effect "
                                 "column interpolates there): add deltas around it", param_hint="--grid")
    try:
        synth = synth_from_options(synth_name, patch_spec, default="voicefm", backend=backend, duration=duration)
    except (RuntimeError, ValueError) as err:
        raise click.UsageError(str(err)) from err
    out_folder(out_dir)  # before the profile is computed: a folder that cannot take its files costs nothing
    name = synth.patch.name
    with progress_bar(total=synth.num_params, desc=f"{name} delta profile", unit="param", disable=not progress) as bar:
        bar.set_postfix_str(f"{len(grid_values) * n_theta} sounds/param")
        try:
            profile = delta_profile(synth, grid=grid_values, n_theta=n_theta, seed=seed, progress=bar.update)
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="--grid") from None
    profile.meta["command"] = (f"doppel-torch delta-profile {'--patch ' + patch_spec if patch_spec else '--synth ' + name}"
                               f" --n-theta {n_theta} --seed {seed} --backend {backend} --duration {duration:g}"
                               f" --grid {','.join(f'{g:g}' for g in grid_values)}")
    try:
        csv_path = save_profile(profile, out_dir / f"{name}.csv", synth, delta=delta)
        png = plot_profile(profile, out_dir / f"{name}.png", delta=delta,
                           title=f"{name}: median log-mel change per parameter (seed {seed}, {n_theta} patches each)")
    except OSError as err:
        raise click.ClickException(f"cannot write the profile in {out_dir}: {err.strerror or err} (free some space "
                                   "or choose another --out)") from None
    effects = profile.at(delta)
    order = effects.argsort(descending=True).tolist()
    click.echo(f"median |d log-mel| at delta {delta:g} (median parameter {float(effects.median()):.4g}):")
    for label, rows in (("strongest", order[:10]), ("weakest", order[::-1][:10])):
        click.echo(f"  ten {label}:")
        for j in rows:
            click.echo(f"    {profile.names[j]:<26}{float(effects[j]):>10.4g}")
    click.echo(f"wrote {csv_path} and {png}")
