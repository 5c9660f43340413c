"""Write a small speech corpus in LibriSpeech's layout, for the smoke preset and tests.

    python -m sweep.corpus data/smoke                      # 40 real LibriSpeech utterances (bundled)
    python -m sweep.corpus data/ls --source /data/LibriSpeech/dev-clean --utterances 100
    python -m sweep.corpus data/synth --source synthetic --speakers 8 --utterances 32

Sources: `bundled` (default): the real LibriSpeech utterances shipped in sweep/assets (CC BY 4.0,
credited in their README); a path: copy up to N utterances of a LibriSpeech-layout folder, one
per speaker first; `synthetic`: deterministic speech-like audio (voiced segments with pitch
contours and moving formants, fricative noise bursts, pauses) for machines with no real speech.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from sweep.data import discover_audio
from sweep.errors import report_usage_error

BUNDLED_CORPUS = Path(__file__).parent / "assets" / "librispeech-subset"
SYNTH_RATE = 16_000
# (F1, F2, F3) in Hz of a few vowels (Peterson & Barney averages, adult male).
VOWELS = np.array(
    [(730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (570, 840, 2410)]
)


def write_corpus(
    out: str | Path, source: str = "bundled", utterances: int = 40, speakers: int = 8
) -> list[Path]:
    """Fill `out` with a corpus; returns the audio files written. Refuses a non-empty `out`."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose a new folder or delete it first.")
    out.mkdir(parents=True, exist_ok=True)
    if source == "synthetic":
        return write_synthetic(out, utterances=utterances, speakers=speakers)
    root = BUNDLED_CORPUS if source == "bundled" else Path(source)
    files = _one_per_speaker_first(discover_audio(root))[:utterances]
    written = []
    for f in files:
        target = out / f.path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f.path, target)
        written.append(target)
    for extra in ("README.md", "LICENSE.TXT"):
        if (root / extra).is_file():
            shutil.copyfile(root / extra, out / extra)
    return written


def _one_per_speaker_first(files):
    """Round-robin over speakers, so a small N still covers many speakers."""
    by_speaker: dict[str, list] = {}
    for f in files:
        by_speaker.setdefault(f.speaker, []).append(f)
    ordered, depth = [], 0
    while len(ordered) < len(files):
        ordered += [fs[depth] for _, fs in sorted(by_speaker.items()) if depth < len(fs)]
        depth += 1
    return ordered


def write_synthetic(out: Path, utterances: int = 32, speakers: int = 8, seconds: float = 8.0) -> list[Path]:
    """Deterministic speech-like FLACs at 16 kHz, `<speaker>/<chapter>/<speaker>-<chapter>-<n>.flac`."""
    written = []
    for n in range(utterances):
        speaker = n % speakers
        spk_id, chapter = 9000 + speaker, 100 + speaker
        audio = synthesize_utterance(seed=n, speaker=speaker, seconds=seconds)
        path = out / str(spk_id) / str(chapter) / f"{spk_id}-{chapter}-{n // speakers:04d}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, audio, SYNTH_RATE, subtype="PCM_16")
        written.append(path)
    return written


def synthesize_utterance(seed: int, speaker: int, seconds: float, rate: int = SYNTH_RATE) -> np.ndarray:
    """(N,) float32 in [-1, 1]: syllable-like voiced segments, fricatives and pauses."""
    rng = np.random.default_rng(1000 * speaker + seed)
    voice = np.random.default_rng(speaker)  # a speaker keeps pitch range and vocal-tract scale
    f0_base, tract = voice.uniform(95, 230), voice.uniform(0.85, 1.2)
    pieces, total = [], int(seconds * rate)
    while sum(len(p) for p in pieces) < total:
        kind = rng.choice(["voiced", "voiced", "voiced", "fricative", "pause"])
        if kind == "voiced":
            pieces.append(_voiced(rng, rate, f0_base, tract))
        elif kind == "fricative":
            pieces.append(_fricative(rng, rate))
        else:
            pieces.append(np.zeros(int(rng.uniform(0.08, 0.35) * rate)))
    audio = np.concatenate(pieces)[:total]
    return (0.5 * audio / (np.abs(audio).max() + 1e-9)).astype(np.float32)


def _voiced(rng, rate, f0_base, tract) -> np.ndarray:
    """A vowel glide: falling-rising pitch, formants moving between two vowels, harmonic source."""
    n = int(rng.uniform(0.12, 0.4) * rate)
    t = np.linspace(0, 1, n)
    f0 = f0_base * (1 + 0.15 * np.sin(np.pi * t + rng.uniform(0, np.pi)) - 0.1 * t)  # (n,)
    a, b = VOWELS[rng.integers(len(VOWELS), size=2)] * tract
    formants = a[None, :] + (b - a)[None, :] * t[:, None] ** 1.5  # (n, 3)
    harmonics = np.arange(1, int(4000 / f0_base) + 1)  # (H,)
    phase = 2 * np.pi * np.cumsum(f0) / rate  # (n,)
    freqs = harmonics[:, None] * f0[None, :]  # (H, n)
    bandwidth = np.array([80.0, 100.0, 150.0])
    gain = (
        sum(1 / (1 + ((freqs - formants[:, k]) / bandwidth[k]) ** 2) for k in range(3)) / harmonics[:, None]
    )
    wave = (gain * np.sin(harmonics[:, None] * phase[None, :])).sum(axis=0)
    return wave * np.hanning(n)


def _fricative(rng, rate) -> np.ndarray:
    n = int(rng.uniform(0.05, 0.15) * rate)
    noise = np.diff(rng.standard_normal(n + 1))  # first difference: a high-passed hiss
    return 0.15 * noise * np.hanning(n)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", help="folder to write (must be new or empty)")
    parser.add_argument(
        "--source", default="bundled", help="'bundled' (default), 'synthetic', or a folder to copy from"
    )
    parser.add_argument("--utterances", type=int, default=40, help="how many utterances (default 40)")
    parser.add_argument(
        "--speakers", type=int, default=8, help="speakers, for --source synthetic (default 8)"
    )
    args = parser.parse_args(argv)
    try:
        written = write_corpus(args.out, args.source, args.utterances, args.speakers)
    except (FileExistsError, ValueError) as err:
        return report_usage_error(err)
    print(f"wrote {len(written)} utterances to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
