"""Faults a long sweep meets: diverging training, bad audio files."""

import shutil
import time

import numpy as np
import optuna
import pandas as pd
import pytest
import soundfile as sf
from helpers import launch, trial_reports
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


@pytest.mark.parametrize("helpers", ["processes", "threads"])
def test_a_preparation_that_fails_after_the_trials_started_stops_the_sweep_with_its_reason(
    ray_cluster, tmp_path, monkeypatch, capsys, helpers
):
    """The trials start while the driver prepares their data (sweep/gate.py), in a process of its own
    (or a thread: --without helper-processes). Where preparing fails, the trials waiting at the gate end
    without training, Tune stops, and the reason is the one line (exit 2)."""
    monkeypatch.setattr("sweep.driver.PREPARE", "helpers:prepare_fails_once_a_trial_started")
    monkeypatch.chdir(tmp_path)
    argv = ["--space", "beta_dim", "--steps", "4", "--num-samples", "3", "--experiment", "unprepared"]
    argv += ["--without", "helper-processes"] if helpers == "threads" else []
    assert main(argv) == 2
    assert "needs at least 2 speakers, found 1" in capsys.readouterr().err
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("unprepared").experiment_id])
    assert [(r.data.tags[ROLE_TAG], r.info.status) for r in runs] == [("sweep", "FAILED")]  # no trial's run
    assert all(not rows for rows in trial_reports(tmp_path / "sweep-results" / "unprepared").values())


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


def test_uis_bind_loopback_and_anything_else_is_warned_about():
    from sweep.console import exposure_warning
    from sweep.launch import parse_args

    assert parse_args(["--space", "beta_dim"]).dashboard_host == "127.0.0.1"
    assert exposure_warning("Ray's dashboard", "127.0.0.1") is None
    warning = exposure_warning("Ray's dashboard", "0.0.0.0")
    assert "0.0.0.0" in warning and "no authentication" in warning and "ssh" in warning


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "x" * 200, "semi;colon"])
def test_experiment_names_never_become_paths(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--space", "beta_dim", "--experiment", name, "--dry-run"]) == 2
    assert "letters, digits" in capsys.readouterr().err


def test_no_code_runs_from_untrusted_input():
    """Guards on the source: no shell=True, no trust_remote_code, checkpoints with weights_only=True,
    YAML only through safe_load, no unpickling but the gate's."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sources = {
        p: p.read_text()
        for folder in ("sweep", "models", "evaluation")
        for p in (root / folder).rglob("*.py")
    }
    loader = "torch" + ".load("  # spelled apart so that this guard does not match itself
    # Two unpicklings, both at the gate, of what this sweep's own processes wrote: the entry the driver put
    # into Ray's own store, and in it the trials' context as the driver's preparing process sealed it (Ray
    # moves everything between its driver and its workers pickled, the same way; so does the pipe between
    # the driver and its helper processes, sweep/process_call.py).
    trusted = {root / "sweep" / "gate.py": 2}
    for path, text in sources.items():
        assert "shell=True" not in text, path
        assert "trust_remote_code=True" not in text, path
        assert "yaml.load(" not in text and text.count("pickle.load") == trusted.get(path, 0), path
        for line in text.splitlines():
            if loader in line:
                assert "weights_only=True" in line, (path, line)
    assert any(loader in t for t in sources.values())  # the check above checked something


def test_utterance_ids_cannot_steer_wav_paths():
    from evaluation.audio import safe_name

    for hostile in ("../../etc/passwd", "/abs/path", "a\\b", "..", ""):
        name = safe_name(hostile)
        assert "/" not in name and "\\" not in name and name not in ("", ".", "..")


@pytest.mark.slow
def test_killed_trial_worker_is_retried_from_its_checkpoint(tmp_path):
    """SIGKILL to a trial's process mid-training: Tune retries it (FailureConfig) from its last
    checkpoint, in the same MLflow child run (sweep.attempt = 2), and the sweep completes."""
    import os
    import signal

    driver = launch(tmp_path, "--space", "beta_dim", "--steps", "100", "--num-samples", "2",
                    "--experiment", "kill-worker", "--no-dashboard")  # fmt: skip
    experiment = tmp_path / "sweep-results" / "kill-worker"
    deadline, victim = time.monotonic() + 300, None
    while victim is None:
        assert driver.poll() is None and time.monotonic() < deadline, (tmp_path / "driver.log").read_text()[
            -3000:
        ]
        for name, rows in trial_reports(experiment).items():
            if rows and rows[-1].get("checkpoint_dir_name") and rows[-1]["step"] < 80:
                # the step the checkpoint holds: periodic checkpoints are written beside training and
                # handed to Tune with the report after that, so it can be earlier than the report's
                victim = (name, rows[-1]["pid"], rows[-1]["checkpoint/step"])
                break
        time.sleep(0.3)
    os.kill(victim[1], signal.SIGKILL)
    assert driver.wait(timeout=600) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    assert "2 trials: 2 completed; 1 restarted after a failure." in (tmp_path / "driver.log").read_text()

    rows = trial_reports(experiment)[victim[0]]
    pids = [r["pid"] for r in rows]
    assert len(set(pids)) == 2 and rows[-1]["status"] == "completed"
    first_after = next(r for r in rows if r["pid"] != victim[1])
    assert first_after["step"] > victim[2] > 0  # resumed after the checkpoint it had, not from step 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    children = client.search_runs(
        [client.get_experiment_by_name("kill-worker").experiment_id], f"tags.`{ROLE_TAG}` = 'trial'"
    )
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    assert sorted(c.data.tags["sweep.attempt"] for c in children) == ["1", "2"]
