"""Sound matching: fit a synth's theta to a target sound by gradient descent on a multi-resolution spectral loss.

    from doppel_torch import VoiceSynth, default_backend, match

    synth = VoiceSynth(duration=0.5, backend=default_backend())   # the fastest differentiable backend here
    result = match(synth, target, restarts=16, steps=200, seed=0)  # target: (N,) at synth.sample_rate
    result.theta, result.loss, result.audio                        # best theta (m,), its loss, its render (N,)

Every restart is one row of one batch: theta = sigmoid(logits), so it stays inside (0, 1) without projection,
and Adam moves all restarts at once (the loss is a sum over rows, so each row gets its own gradient). Starting
points are keyed by `seed` (`rng.Stream.MATCH`); every restart renders with one noise row keyed by (seed, 0), the
row that `synth(theta, seed=seed)` draws for sound index 0. Each restart keeps the best theta it has visited.

    loss.py    the multi-resolution spectral loss (spectral_loss, SpectralTarget) and a scan's forward-only one
    search.py  match, its starting points, the pitch scans and the columns held or scanned
    files.py   the target in (prepare_target) and the result out (theta.json, match.wav, target.wav, match.png)
    cli.py     `doppel-torch match TARGET.wav`: reads the target, runs match with a progress bar under Ctrl-C and
               SIGTERM, keeps the best so far on disk, writes the result
"""

from doppel_torch.matching.files import (describe_theta, prepare_target, read_theta_json, write_result,
                                         write_theta_json)
from doppel_torch.matching.loss import FFT_SIZES, SpectralTarget, spectral_loss
from doppel_torch.matching.search import (MatchResult, default_backend, describe_columns, fit_columns, match,
                                          pitch_columns, scan_columns, scan_pitch, starting_points, starts_around,
                                          starts_refitting)

__all__ = ["FFT_SIZES", "MatchResult", "SpectralTarget", "default_backend", "describe_columns", "describe_theta",
           "fit_columns", "match", "pitch_columns", "prepare_target", "read_theta_json", "scan_columns", "scan_pitch",
           "spectral_loss", "starting_points", "starts_around", "starts_refitting", "write_result", "write_theta_json"]
