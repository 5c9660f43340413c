"""Rollout audio (docs/science.md §4): hear what an L-step free-running rollout does to speech.

    written = write_rollout_audio(examples, mdn1, decode, "out/audio")
    # out/audio/<utt>_orig.wav, <utt>_recon.wav, <utt>_roll01.wav ... <utt>_roll16.wav, rollouts.json
    audio_levels(written)      # file, peak, clipped: one row per WAV

For each utterance (latents z of shape (T, D)): s = floor(T / 3); frames [s, s + L) are replaced by
MDN_1's free-running rollout from the true context before s, and the whole modified sequence is
decoded. Nothing is spliced: what the decoder does after the window, with the rolled-out frames in
its context, stays audible, as in the research's listening tests (Mimi's decoder is causal, so the
samples before the window are the plain reconstruction's). 24 kHz mono 16-bit PCM WAV, written with
soundfile; samples beyond [-1, 1] are clipped on writing, and each WAV's peak and clipped fraction
are reported beside it.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch

from models.mdn import MDN
from models.spec import FRAME_SIZE, SAMPLE_RATE

ROLLOUT_LENGTHS = (1, 2, 4, 8, 16)
ROLLOUT_WINDOWS = "rollouts.json"  # beside the WAVs: {name: {"start_frame", "lengths", ...}}


@dataclass
class AudioExample:
    utterance_id: str
    latents: np.ndarray  # (T, D) posterior means
    audio: np.ndarray  # (T * 1920,) original audio at 24 kHz


def rollout_latents(
    mdn1: MDN, latents: np.ndarray, start: int, length: int, feedback: str = "mean", seed: int = 0
) -> np.ndarray:
    """(T, D) latents with frames [start, start + length) replaced by MDN_1's free-running rollout
    from the true context frames [start - W, start)."""
    w, t = mdn1.context, len(latents)
    if start < w or start + length > t:
        raise ValueError(
            f"a rollout of {length} frames at frame {start} needs {w} frames before it and fits in {t}."
        )
    model = _float64(mdn1)
    device = next(model.parameters()).device
    state = torch.as_tensor(latents[start - w : start], dtype=torch.float64, device=device)[None]  # (1, W, D)
    generator = torch.Generator(device=device).manual_seed(seed)
    out = latents.copy()
    with torch.no_grad():
        for k in range(length):
            nxt = model.mean(state) if feedback == "mean" else model.sample(state, generator)  # (1, D)
            out[start + k] = nxt[0].cpu().numpy()
            state = torch.cat([state[:, 1:], nxt[:, None]], dim=1)
    return out


@dataclass
class WrittenAudio:
    path: Path
    peak: float  # largest |sample| before clipping
    clipped: float  # fraction of samples beyond [-1, 1], clipped on writing


def write_rollout_audio(
    examples: Sequence[AudioExample],
    mdn1: MDN,
    decode: Callable[[np.ndarray], np.ndarray],
    out_dir: str | Path,
    lengths: Sequence[int] = ROLLOUT_LENGTHS,
    feedback: str = "mean",
    seed: int = 0,
) -> list[WrittenAudio]:
    """Write orig, recon and one rollout WAV per length for each example; returns what was written.
    `decode` maps (T, D) latents to (T * 1920,) audio. Lengths that do not fit an utterance are skipped."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, mdn1, windows = [], _float64(mdn1), {}
    for ex in examples:
        name = safe_name(ex.utterance_id)
        written += [
            write_wav(out_dir / f"{name}_orig.wav", ex.audio),
            write_wav(out_dir / f"{name}_recon.wav", decode(ex.latents)),
        ]
        start = max(len(ex.latents) // 3, mdn1.context)
        windows[name] = {"utterance_id": ex.utterance_id, "start_frame": start, "lengths": []}
        for length in lengths:
            if start + length > len(ex.latents):
                continue
            rolled = rollout_latents(mdn1, ex.latents, start, length, feedback, seed)
            written.append(write_wav(out_dir / f"{name}_roll{length:02d}.wav", decode(rolled)))
            windows[name]["lengths"].append(length)
    # where each rollout begins, for the sweep's listening page (sweep/listening.py) to clip around it
    (out_dir / ROLLOUT_WINDOWS).write_text(json.dumps({"samples_per_frame": FRAME_SIZE, **windows}))
    return written


def audio_levels(written: Sequence[WrittenAudio]) -> pd.DataFrame:
    """| file | peak | clipped |: one row per WAV, clipped as a fraction of its samples."""
    rows = [{"file": w.path.name, "peak": w.peak, "clipped": w.clipped} for w in written]
    return pd.DataFrame(rows, columns=["file", "peak", "clipped"])


def vae_decoder(
    vae: torch.nn.Module, device: torch.device | str = "cpu"
) -> Callable[[np.ndarray], np.ndarray]:
    """A `decode` for write_rollout_audio from a BetaVAE: (T, D) latents -> (T * 1920,) audio, fp32."""

    @torch.no_grad()
    def decode(latents: np.ndarray) -> np.ndarray:
        z = torch.as_tensor(latents, dtype=torch.float32, device=device).T[None]  # (1, D, T)
        return vae.decode(z)[0, 0].float().cpu().numpy()

    return decode


def codec_decoder(
    codec: torch.nn.Module, device: torch.device | str = "cpu"
) -> Callable[[np.ndarray], np.ndarray]:
    """A `decode` from a codec ((B, 512, F) -> (B, 1, F * 1920)): (F, 512) latents -> audio, fp32."""

    @torch.no_grad()
    def decode(latents: np.ndarray) -> np.ndarray:
        x = np.array(latents, dtype=np.float32)  # a copy: the feature cache's memmaps are read-only
        x = torch.from_numpy(x).to(device).T[None]  # (1, 512, F)
        return codec.decode(x)[0, 0].float().cpu().numpy()

    return decode


def _float64(mdn: MDN) -> MDN:
    """A float64 eval-mode copy (scoring precision), or `mdn` itself if it already is one."""
    if next(mdn.parameters()).dtype == torch.float64:
        return mdn
    return copy.deepcopy(mdn).double().eval()


def safe_name(utterance_id: str) -> str:
    """A file name from an utterance id: letters, digits, '.', '_' and '-' only, never a path."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", utterance_id).lstrip(".")
    return name or "utterance"


def write_wav(path: Path, audio: np.ndarray) -> WrittenAudio:
    """24 kHz mono 16-bit PCM; samples beyond [-1, 1] clipped, and how many were, reported."""
    audio = np.asarray(audio, dtype=np.float32)
    over = np.abs(audio)
    sf.write(path, np.clip(audio, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16")
    return WrittenAudio(path, float(over.max(initial=0.0)), float((over > 1.0).mean()) if len(audio) else 0.0)
