"""Build a pitch-class probe task from a General MIDI soundfont: single notes of several instruments, 1 s, 16 kHz.

    apt-get install -y fluidsynth fluid-soundfont-gm      # Debian: /usr/share/sounds/sf2/FluidR3_GM.sf2
    python bench/make_pitch_task.py --out ~/pitch-task     # then: doppel-torch eval CKPT --task csv:~/pitch-task/pitch.csv

Every note (MIDI 48-83 by default, three octaves) of every instrument is rendered alone by `fluidsynth` from a
one-note MIDI file (note held 0.8 s, velocity 100), mixed to mono, cut or padded to 1 s and written as 16-bit wav.
The manifest `pitch.csv` has columns path, label (the pitch class: C, C#, ... B) and group (the instrument), so the
probe's folds keep each instrument on one side of a split: it must recognise pitch in instruments it never saw.
Needs the `fluidsynth` program and a GM soundfont; the project's tests do not.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

# GM programs (0-based) of timbres far apart: struck, plucked, bowed, blown, keyboard, mallet.
INSTRUMENTS = {
    0: "acoustic_grand_piano", 6: "harpsichord", 11: "vibraphone", 19: "church_organ", 24: "nylon_guitar",
    32: "acoustic_bass", 40: "violin", 42: "cello", 56: "trumpet", 65: "alto_sax", 71: "clarinet", 73: "flute",
}
PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def _vlq(n: int) -> bytes:
    out = [n & 0x7F]
    while n > 0x7F:
        n >>= 7
        out.append((n & 0x7F) | 0x80)
    return bytes(reversed(out))


def one_note_midi(program: int, note: int, velocity: int, hold_s: float, total_s: float) -> bytes:
    """A format-0 MIDI file: program change, one note held `hold_s` seconds, end of track at `total_s`."""
    tpq, tempo_us = 480, 500_000  # 120 bpm: 960 ticks per second
    ticks = lambda s: int(round(s * 1e6 / tempo_us * tpq))  # noqa: E731
    events = (
        _vlq(0) + b"\xff\x51\x03" + tempo_us.to_bytes(3, "big")
        + _vlq(0) + bytes([0xC0, program])
        + _vlq(0) + bytes([0x90, note, velocity])
        + _vlq(ticks(hold_s)) + bytes([0x80, note, 0])
        + _vlq(ticks(total_s) - ticks(hold_s)) + b"\xff\x2f\x00"
    )
    header = b"MThd" + (6).to_bytes(4, "big") + (0).to_bytes(2, "big") + (1).to_bytes(2, "big") + tpq.to_bytes(2, "big")
    return header + b"MTrk" + len(events).to_bytes(4, "big") + events


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--soundfont", default="/usr/share/sounds/sf2/FluidR3_GM.sf2")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--low", type=int, default=48, help="lowest MIDI note [48 = C3]")
    ap.add_argument("--high", type=int, default=83, help="highest MIDI note [83 = B5]")
    ap.add_argument("--velocity", type=int, default=100)
    ap.add_argument("--sample-rate", type=int, default=16000)
    ap.add_argument("--duration", type=float, default=1.0)
    args = ap.parse_args(argv)
    if shutil.which("fluidsynth") is None:
        sys.exit("fluidsynth not found: apt-get install -y fluidsynth fluid-soundfont-gm")
    if not Path(args.soundfont).is_file():
        sys.exit(f"soundfont {args.soundfont} not found: apt-get install -y fluid-soundfont-gm, or pass --soundfont")
    if not 0 <= args.low <= args.high <= 127:
        sys.exit(f"notes must satisfy 0 <= --low <= --high <= 127, got {args.low}, {args.high}")
    audio_dir = args.out / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    n = int(round(args.duration * args.sample_rate))
    rows, silent = [], []
    jobs = [(p, note) for p in INSTRUMENTS for note in range(args.low, args.high + 1)]
    with tempfile.TemporaryDirectory() as tmp:
        for program, note in tqdm(jobs, desc="rendering notes", unit="note"):
            name = f"{INSTRUMENTS[program]}_{note:03d}.wav"
            mid, raw = Path(tmp) / "note.mid", Path(tmp) / "note.wav"
            mid.write_bytes(one_note_midi(program, note, args.velocity, 0.8 * args.duration, 1.2 * args.duration))
            subprocess.run(["fluidsynth", "-ni", "-q", "-g", "0.6", "-r", str(args.sample_rate), "-F", str(raw),
                            args.soundfont, str(mid)], check=True, capture_output=True)
            data, rate = sf.read(str(raw), dtype="float32", always_2d=True)
            if rate != args.sample_rate:
                sys.exit(f"fluidsynth wrote {rate} Hz, asked for {args.sample_rate}")
            mono = data.mean(axis=1)[:n]
            mono = np.pad(mono, (0, n - mono.shape[0]))
            peak = float(np.abs(mono).max())
            if peak < 1e-4:
                silent.append(name)
                continue
            sf.write(str(audio_dir / name), mono / max(peak, 1.0), args.sample_rate, subtype="PCM_16")
            rows.append({"path": f"audio/{name}", "label": PITCH_CLASSES[note % 12], "group": INSTRUMENTS[program]})
    with open(args.out / "pitch.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label", "group"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {len(rows)} notes ({len(INSTRUMENTS)} instruments x MIDI {args.low}-{args.high}) and "
          f"{args.out / 'pitch.csv'}" + (f"; {len(silent)} silent renders skipped: {silent[:5]}" if silent else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
