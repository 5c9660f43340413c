"""The feature cache: the frozen Mimi encoder's latents (and the 24 kHz audio) of every utterance,
computed once and shared by every trial and every later run on the same data and codec.

    cache = build_feature_cache(files, codec, ".cache/features")   # a hit costs a few reads
    cache.latents(i)   # (F_i, 512) float32, memory-mapped
    cache.audio(i)     # (F_i * 1920,) float32, memory-mapped
    sampler = CropSampler(cache, train_ids, crop_frames=50, batch_size=4, seed=0)
    batch = sampler.batch(step)                                     # models.training.Batch

Layout of one entry, `<root>/<key>/`: audio.f32 and latents.f32 (raw little-endian float32, one
utterance after another), index.json (per utterance: id, speaker, path, offsets, lengths),
meta.json (what the key was made of, file sizes and blake2b digests, skipped files), written
last: an entry without it, or whose files do not match it, is incomplete or corrupt and is rebuilt.
The key hashes the file list with sizes and mtimes, the codec's identity and config, and the
sample rate, so changing any of them makes a new entry rather than reusing a stale one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from models.codec import SAMPLE_RATE, MimiCodec, config_digest
from models.training import Batch
from sweep.corpus import write_corpus
from sweep.data import (
    AudioFile,
    DataError,
    discover_audio,
    probe_audio,
    read_audio,
    select_utterances,
    split_by_speaker,
    warn_unusable,
)

log = logging.getLogger(__name__)

CACHE_VERSION = 1
AUDIO_FILE, LATENTS_FILE, INDEX_FILE, META_FILE = "audio.f32", "latents.f32", "index.json", "meta.json"
DEFAULT_MIN_SECONDS = 4.0


@dataclass(frozen=True)
class CachedUtterance:
    utterance_id: str
    speaker: str
    path: str
    audio_offset: int  # in samples
    num_frames: int  # latent frames; the audio holds num_frames * 1920 samples
    latent_offset: int  # in frames


class FeatureCache:
    """A complete cache entry, memory-mapped read-only."""

    def __init__(self, directory: str | os.PathLike, verify: bool = True):
        self.directory = Path(directory)
        self.meta = json.loads((self.directory / META_FILE).read_text())
        self.utterances = [
            CachedUtterance(**u) for u in json.loads((self.directory / INDEX_FILE).read_text())
        ]
        problem = _entry_problem(self.directory, self.meta, full=verify)
        if problem:
            raise ValueError(f"feature cache {self.directory} is damaged: {problem}")
        frame_size, dim = self.meta["frame_size"], self.meta["latent_dim"]
        total_frames = sum(u.num_frames for u in self.utterances)
        self._audio = np.memmap(
            self.directory / AUDIO_FILE, np.float32, "r", shape=(total_frames * frame_size,)
        )
        self._latents = np.memmap(self.directory / LATENTS_FILE, np.float32, "r", shape=(total_frames, dim))
        self.frame_size = frame_size

    def __len__(self) -> int:
        return len(self.utterances)

    def audio(self, i: int) -> np.ndarray:
        """(F * 1920,) float32 at 24 kHz."""
        u = self.utterances[i]
        return self._audio[u.audio_offset : u.audio_offset + u.num_frames * self.frame_size]

    def latents(self, i: int) -> np.ndarray:
        """(F, 512) float32: the frozen encoder's pre-quantizer latents, frame by frame."""
        u = self.utterances[i]
        return self._latents[u.latent_offset : u.latent_offset + u.num_frames]

    def ids_for(self, files: list[AudioFile]) -> list[int]:
        """Indices of the cached utterances among `files` (skipped files have none)."""
        wanted = {str(f.path) for f in files}
        return [i for i, u in enumerate(self.utterances) if u.path in wanted]


def cache_key(files: list[AudioFile], codec: MimiCodec, min_seconds: float) -> tuple[str, dict]:
    """(hex key, the material it hashes): file paths, sizes and mtimes; codec identity and config."""
    material = {
        "version": CACHE_VERSION,
        "sample_rate": SAMPLE_RATE,
        "min_seconds": min_seconds,
        "codec": codec.spec.fingerprint(),
        "codec_config": config_digest(codec.config),
        "files": [(str(f.path), f.path.stat().st_size, f.path.stat().st_mtime_ns) for f in files],
    }
    digest = hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()
    return digest[:24], material


@dataclass(frozen=True)
class PreparedData:
    """A corpus ready for trials: its feature cache and the speaker-disjoint split, as cache ids."""

    cache: FeatureCache
    train_ids: list[int]
    eval_ids: list[int]


def prepare_data(
    data: str | os.PathLike,
    codec: MimiCodec,
    cache_root: str | os.PathLike,
    *,
    max_utterances: int = 5000,
    min_seconds: float = DEFAULT_MIN_SECONDS,
    seed: int = 0,
    device: torch.device | str = "cpu",
    write_bundled: bool = False,
) -> PreparedData:
    """Corpus -> utterances -> speaker-disjoint split -> feature cache, the one way the driver, the
    one-trial smoke run and the benchmark do it. `write_bundled`: an absent `data` folder gets the bundled
    speech first. DataError when a split ends up empty."""
    data = Path(data)
    if write_bundled and not data.exists():
        written = write_corpus(data)
        log.info("wrote the bundled smoke corpus (%d utterances) to %s", len(written), data)
    files = select_utterances(discover_audio(data), max_utterances)
    train_files, eval_files = split_by_speaker(files, seed=seed)
    cache = build_feature_cache(files, codec, cache_root, min_seconds=min_seconds, device=device)
    train_ids, eval_ids = cache.ids_for(train_files), cache.ids_for(eval_files)
    if not train_ids or not eval_ids:
        raise DataError(
            f"{data}: after skipping unusable files, the train or eval split is empty; add speakers."
        )
    return PreparedData(cache, train_ids, eval_ids)


def build_feature_cache(
    files: list[AudioFile],
    codec: MimiCodec,
    root: str | os.PathLike,
    min_seconds: float = DEFAULT_MIN_SECONDS,
    device: torch.device | str = "cpu",
    batch_size: int = 8,
    progress: bool = True,
) -> FeatureCache:
    """The cache entry for (files, codec): loaded if present and intact, else (re)built.

    Unusable files (unreadable, empty, shorter than `min_seconds`) are skipped and listed in one
    warning; if none is usable, DataError. Built in a temporary folder, then renamed into place.
    """
    key, material = cache_key(files, codec, min_seconds)
    directory = Path(root).expanduser() / key
    if (directory / META_FILE).is_file():
        try:
            cache = FeatureCache(directory)
        except (ValueError, OSError, KeyError, TypeError, json.JSONDecodeError) as err:
            log.warning("rebuilding feature cache %s: %s", directory, err)
        else:
            log.info("feature cache hit: %s (%d utterances)", directory, len(cache))
            warn_unusable([tuple(s) for s in cache.meta["skipped"]], " (cached list)")
            return cache
    return _build(files, codec, directory, material, min_seconds, torch.device(device), batch_size, progress)


def _build(files, codec, directory, material, min_seconds, device, batch_size, progress) -> FeatureCache:
    started = time.perf_counter()
    usable, skipped = [], []
    for f in files:
        duration, problem = probe_audio(f.path, min_seconds)
        if problem:
            skipped.append((str(f.path), problem))
        else:
            usable.append((duration, f))
    usable = [f for _, f in sorted(usable, key=lambda pair: pair[0])]  # similar lengths batch together

    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    writer = _EntryWriter(tmp, codec.frame_size)
    codec = codec.to(device).eval()
    min_frames = int(min_seconds * codec.frame_rate)
    bar = tqdm(total=len(usable), desc="encoding features", unit="utt", disable=not progress)
    for start in range(0, len(usable), batch_size):
        chunk = usable[start : start + batch_size]
        loaded = []
        for f in chunk:
            try:
                audio = read_audio(f.path)
            except Exception as err:  # corrupt data past a valid header
                skipped.append((str(f.path), f"unreadable ({type(err).__name__}: {str(err).strip()[:80]})"))
                continue
            frames = len(audio) // codec.frame_size
            if frames < max(min_frames, 1):
                skipped.append((str(f.path), f"too short ({len(audio) / SAMPLE_RATE:.2f} s)"))
                continue
            loaded.append((f, audio[: frames * codec.frame_size]))
        if loaded:
            writer.add(loaded, _encode_padded([a for _, a in loaded], codec, device))
        bar.update(len(chunk))
    bar.close()

    warn_unusable(skipped, f" of {len(files)}")
    if writer.count == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(
            f"none of the {len(files)} audio files is usable (each must be readable wav/flac of at least "
            f"{min_seconds:g} s); see the warning above for each file's problem, and point --data at speech "
            "recordings such as LibriSpeech's train-clean-100."
        )
    writer.finish(material, skipped, codec_dim=codec.codec_dim)
    if directory.exists():  # a damaged entry, or another process finished first
        shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)
    log.info(
        "built feature cache %s: %d utterances in %.1f s",
        directory,
        writer.count,
        time.perf_counter() - started,
    )
    return FeatureCache(directory, verify=False)


@torch.no_grad()
def _encode_padded(audios: list[np.ndarray], codec: MimiCodec, device: torch.device) -> list[np.ndarray]:
    """Encode utterances of different lengths in one batch, right-padded with zeros. The encoder is
    causal, so padding changes no frame of the shorter ones; each is cut back to its own frames."""
    longest = max(len(a) for a in audios)
    batch = torch.zeros(len(audios), 1, longest)
    for row, audio in enumerate(audios):
        batch[row, 0, : len(audio)] = torch.from_numpy(audio)
    latents = codec.encode(batch.to(device)).float().cpu()  # (B, 512, F_max)
    return [
        latents[row, :, : len(a) // codec.frame_size].T.contiguous().numpy() for row, a in enumerate(audios)
    ]


class _EntryWriter:
    """Appends utterances to the raw files while hashing them; writes index and meta at the end."""

    def __init__(self, directory: Path, frame_size: int):
        self.directory, self.frame_size = directory, frame_size
        self.audio_file = open(directory / AUDIO_FILE, "wb")
        self.latent_file = open(directory / LATENTS_FILE, "wb")
        self.audio_hash, self.latent_hash = hashlib.blake2b(), hashlib.blake2b()
        self.index: list[CachedUtterance] = []
        self.samples = self.frames = 0

    @property
    def count(self) -> int:
        return len(self.index)

    def add(self, loaded: list[tuple[AudioFile, np.ndarray]], latents: list[np.ndarray]) -> None:
        for (f, audio), lat in zip(loaded, latents, strict=True):
            assert len(audio) == len(lat) * self.frame_size
            self.index.append(
                CachedUtterance(f.utterance_id, f.speaker, str(f.path), self.samples, len(lat), self.frames)
            )
            for data, fh, h in (
                (audio, self.audio_file, self.audio_hash),
                (lat, self.latent_file, self.latent_hash),
            ):
                raw = np.ascontiguousarray(data, dtype="<f4").tobytes()
                fh.write(raw)
                h.update(raw)
            self.samples += len(audio)
            self.frames += len(lat)

    def finish(self, material: dict, skipped: list, codec_dim: int) -> None:
        self.audio_file.close()
        self.latent_file.close()
        (self.directory / INDEX_FILE).write_text(json.dumps([asdict(u) for u in self.index]))
        meta = {
            "key_material": material,
            "frame_size": self.frame_size,
            "latent_dim": codec_dim,  # the codec's 512 (a key of cache version 1)
            "sizes": {AUDIO_FILE: self.samples * 4, LATENTS_FILE: self.frames * codec_dim * 4},
            "blake2b": {AUDIO_FILE: self.audio_hash.hexdigest(), LATENTS_FILE: self.latent_hash.hexdigest()},
            "skipped": skipped,
        }
        (self.directory / META_FILE).write_text(json.dumps(meta, indent=1))  # last: marks the entry complete


def _entry_problem(directory: Path, meta: dict, full: bool) -> str | None:
    """What is wrong with an entry's data files (missing, wrong size, wrong digest), or None."""
    for name, size in meta["sizes"].items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, expected {size} (truncated or partly written)"
        if full and _file_digest(path) != meta["blake2b"][name]:
            return f"{name} does not match its recorded blake2b digest"
    return None


def _file_digest(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.blake2b()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


class CropSampler:
    """Random training crops of `crop_frames` frames (aligned to 1920-sample frames) from cached utterances.

    Crops index the whole utterance's cached latents rather than re-encoding the cropped audio.
    The two differ slightly: Mimi's encoder is causal with a 250-frame (20 s) attention window, so a
    frame of the whole-utterance latents has seen up to 20 s of audio before the crop, while an
    encoder run on the crop alone starts from silence. The difference sits in a crop's first frames;
    whole-utterance latents are also what the diagnostics see, so training and evaluation agree.

    Deterministic: batch(step) depends only on (seed, step), so a resumed trial sees the same data.
    Utterances are drawn in proportion to how many crops they hold.
    """

    def __init__(self, cache: FeatureCache, ids: list[int], crop_frames: int, batch_size: int, seed: int = 0):
        self.cache, self.crop_frames, self.batch_size, self.seed = cache, crop_frames, batch_size, seed
        self.ids = [i for i in ids if cache.utterances[i].num_frames >= crop_frames]
        if not self.ids:
            raise DataError(
                f"no utterance holds a crop of {crop_frames} frames; use shorter crops or longer audio."
            )
        room = np.array(
            [cache.utterances[i].num_frames - crop_frames + 1 for i in self.ids], dtype=np.float64
        )
        self.weights = room / room.sum()

    def batch(self, step: int) -> Batch:
        rng = np.random.default_rng((self.seed, step))
        picks = rng.choice(len(self.ids), size=self.batch_size, p=self.weights)
        features, audio = [], []
        fs = self.cache.frame_size
        for pick in picks:
            i = self.ids[pick]
            start = int(rng.integers(0, self.cache.utterances[i].num_frames - self.crop_frames + 1))
            features.append(self.cache.latents(i)[start : start + self.crop_frames].T)  # (512, F)
            audio.append(self.cache.audio(i)[start * fs : (start + self.crop_frames) * fs])
        return Batch(
            features=torch.from_numpy(np.stack(features)),  # (B, 512, F)
            audio=torch.from_numpy(np.stack(audio))[:, None, :],  # (B, 1, F * 1920)
        )
