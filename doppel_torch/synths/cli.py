"""`doppel-torch info` and `doppel-torch sample`: look at the synths and listen to doppelgangers."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import click
import soundfile

from doppel_torch.delta.spec import GROUPS, MAX_DELTA, normalize_delta, param_groups
from doppel_torch.options import SEED, FolderPath, NumberRange
from doppel_torch.pairs import NOISE_MODES
from doppel_torch.synths.base import BACKENDS, SYNTHS, get_synth, synth_from_options


@click.command()
@click.option("--synth", "synth_name", type=click.Choice(list(SYNTHS)), default=None, help="List this synth's parameters.")
@click.option("--patch", "patch_spec", default=None, metavar="FILE.py[:NAME] | MODULE[:NAME]",
              help="List the parameters of your own Patch (the names `match --fit` takes).")
@click.option("--groups", is_flag=True, help="List the parameter groups of delta specs (keep:GROUP=VALUE).")
def info(synth_name: str | None, patch_spec: str | None, groups: bool) -> None:
    """The synths and their parameters (flat theta order, human ranges)."""
    try:
        chosen = None if synth_name is None and patch_spec is None else synth_from_options(synth_name, patch_spec)
    except (RuntimeError, ValueError) as err:
        raise click.UsageError(str(err)) from None
    if groups:
        click.echo("parameter groups of delta specs (e.g. --delta 0.25+keep:pitch=0.02); a module name works too")
        for synth in [chosen] if chosen else [get_synth(name) for name in SYNTHS]:
            click.echo(f"\n{synth.patch.name}:")
            for group, members in param_groups(synth).items():
                listed = ", ".join(synth.param_names[i] for i in members) if len(members) <= 6 else (
                    f"{', '.join(synth.param_names[i] for i in members[:4])}, ... ({len(members)})")
                click.echo(f"  {group:<12}{GROUPS[group]}: {listed or 'none in this synth'}")
        return
    if chosen is None:
        click.echo(f"{'synth':<12}{'params':>7}  architecture")
        for name in SYNTHS:
            synth = get_synth(name)
            click.echo(f"{name:<12}{synth.num_params:>7}  {synth.patch.description}")
        click.echo(f"\nbackends: {', '.join(BACKENDS)}  (defaults: 16 kHz audio, 480 Hz control rate, 1 s)")
        click.echo("details: doppel-torch info --synth voice (or --patch FILE.py); delta-spec groups: "
                   "doppel-torch info --groups")
        return
    synth = chosen
    order = "in SynthAX ravel_pytree order" if patch_spec is None else "in theta's order"
    about = f": {synth.patch.description}" if synth.patch.description else ""
    click.echo(f"{synth.patch.name}{about}; {synth.num_params} parameters {order}")
    width = max(24, *(len(name) + 1 for name in synth.param_names))  # a user's long module names too
    click.echo(f"{'#':>4}  {'name':<{width}}{'min':>9}{'max':>9}{'curve':>8}  {'mapping':<11}unit (of min and max)")
    for i, (spec, unit) in enumerate(zip(synth.param_specs, synth.param_units)):
        r = spec.range
        mapping = ("symmetric" if r.symmetric else "power") if spec.curve_applied else "linear"
        click.echo(f"{i:>4}  {spec.name:<{width}}{r.minimum:>9.4g}{r.maximum:>9.4g}{r.curve:>8.3g}  {mapping:<11}"
                   f"{unit}")


MANIFEST = ".doppel-samples.json"  # the wav files `sample` wrote into a folder, for the next one's clean-up


def _manifest(folder: Path) -> list[str]:
    """The wav names an earlier `sample` listed in `folder` (plain names only: nothing outside the folder)."""
    try:
        names = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(names, list):
        return []
    return [n for n in names if isinstance(n, str) and n.endswith(".wav") and Path(n).name == n]


def _why(err: Exception) -> str:
    """What went wrong writing a file, with the remedy for that (a folder where a file goes is no full disk)."""
    errno_ = getattr(err, "errno", None)
    path = getattr(err, "filename2", None) or getattr(err, "filename", None)  # a rename's destination first
    name = f"{Path(path).name}: " if path else ""
    if errno_ in (errno.EISDIR, errno.ENOTDIR, errno.EEXIST):
        return f"{name}{err.strerror} (a folder has a name the samples take: move it, or choose another --out)"
    if errno_ in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{name}{err.strerror} (choose another --out)"
    return f"{name}{getattr(err, 'strerror', None) or err} (free some space, or choose another --out)"


def _delta_spec(ctx, param, value: str) -> float | str:
    try:
        return normalize_delta(value)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None


def _deltas(ctx, param, value: str) -> tuple[float | str, ...]:
    """Comma-separated numbers (0,0.1,0.25), or delta specs separated by ';' (0.25;equal-effect:0.25)."""
    if ";" in value or ":" in value:
        try:
            return _once(tuple(normalize_delta(v) for v in value.split(";") if v.strip()))
        except ValueError as err:
            raise click.BadParameter(f"{err}; specs are separated by ';', e.g. '0.25;equal-effect:0.25'") from None
    try:
        deltas = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError as err:
        raise click.BadParameter(
            f"expected comma-separated numbers, e.g. 0,0.1,0.25, or specs separated by ';'; got {value!r}") from err
    if any(not 0.0 <= d <= MAX_DELTA for d in deltas):  # NaN fails this too
        raise click.BadParameter(f"every delta must lie in [0, {MAX_DELTA:g}], got {value!r}")
    return _once(deltas)


def _once(deltas: tuple) -> tuple:
    """Each delta of a sweep once, in order (a repeated one named the same file twice: three written, one kept)."""
    return tuple(dict.fromkeys(deltas))


@click.command()
@click.option("--synth", "synth_name", type=click.Choice(list(SYNTHS)), default=None,
              help="A shipped synthesizer (default: voice; or --patch).")
@click.option("--patch", "patch_spec", default=None, metavar="FILE.py[:NAME] | MODULE[:NAME]",
              help="Render your own Patch instead of --synth (see examples/subtractive.py).")
@click.option("--delta", default="0.25", show_default=True, callback=_delta_spec, metavar="SPEC",
              help=f"Perturbation scale, 0 to {MAX_DELTA:g} (the rule of `train` too): "
                   "theta_k = clip(theta + delta * z_k, eps, 1); or a delta spec (equal-effect:0.25, "
                   "0.25+keep:pitch=0.02; groups: doppel-torch info --groups).")
@click.option("--noise", type=click.Choice(NOISE_MODES), default="shared", show_default=True,
              help="Synth noise of the pairs: one row for all sounds (the paper's), per view, or per sound.")
@click.option("--pairs", "n_pairs", type=click.IntRange(1, 64), default=8, show_default=True,
              help="How many doppelganger pairs (sounds --start, --start + 1, ...).")
@click.option("--out", "out_dir", type=FolderPath(path_type=Path), required=True,
              help="Folder for the wav files and the spectrogram picture (created if missing).")
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="Keys every random draw: the same seed and index give the same sounds (train's --seed).")
@click.option("--start", type=click.IntRange(0, 2**62), default=0, show_default=True, help="First global sound index.")
@click.option("--sweep", default="0,0.01,0.05,0.1,0.25,0.5", show_default=True, callback=_deltas,
              help="Deltas of the sweep (same theta and z_1, growing perturbation), or delta specs separated by ';' "
                   "to hear the same theta under each ('0.25;equal-effect:0.25'); empty for none.")
@click.option("--augment/--no-augment", default=False, show_default=True,
              help="Pass both views through the paper's augmentation chain (p = 0.5 per transform).")
@click.option("--ir-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Folder of impulse responses: adds reverb to the augmentation chain.")
@click.option("--backend", type=click.Choice(list(BACKENDS)), default=None,
              help="How to render: cpu (the native kernel; the default where it builds), torch (the reference), "
                   "triton (CUDA).")
@click.option("--duration", type=NumberRange(min=0.05, max=30.0), default=1.0, show_default=True,
              help="Seconds per sound.")
def sample(synth_name, patch_spec, delta, noise, n_pairs, out_dir, seed, start, sweep, augment, ir_dir, backend,
           duration) -> None:
    """Write doppelganger pairs and a delta sweep as wav files, and one PNG of their spectrograms.

    Columns of samples.png: the two views of each pair, then the same sound at each delta of the sweep (view a
    is the sweep's column at --delta when that delta is in the sweep). Colours: dB below each panel's peak.
    """
    from doppel_torch.augment import AugmentChain
    from doppel_torch.pairs import sample_names, write_samples

    if ir_dir is not None and not augment:
        raise click.UsageError("--ir-dir adds reverb to the augmentation chain: use it with --augment")
    if backend is None:  # the native kernel where it builds (10x the reference's speed), else the reference
        from doppel_torch.backends import fastest

        backend = fastest("cpu")
    try:
        synth = synth_from_options(synth_name, patch_spec, default="voice", backend=backend, duration=duration)
        synth_name = synth.patch.name
        chain = AugmentChain(synth.sample_rate, ir_paths=ir_dir, seed=seed) if augment else None
    except (RuntimeError, ValueError) as err:
        raise click.UsageError(str(err)) from err
    shown = f"{delta:g}" if isinstance(delta, float) else delta
    title = f"{synth_name} doppelgangers, delta = {shown}, seed = {seed}" + (", augmented" if augment else "")
    if augment:
        title += "\nthe sweep columns are clean (not augmented) renders of view a's sound"
    elif delta in sweep:
        title += f"\nview a = the sweep's delta {shown} column (the same sound); the sweep moves view a's theta along z_1"
    from doppel_torch.options import out_folder

    out_folder(out_dir)
    earlier = _manifest(out_dir)
    try:
        # listed before they are written: a sample stopped halfway (Ctrl-C, a full disk) left files that no manifest
        # named, so no later sample removed them (found from outside); a file that is there already and no sample
        # listed is not ours to remove later, whether or not this run gets to it
        planned = [n for n in sample_names(n_pairs, sweep, augment) if n in earlier or not (out_dir / n).exists()]
        (out_dir / MANIFEST).write_text(json.dumps(sorted(set(earlier) | set(planned)), indent=0) + "\n")
        written = write_samples(
            synth, out_dir, n_pairs=n_pairs, start=start, seed=seed, delta=delta, sweep_deltas=sweep, augment=chain,
            noise=noise, title=title,
        )
    except ValueError as err:  # a spec naming a group this synth lacks, or no delta profile for equal-effect
        raise click.UsageError(str(err)) from None
    except (OSError, soundfile.SoundFileError) as err:  # a full disk: libsndfile's "System error." was a traceback
        raise click.ClickException(f"cannot write the samples in {out_dir}: {_why(err)}") from None
    # an earlier `sample` into this folder (more pairs, other deltas) left files that samples.png no longer shows:
    # those its manifest lists go, and nothing else (a user's pair_03_my_take.wav went too: found from outside)
    ours = {p.name for p in written["wavs"]}
    stale = [out_dir / name for name in earlier if name not in ours and (out_dir / name).is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    (out_dir / MANIFEST).write_text(json.dumps(sorted(ours), indent=0) + "\n")
    click.echo(f"wrote {len(ours)} wav files and {written['png']}"
               + (f" (removed {len(stale)} wav files of an earlier sample into {out_dir})" if stale else ""))
