"""Faults a long sweep meets: diverging training, bad audio files."""

import shutil

import numpy as np
import optuna
import pandas as pd
import pytest
import soundfile as sf
from mlflow import MlflowClient

from sweep.launch import main
from sweep.objective import SURROGATE
from sweep.tracking import ROLE_TAG


def test_diverging_trials_end_cleanly_and_the_searcher_gets_the_surrogate(ray_cluster, tmp_path, monkeypatch):
    """beta = 1e38 overflows the loss at the first step: each trial ends as `diverged`, nothing crashes."""
    monkeypatch.chdir(tmp_path)
    argv = [
        "--space",
        "ar_losses",
        "--set",
        "beta=1e38",
        "--steps",
        "4",
        "--num-samples",
        "2",
        "--experiment",
        "nan",
    ]
    assert main(argv) == 0
    summary = pd.read_csv(tmp_path / "sweep-results" / "nan" / "summary" / "summary.csv")
    assert list(summary["status"]) == ["diverged", "diverged"]
    assert (summary["diverged/step"] == 1).all() and np.isinf(summary["diverged/loss"]).all()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("nan").experiment_id
    children = client.search_runs([experiment], f"tags.`{ROLE_TAG}` = 'trial'")
    assert [c.info.status for c in children] == ["FAILED", "FAILED"]
    assert all(c.data.tags["sweep.status"] == "diverged" for c in children)
    study = optuna.load_study(study_name="nan", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert all(t.values == [SURROGATE, SURROGATE] for t in study.trials)


def test_bad_audio_is_skipped_and_named_and_all_bad_is_an_error(
    tmp_path, monkeypatch, capsys, corpus_dir, codec
):
    """Corrupt FLAC, zero-byte file, 0.3 s clip, text posing as audio and a stereo 48 kHz WAV."""
    from sweep.data import UnusableAudioWarning, discover_audio
    from sweep.features import build_feature_cache

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "corrupt.flac").write_bytes(b"fLaC" + bytes(range(256)) * 4)
    (bad / "empty.wav").write_bytes(b"")
    sf.write(bad / "short.wav", np.zeros(int(0.3 * 16000), dtype=np.float32), 16000)
    (bad / "fake.wav").write_text("not audio")
    (bad / "notes.txt").write_text("not audio either, and not even named like it")
    monkeypatch.chdir(tmp_path)
    assert main(["--space", "beta_dim", "--data", "bad"]) == 2  # before Ray, MLflow or the cache start
    err = capsys.readouterr().err
    assert "none of its 4 audio files is usable" in err
    for name in ("corrupt.flac", "empty.wav", "short.wav", "fake.wav"):
        assert name in err
    assert not (tmp_path / "mlflow.db").exists()

    mixed = tmp_path / "mixed"
    shutil.copytree(bad, mixed)
    for f in discover_audio(corpus_dir)[:4]:
        audio, rate = sf.read(f.path)
        audio = np.repeat(audio, 48000 // rate)  # the same speech at 48 kHz (LibriSpeech is 16 kHz)
        sf.write(mixed / f"{f.path.stem}.wav", np.stack([audio, 0.5 * audio], axis=1), 48000)  # stereo
    with pytest.warns(UnusableAudioWarning) as caught:
        cache = build_feature_cache(discover_audio(mixed), codec, tmp_path / "cache", progress=False)
    assert len(cache) == 4  # the usable ones: mixed down, resampled to 24 kHz
    assert all(cache.audio(i).ndim == 1 for i in range(4))
    message = str(caught[0].message)
    assert len(caught) == 1 and "skipped 4 audio file(s)" in message
    for name in ("corrupt.flac", "empty.wav", "short.wav", "fake.wav"):
        assert name in message
