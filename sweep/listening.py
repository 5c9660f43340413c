"""The sweep's listening page: every completed trial's rollouts beside the original speech and the
codec's own reconstruction, with the trial's numbers and the sweep's plots, in one HTML file.

    page = write_listening_page(frame, experiment_dir, folder, "beta_dim-smoke-...", plots)
    # folder/listening.html; also on the sweep's parent run in MLflow (its artifact view plays it)
    python -m sweep.report <experiment>      # rebuilds it from Tune's storage, serves it on 127.0.0.1

Rows are trials (`t007`), best first in the summary's order (completed and feasible first, then the
k=4 rollout objective). A reference row on top holds the original and the codec's own reconstruction
(encode -> decode, no bottleneck: what the VAE's reconstruction is measured against), written once
per sweep by the driver (write_reference_clips, into folder/reference_audio/). The trials' columns:
the VAE's reconstruction and its rollouts L = 1, 2, 4, 8, 16 (frames [s, s + L) replaced by MDN_1's
free-running rollout, evaluation/audio.py). Every player of an utterance holds the same stretch: from
1 s before the rollout window to 1 s after the longest rollout, so columns compare at one instant.
The clips are MP3 (~50 kbit/s) inside the page as data: URIs: no server, no script, a few MB.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from evaluation.audio import ROLLOUT_LENGTHS, ROLLOUT_WINDOWS, safe_name, write_wav
from evaluation.report import GATE_HORIZON, GATES
from models.spec import FRAME_SIZE, SAMPLE_RATE
from sweep import storage
from sweep.objective import COMPLETED, ROLLOUT_OBJECTIVE

log = logging.getLogger(__name__)

PAGE_FILE = "listening.html"
REFERENCE_AUDIO = "reference_audio"  # in the summary folder: <utterance>_codec.wav
PAGE_UTTERANCES = 2  # utterances per row; each trial wrote rollouts for the preset's audio_utterances
MARGIN_S = 1.0  # clip from this long before the rollout window to this long after the longest rollout
TRIAL_CLIPS = (
    ("recon", "VAE reconstruction"),
    *((f"roll{n:02d}", f"rollout L={n}") for n in ROLLOUT_LENGTHS),
)
NUMBERS = (  # (column, shown as): what the row's trial measured
    (ROLLOUT_OBJECTIVE, "objective (k=4 rollout, nats/dim)"),
    (f"rollout/k{GATE_HORIZON}", "k=4 rollout delta-NLL (nats/frame)"),
    ("teacher/k1", "teacher k=1 delta-NLL"),
    ("recon/mel", "recon/mel"),
    ("recon/l1", "recon/l1"),
)


def write_reference_clips(
    decode: Callable[[np.ndarray], np.ndarray], utterances: Sequence[tuple[str, np.ndarray]], folder: Path
) -> list[Path]:
    """The codec's own reconstruction of each (utterance id, (T, 512) codec latents): the page's
    reference row. `decode`: evaluation.audio.codec_decoder."""
    out = folder / REFERENCE_AUDIO
    out.mkdir(parents=True, exist_ok=True)
    return [write_wav(out / f"{safe_name(uid)}_codec.wav", decode(z)).path for uid, z in utterances]


def write_listening_page(
    frame: pd.DataFrame,
    experiment_dir: str,
    folder: Path,
    title: str,
    plots: Sequence[Path] = (),
    utterances: int = PAGE_UTTERANCES,
) -> Path | None:
    """folder/listening.html from the completed trials of `frame` (summary.results_frame, in its order)
    and their WAVs in Tune's storage (experiment_dir/<trial>/evaluation/audio); None without any."""
    trials = frame[frame["status"] == COMPLETED].to_dict("records")
    audio = {t["trial"]: storage.join(experiment_dir, t["trial"], "evaluation", "audio") for t in trials}
    windows = {trial: _windows(path) for trial, path in audio.items()}
    names = next((list(w)[:utterances] for w in windows.values() if w), [])
    if not names:
        log.info("no listening page: no completed trial wrote rollout audio")
        return None
    first = next(t for t, w in windows.items() if w)
    wanted = {**{_wav(audio[first], n, "orig"): windows[first][n] for n in names},
              **{_codec_wav(folder, n): windows[first][n] for n in names},
              **{_wav(audio[t], n, kind): windows[t].get(n)
                 for t in audio for n in names for kind, _ in TRIAL_CLIPS}}  # fmt: skip
    with ThreadPoolExecutor(min(16, os.cpu_count() or 1)) as pool:  # libsndfile encodes without the GIL
        clips = dict(zip(wanted, pool.map(_clip, wanted, wanted.values()), strict=True))
    rows = [_reference_row(n, audio[first], folder, clips) for n in names]
    for metrics in trials:
        rows += _trial_rows(metrics, names, audio[metrics["trial"]], clips)
    header = "".join(f"<th>{html.escape(label)}</th>" for _, label in TRIAL_CLIPS)
    figures = "".join(f"<figure><img alt='{p.stem}' src='{_data_uri(p.read_bytes(), 'image/png')}'>"
                      f"<figcaption>{p.name}</figcaption></figure>" for p in plots if p.exists())  # fmt: skip
    page = _PAGE.format(
        title=html.escape(title), header=header, rows="\n".join(rows), figures=figures,
        margin=MARGIN_S, longest=max(ROLLOUT_LENGTHS), frame_ms=1000 * FRAME_SIZE // SAMPLE_RATE,
    )  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / PAGE_FILE
    path.write_text(page)
    log.info("listening page: %s (%.1f MB, %d trials)", path, path.stat().st_size / 1e6, len(trials))
    return path


def _reference_row(name: str, trial_audio: str, folder: Path, clips: dict) -> str:
    original, codec = clips[_wav(trial_audio, name, "orig")], clips[_codec_wav(folder, name)]
    return (
        "<tr class='reference'><th>reference</th><td>the original; the codec's own reconstruction "
        f"(encode -> decode, no bottleneck)</td><td>{html.escape(name)}</td><td>{_player(original)}</td>"
        f"<td>{_player(codec)}</td>{_BLANK * len(TRIAL_CLIPS)}</tr>"
    )


def _trial_rows(metrics: dict, names: list[str], trial_audio: str, clips: dict) -> list[str]:
    """One row per utterance; the trial's name and numbers span them. clips: {WAV path: MP3 bytes}."""
    span = len(names)
    head = (
        f"<th rowspan='{span}'>{html.escape(metrics['trial'])}<br><small>{html.escape(str(metrics['label']))}"
        f"</small></th><td rowspan='{span}' class='numbers'>{_numbers(metrics)}</td>"
    )
    rows = []
    for i, name in enumerate(names):
        cells = "".join(f"<td>{_player(clips[_wav(trial_audio, name, k)])}</td>" for k, _ in TRIAL_CLIPS)
        rows.append(f"<tr>{head if i == 0 else ''}<td>{html.escape(name)}</td>{_BLANK * 2}{cells}</tr>")
    return rows


def _wav(trial_audio: str, name: str, kind: str) -> str:
    """A trial's WAV of utterance `name`: orig, recon, roll01, ... (evaluation/audio.py's names)."""
    return storage.join(trial_audio, f"{name}_{kind}.wav")


def _codec_wav(folder: Path, name: str) -> str:
    """The codec's own reconstruction of utterance `name` (write_reference_clips)."""
    return str(folder / REFERENCE_AUDIO / f"{name}_codec.wav")


def _windows(audio_folder: str) -> dict:
    """{utterance file name: {"start_frame": s, ...}} from the trial's rollouts.json ({} without it)."""
    path = storage.join(audio_folder, ROLLOUT_WINDOWS)
    if not storage.exists(path):
        return {}
    return {k: v for k, v in json.loads(storage.read_text(path)).items() if isinstance(v, dict)}


def _clip(path: str, window: dict | None) -> bytes | None:
    """The stretch around the rollout window of the WAV at `path`, as MP3 bytes (None if absent)."""
    if window is None or not storage.exists(path):
        return None
    audio, rate = sf.read(io.BytesIO(storage.read_bytes(path)), dtype="float32")
    start = window["start_frame"] * FRAME_SIZE
    begin = max(0, start - round(MARGIN_S * rate))
    end = min(len(audio), start + max(ROLLOUT_LENGTHS) * FRAME_SIZE + round(MARGIN_S * rate))
    out = io.BytesIO()
    sf.write(out, audio[begin:end], rate, format="MP3", compression_level=0.5)
    return out.getvalue()


def _player(clip: bytes | None) -> str:
    if clip is None:
        return "<span class='missing'>not recorded</span>"
    return f"<audio controls src='{_data_uri(clip, 'audio/mpeg')}'></audio>"


def _numbers(metrics: dict) -> str:
    lines = [f"{label}: {_fmt(metrics.get(column))}" for column, label in NUMBERS]
    gates = [f"{gate}: {'passes' if passes(metrics, GATE_HORIZON) else 'no'}" for gate, _, passes in GATES]
    feasible = "yes" if metrics.get("feasible") else "no (recon over the constraint)"
    return "<br>".join(html.escape(x) for x in [*lines, *gates, f"counts (recon constraint): {feasible}"])


def _fmt(value) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return f"{number:.3f}" if math.isfinite(number) else str(number)


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


_BLANK = "<td class='blank'></td>"
_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Listening: {title}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #ccc; padding: 6px; vertical-align: top; text-align: left; }}
thead th {{ position: sticky; top: 0; background: #f4f4f4; z-index: 1; }}
tr.reference td, tr.reference th {{ background: #fbf7e8; }}
td.blank {{ background: #fafafa; }}
td.numbers {{ font-size: 12px; white-space: nowrap; }}
audio {{ height: 30px; width: 140px; }}
.missing {{ color: #999; font-size: 12px; }}
figure {{ display: inline-block; margin: 1em 1em 0 0; }} img {{ max-width: 640px; }}
</style></head>
<body>
<h1>Listening: {title}</h1>
<p>Each player holds the same stretch of its utterance: from {margin:g} s before the rollout window to
{margin:g} s after its longest rollout ({longest} frames of {frame_ms} ms). In a rollout of L frames,
frames [s, s + L) are MDN_1's free-running prediction from the true frames before s; what the decoder
does after the window stays audible. Rows are trials, best first (the summary's order); the reference
rows on top hold the original and the codec's own reconstruction of the same utterances.</p>
<table>
<thead><tr><th>trial</th><th>numbers</th><th>utterance</th><th>original</th><th>codec only</th>
{header}</tr></thead>
<tbody>
{rows}
</tbody></table>
{figures}
</body></html>
"""
