"""`doppel-torch info` and `doppel-torch sample`: look at the synths and listen to doppelgangers."""

from __future__ import annotations

from pathlib import Path

import click

from doppel_torch.synths.base import BACKENDS, SYNTHS, get_synth


def _finite(ctx, param, value):
    """click's FloatRange lets NaN through (every comparison with NaN is false)."""
    if value is not None and value != value:
        raise click.BadParameter("must be a number, not NaN")
    return value


@click.command()
@click.option("--synth", "synth_name", type=click.Choice(list(SYNTHS)), default=None, help="List this synth's parameters.")
def info(synth_name: str | None) -> None:
    """The synths and their parameters (flat theta order, human ranges)."""
    if synth_name is None:
        click.echo(f"{'synth':<12}{'params':>7}  architecture")
        for name in SYNTHS:
            synth = get_synth(name)
            click.echo(f"{name:<12}{synth.num_params:>7}  {synth.patch.description}")
        click.echo(f"\nbackends: {', '.join(BACKENDS)}  (defaults: 16 kHz audio, 480 Hz control rate, 1 s)")
        click.echo("details: doppel-torch info --synth voice")
        return
    synth = get_synth(synth_name)
    click.echo(f"{synth_name}: {synth.patch.description}; {synth.num_params} parameters in SynthAX ravel_pytree order")
    click.echo(f"{'#':>4}  {'name':<24}{'min':>9}{'max':>9}{'curve':>8}  mapping")
    for i, spec in enumerate(synth.param_specs):
        r = spec.range
        mapping = ("symmetric" if r.symmetric else "power") if spec.curve_applied else "linear"
        click.echo(f"{i:>4}  {spec.name:<24}{r.minimum:>9.4g}{r.maximum:>9.4g}{r.curve:>8.3g}  {mapping}")


@click.command()
@click.option("--synth", "synth_name", type=click.Choice(list(SYNTHS)), default="voice", show_default=True)
@click.option("--delta", type=click.FloatRange(min=0.0, max=1.0), default=0.25, show_default=True, callback=_finite,
              help="Perturbation scale: theta_k = clip(theta + delta * z_k, eps, 1).")
@click.option("--pairs", "n_pairs", type=click.IntRange(1, 256), default=8, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the wav files and the spectrogram picture (created if missing).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--start", type=click.IntRange(min=0), default=0, show_default=True, help="First global sound index.")
@click.option("--backend", type=click.Choice(list(BACKENDS)), default="torch", show_default=True)
@click.option("--duration", type=click.FloatRange(min=0.05, max=30.0), default=1.0, show_default=True)
def sample(synth_name, delta, n_pairs, out_dir, seed, start, backend, duration) -> None:
    """Write doppelganger pairs as wav files and one PNG of their spectrograms side by side."""
    import torch

    from doppel_torch.pairs import DoppelgangerPairs
    from doppel_torch.viz import save_spectrogram_grid, write_wav

    try:
        synth = get_synth(synth_name, backend=backend, duration=duration)
    except (RuntimeError, ValueError) as err:
        raise click.UsageError(str(err)) from err
    pairs = DoppelgangerPairs(synth, delta=delta, seed=seed)
    indices = torch.arange(start, start + n_pairs)
    audio_a, audio_b = pairs(indices)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_pairs):
        write_wav(out_dir / f"pair_{i:02d}_a.wav", audio_a[i], synth.sample_rate)
        write_wav(out_dir / f"pair_{i:02d}_b.wav", audio_b[i], synth.sample_rate)
        rows.append([audio_a[i], audio_b[i]])
    png = save_spectrogram_grid(
        rows, synth.sample_rate, out_dir / "pairs.png",
        row_labels=[f"#{start + i}" for i in range(n_pairs)], col_labels=["view a", "view b"],
        title=f"{synth_name} doppelgangers, delta = {delta:g}, seed = {seed}",
    )
    click.echo(f"wrote {2 * n_pairs} wav files and {png} to {out_dir}")
