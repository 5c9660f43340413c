"""Speech data: find utterances, read them at 24 kHz mono, split by speaker.

    files = discover_audio("data/smoke")               # LibriSpeech layout or any folder of wav/flac
    files = select_utterances(files, max_utterances=5000)
    train, eval = split_by_speaker(files, eval_fraction=0.1)
    audio = read_audio(files[0].path)                  # (N,) float32 at 24 kHz

Speakers: LibriSpeech names files `<speaker>-<chapter>-<utterance>.flac`; elsewhere the speaker is
the first folder under the root (a flat folder makes each file its own speaker).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf

from models.spec import SAMPLE_RATE

AUDIO_EXTENSIONS = (".flac", ".wav")
DEFAULT_MAX_UTTERANCES = 5000
_LIBRISPEECH_NAME = re.compile(r"^(\d+)-(\d+)-(\d+)$")


class DataError(ValueError):
    """The data folder cannot be used; the message says why and what to do."""


class UnusableAudioWarning(UserWarning):
    """Some audio files were skipped (one warning lists them all)."""


@dataclass(frozen=True)
class AudioFile:
    path: Path
    speaker: str
    utterance_id: str


def discover_audio(root: str | os.PathLike) -> list[AudioFile]:
    """Every .flac/.wav under `root` (recursively), sorted by path, with its speaker."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(
            f"data folder {root} does not exist; pass --data a folder of .wav/.flac speech files."
        )
    if not root.is_dir():
        raise DataError(
            f"data path {root} is a file, not a folder; pass --data the folder that holds the audio."
        )
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
    if not paths:
        raise DataError(
            f"data folder {root} holds no {'/'.join(AUDIO_EXTENSIONS)} files; point --data at LibriSpeech "
            "(e.g. LibriSpeech/train-clean-100) or any folder of speech recordings, "
            "or write the smoke corpus with `python -m sweep.corpus DIR`."
        )
    return [AudioFile(p, _speaker_of(p, root), p.stem) for p in paths]


def _speaker_of(path: Path, root: Path) -> str:
    match = _LIBRISPEECH_NAME.match(path.stem)
    if match:
        return match.group(1)
    parts = path.relative_to(root).parts
    return parts[0] if len(parts) > 1 else path.stem


def _stable_hash(text: str, salt: str = "") -> str:
    return hashlib.sha1(f"{salt}/{text}".encode()).hexdigest()


def select_utterances(
    files: list[AudioFile], max_utterances: int = DEFAULT_MAX_UTTERANCES
) -> list[AudioFile]:
    """At most `max_utterances` files, chosen by a hash of their ids (so the pick spreads over speakers
    and does not depend on the order files were found in); returned sorted by path."""
    if max_utterances < 1:
        raise DataError(f"max_utterances must be >= 1, got {max_utterances}.")
    if len(files) <= max_utterances:
        return list(files)
    chosen = sorted(files, key=lambda f: _stable_hash(f.utterance_id))[:max_utterances]
    return sorted(chosen, key=lambda f: f.path)


def split_by_speaker(
    files: list[AudioFile], eval_fraction: float = 0.1, seed: int = 0
) -> tuple[list[AudioFile], list[AudioFile]]:
    """Speaker-disjoint (train, eval). Eval speakers are the ceil(eval_fraction * n_speakers) ones
    with the smallest seeded hash: deterministic, independent of file order, stable as data grows."""
    if not 0 < eval_fraction < 1:
        raise DataError(f"eval_fraction must be between 0 and 1, got {eval_fraction}.")
    speakers = sorted({f.speaker for f in files}, key=lambda s: _stable_hash(s, salt=str(seed)))
    if len(speakers) < 2:
        raise DataError(
            f"a speaker-disjoint split needs at least 2 speakers, found {len(speakers)} "
            f"in {len(files)} files; add recordings of more speakers."
        )
    n_eval = min(len(speakers) - 1, max(1, math.ceil(eval_fraction * len(speakers))))
    eval_speakers = set(speakers[:n_eval])
    train = [f for f in files if f.speaker not in eval_speakers]
    evaluation = [f for f in files if f.speaker in eval_speakers]
    return train, evaluation


@lru_cache(maxsize=16)
def _resampler(orig_rate: int, new_rate: int):
    import torchaudio  # here, not at the top: sweep.launch checks --data with this module, without torch

    return torchaudio.transforms.Resample(orig_rate, new_rate)


def read_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(N,) float32 mono at `sample_rate`: channels averaged, resampled with torchaudio.
    Raises soundfile's errors for unreadable files."""
    import torch

    data, rate = sf.read(str(path), dtype="float32", always_2d=True)  # (N, C)
    mono = torch.from_numpy(data.mean(axis=1))
    if rate != sample_rate:
        mono = _resampler(rate, sample_rate)(mono)
    return mono.numpy()


def probe_audio(path: Path, min_seconds: float) -> tuple[float, str | None]:
    """(duration in s, why `path` cannot be used or None), from the file's header only."""
    try:
        info = sf.info(str(path))
    except Exception as err:  # soundfile raises several types (LibsndfileError, RuntimeError, ...)
        return 0.0, f"unreadable ({type(err).__name__}: {str(err).strip()[:80]})"
    if info.frames == 0 or info.samplerate <= 0:
        return 0.0, "empty"
    if info.duration < min_seconds:
        return info.duration, f"too short ({info.duration:.2f} s < {min_seconds:g} s)"
    return info.duration, None


def warn_unusable(skipped: list[tuple[str, str]], root_hint: str = "") -> None:
    """One warning naming every skipped file and why."""
    if not skipped:
        return
    lines = "\n".join(f"  {path}: {why}" for path, why in skipped)
    warnings.warn(
        f"skipped {len(skipped)} audio file(s){root_hint} that cannot be used:\n{lines}",
        UnusableAudioWarning,
        stacklevel=2,
    )
