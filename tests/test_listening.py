"""The sweep's listening page (sweep/listening.py) from trial folders laid out as trials write them."""

import base64
import io
import json
import re

import numpy as np
import pandas as pd
import soundfile as sf

from sweep.listening import PAGE_FILE, REFERENCE_AUDIO, write_listening_page

RATE, FRAME = 24_000, 1920
START, FRAMES = 40, 150  # the rollout window starts at frame 40 of a 12 s utterance


def _tone_in_window(level: float = 0.5) -> np.ndarray:
    """Silence but for a tone over frames [START, START + 16): where the page must centre its clips."""
    audio = np.zeros(FRAMES * FRAME, dtype=np.float32)
    t = np.arange(16 * FRAME) / RATE
    audio[START * FRAME : (START + 16) * FRAME] = level * np.sin(2 * np.pi * 440 * t)
    return audio


UTTERANCES = ("u1", "u2")  # the page's two per trial, as the paper preset's trials write them


def _trial_folder(root, trial, kinds):
    audio = root / trial / "evaluation" / "audio"
    audio.mkdir(parents=True)
    for name in UTTERANCES:
        for kind in kinds:
            sf.write(audio / f"{name}_{kind}.wav", _tone_in_window(), RATE, subtype="PCM_16")
    windows = {"samples_per_frame": FRAME}
    windows |= {name: {"utterance_id": name, "start_frame": START, "lengths": []} for name in UTTERANCES}
    (audio / "rollouts.json").write_text(json.dumps(windows))


def _frame():
    metrics = {"objective/rollout_k4": -0.5, "rollout/k4": -8.0, "teacher/k1": -9.0, "recon/mel": 3.0,
               "recon/l1": 0.1, "rollout/finite/k4": 1.0}  # fmt: skip
    return pd.DataFrame([
        {"trial": "t002", "label": "beta=0.1 <dim>", "status": "completed", "feasible": True, **metrics},
        {"trial": "t001", "label": "beta=0.01", "status": "completed", "feasible": False,
         **metrics, "objective/rollout_k4": 0.2, "rollout/k4": 4.0},
        {"trial": "t003", "label": "beta=1", "status": "stopped early", "feasible": False},
    ])  # fmt: skip


def test_the_page_holds_each_completed_trials_clips_around_its_rollout_window_best_first(tmp_path):
    experiment, summary = tmp_path / "exp", tmp_path / "exp" / "summary"
    kinds = ["orig", "recon", "roll01", "roll02", "roll04", "roll08", "roll16"]
    _trial_folder(experiment, "t002", kinds)
    _trial_folder(experiment, "t001", kinds[:-1])  # no L=16 rollout: "not recorded"
    (summary / REFERENCE_AUDIO).mkdir(parents=True)
    for name in UTTERANCES:
        sf.write(summary / REFERENCE_AUDIO / f"{name}_codec.wav", _tone_in_window(), RATE, subtype="PCM_16")

    page = write_listening_page(_frame(), str(experiment), summary, "a sweep")
    assert page == summary / PAGE_FILE
    text = page.read_text()
    assert text.index(">t002<") < text.index(">t001<") and ">t003<" not in text  # completed, in order
    assert "beta=0.1 &lt;dim&gt;" in text  # labels are escaped
    assert "strict gate: passes" in text and "strict gate: no" in text  # t002 informative, t001 not
    assert "counts (recon constraint): no" in text
    assert text.count("not recorded") == 2  # t001's L=16 of each utterance
    clips = re.findall(r"data:audio/mpeg;base64,([A-Za-z0-9+/=]+)", text)
    assert len(clips) == 2 * (
        2 + 6 + 5
    )  # per utterance: reference (original, codec), t002's six, t001's five
    for clip in clips:
        audio, rate = sf.read(io.BytesIO(base64.b64decode(clip)))
        assert rate == RATE and abs(len(audio) / rate - (1 + 16 * 0.08 + 1)) < 0.1  # 1 s each side
        inside, outside = audio[int(1.05 * rate) : int(2.2 * rate)], audio[: int(0.9 * rate)]
        assert np.sqrt(np.mean(inside**2)) > 0.2 and np.sqrt(np.mean(outside**2)) < 0.02  # the window
    assert page.stat().st_size < 1_000_000  # MP3 clips: ~30 KB each


def test_no_page_without_a_completed_trial_that_wrote_audio(tmp_path):
    frame = _frame().assign(status="stopped early")
    assert write_listening_page(frame, str(tmp_path), tmp_path / "summary", "a sweep") is None
    assert not (tmp_path / "summary" / PAGE_FILE).exists()
