"""The sweep end to end through Ray Tune, Optuna and MLflow, on the smoke preset with tiny settings."""

import contextlib
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pandas as pd
import pytest
from browser import (
    AUDIO_DURATIONS,
    CHROMIUM,
    chromium,
    close_mlflow_assistant,
    frame_with_audio,
    free_port,
    screenshot,
    ui_server,
)
from helpers import check_trial_folder, folder_bytes, launch_command, trial_reports
from mlflow import MlflowClient

from sweep.launch import main
from sweep.objective import OBJECTIVES, ROLLOUT_OBJECTIVE
from sweep.tracking import PARENT_TAG, ROLE_TAG, TRIAL_TAG

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
CHILD_METRICS = (
    *("rollout/k4", "teacher/k1", "gap/k4", "rollout/horizon", "injection/D_rollout/cos", "recon/mel"),
    *("recon/l1", "objective/rollout_k4", "rollout/k4_per_dim", "train/loss"),
)
CHILD_TAGS = ("git.commit", "data.fingerprint", "codec.id", "codec.revision", "seed", "sweep.trial_name")


@pytest.fixture(scope="module")
def smoke_sweep(ray_cluster, tmp_path_factory):
    """4 Optuna trials of 8 VAE steps each, in a fresh working folder."""
    workdir = tmp_path_factory.mktemp("sweep")
    old = os.getcwd()
    os.chdir(workdir)
    console = io.StringIO()
    try:
        started = time.perf_counter()
        with contextlib.redirect_stdout(console):
            code = main(
                ["--space", "beta_dim", "--preset", "smoke", "--steps", "8"] + ["--experiment", "smoke-test"]
            )
        seconds = time.perf_counter() - started
    finally:
        os.chdir(old)
    print(f"smoke sweep: {seconds:.1f} s")
    return workdir, code, console.getvalue()


def _runs(workdir):
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("smoke-test")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get(ROLE_TAG) == "sweep"]
    children = [r for r in runs if r.data.tags.get(ROLE_TAG) == "trial"]
    return client, parents, children


def test_sweep_completes(smoke_sweep):
    _, code, _ = smoke_sweep
    assert code == 0


def test_the_console_is_one_line_per_trial_event_then_the_summary(smoke_sweep):
    """Two screens at most; Tune's tables and Ray Train's checkpoint lines only with --verbose."""
    *_, console = smoke_sweep
    lines = console.rstrip("\n").splitlines()
    assert len(lines) <= 100, console
    for trial in ("t001", "t002", "t003", "t004"):
        for event in ("started: ", "finished at step 8: rollout_k4 "):
            assert sum(f" {trial} {event}" in line for line in lines) == 1, console
    assert "[4/4 done, 0 running]" in console
    noise = ("Trial status:", "Checkpoint successfully created", "\u256d", "TensorBoard", "Current time:")
    assert [text for text in noise if text in console] == []
    summary = console.index("# Sweep summary")
    assert console.index("Verdict:", summary) < console.index("Open the results", summary)
    assert lines[-1].startswith("  Tune results: ")  # nothing after the UI commands


def test_mlflow_holds_one_parent_and_a_child_per_trial(smoke_sweep):
    workdir, *_ = smoke_sweep
    client, parents, children = _runs(workdir)
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert {c.data.tags[PARENT_TAG] for c in children} == {parent.info.run_id}
    assert len({c.data.tags[TRIAL_TAG] for c in children}) == 4
    for child in children:
        assert child.info.status == "FINISHED"
        metrics = child.data.metrics
        for key in CHILD_METRICS:
            assert key in metrics, key
        assert metrics["rollout/k1"] == metrics["teacher/k1"]
        assert len(client.get_metric_history(child.info.run_id, "train/loss")) >= 1
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id, "tables")}
        assert {"tables/rollout.csv", "tables/rollout.json", "tables/injection.csv"} <= artifacts
        wavs = [a.path for a in client.list_artifacts(child.info.run_id, "audio") if a.path.endswith(".wav")]
        assert len(wavs) >= 7  # orig, recon, 5 rollout lengths
        for key in CHILD_TAGS:
            assert key in child.data.tags, key
        # MLflow's compare view plots the first three differing params (alphabetically) as it opens:
        # beta, dim, then steps where a space varies it; the seed, which differs everywhere, is a tag
        params = set(child.data.params)
        assert {"beta", "dim", "steps", "train_steps"} <= params and "seed" not in params
    parent_files = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"summary.csv", "summary.md", "verdict.md", "importances.json", "listening.html"} <= parent_files
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert plots == {"plots/rollout_vs_h.png", "plots/pareto.png"}
    assert "verdict" in "".join(parent.data.tags) and parent.info.status == "FINISHED"
    reference = parent.data.metrics["codec/recon/mel"]  # the codec's own, measured once by the driver
    assert reference > 0 and parent.data.metrics["constraint/max_recon_mel"] == pytest.approx(1.5 * reference)
    assert (
        "| codec   | codec only, no bottleneck |"
        in open(client.download_artifacts(parent.info.run_id, "summary.md")).read()
    )
    summary = pd.read_csv(client.download_artifacts(parent.info.run_id, "summary.csv"))
    assert len(summary) == 4 and set(summary["status"]) == {"completed"}


def test_optuna_study_persists_with_the_baseline_first(smoke_sweep):
    workdir, *_ = smoke_sweep
    study = optuna.load_study(study_name="smoke-test", storage=f"sqlite:///{workdir / 'optuna.db'}")
    assert len(study.trials) == 4
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    first = min(study.trials, key=lambda t: t.number)
    assert first.params == {"beta": 0.01, "dim": 32}
    assert all("recon_mel" in t.constraints for t in study.trials)


def test_trials_ran_concurrently(smoke_sweep):
    """OptunaSearch once ran trials one at a time; two CPUs should hold two trials."""
    workdir, *_ = smoke_sweep
    _, _, children = _runs(workdir)
    spans = sorted((c.info.start_time, c.info.end_time) for c in children)
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:], strict=False))


@pytest.mark.slow
def test_tiny_grid_leaves_every_trial_folder_complete_and_storage_bounded(
    ray_cluster, tmp_path, monkeypatch, capsys
):
    """16 trials, two at a time on reused CPU workers: every trial's files land in its folder in Tune's
    storage (they once stayed in Ray's temp folder after the first wave), each trial keeps at most 1.5x
    its trained weights besides its evaluation files, and the summary says what the sweep stored."""
    monkeypatch.chdir(tmp_path)
    assert main(["--space", "beta_dim", "--search", "grid", "--preset", "tiny", "--experiment", "grid"]) == 0
    out = capsys.readouterr().out
    experiment = tmp_path / "sweep-results" / "grid"
    folders = sorted(p for p in experiment.iterdir() if (p / "result.json").is_file())
    assert [p.name for p in folders] == [f"t{i:03d}" for i in range(1, 17)]  # numbered from 1, as Optuna's
    for folder in folders:
        assert check_trial_folder(folder) == "completed"
        weights = next(folder.glob("checkpoint_*/vae/weights.pt")).stat().st_size
        assert folder_bytes(folder, skip="evaluation") <= 1.5 * weights, folder
        # Tune's records, and no TensorBoard files: the curves are in MLflow (sweep/driver.py)
        assert (folder / "progress.csv").is_file() and not list(folder.glob("events.out.tfevents*")), folder
    pids = {r["pid"] for rows in trial_reports(experiment).values() for r in rows}
    assert len(pids) < 16  # CPU trials did share workers: the reused-worker path was exercised
    assert "Storage: " in out and "checkpoints" in out and "evaluation files" in out
    assert "16 trials: 16 completed; 0 restarted after a failure." in out

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs(
        [client.get_experiment_by_name("grid").experiment_id], f"tags.`{ROLE_TAG}` = 'trial'"
    )
    pairs = {(float(r.data.params["beta"]), int(r.data.params["dim"])) for r in runs}
    assert len(runs) == 16 and pairs == {(b, d) for b in (0.001, 0.01, 0.1, 1.0) for d in (16, 32, 64, 128)}
    assert len({r.data.tags["seed"] for r in runs}) == 16 and not any("seed" in r.data.params for r in runs)
    assert {(r.data.params["steps"], r.data.params["lambda_pred"]) for r in runs} == {
        ("10000", "0.0")
    }  # baseline
    assert not (tmp_path / "optuna.db").exists()  # a grid asks no searcher
    summary = pd.read_csv(experiment / "summary" / "summary.csv")
    assert sorted(summary["trial"]) == [p.name for p in folders] and (summary["failures"] == 0).all()


def _finished_children(db):
    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("resume-test")
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id], f"tags.`{ROLE_TAG}` = 'trial'")
    return [r for r in runs if r.info.status == "FINISHED"]


@pytest.mark.slow
def test_killed_driver_resumes_without_rerunning_or_duplicating(tmp_path):
    """SIGINT then SIGKILL to the driver mid-sweep; --resume finishes it (docs/science.md §5, ray#30861)."""
    command = launch_command("--no-dashboard", "--experiment", "resume-test")
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(
        command + ["--space", "beta_dim", "--preset", "smoke", "--steps", "60", "--num-samples", "3"],
        cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not _finished_children(tmp_path / "mlflow.db"):
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no trial finished in 300 s"
        time.sleep(2)
    done_before = {r.data.tags[TRIAL_TAG]: r for r in _finished_children(tmp_path / "mlflow.db")}
    first.send_signal(signal.SIGINT)
    time.sleep(3)
    os.killpg(first.pid, signal.SIGKILL)  # the driver and the Ray processes it started
    first.wait(timeout=30)
    assert len(done_before) < 3, "the sweep finished before it could be killed; raise --steps"

    resumed = subprocess.run(command[:-2] + ["--resume", "resume-test"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("resume-test").experiment_id
    runs = client.search_runs([experiment])
    parents = [r for r in runs if r.data.tags.get(ROLE_TAG) == "sweep"]
    children = [r for r in runs if r.data.tags.get(ROLE_TAG) == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    trial_ids = [c.data.tags[TRIAL_TAG] for c in children]
    assert len(trial_ids) == len(set(trial_ids)) == 3  # no duplicate child runs
    assert all(c.info.status == "FINISHED" for c in children)
    for child in children:
        if child.data.tags[TRIAL_TAG] in done_before:  # finished before the kill: not rerun
            assert child.data.tags["sweep.attempt"] == "1"
            before = done_before[child.data.tags[TRIAL_TAG]]
            assert child.data.metrics == before.data.metrics
    study = optuna.load_study(study_name="resume-test", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3
    assert "Sweep summary" in resumed.stdout


@pytest.mark.slow
def test_asha_decides_on_the_cheap_battery_and_stopped_trials_are_pruned(ray_cluster, tmp_path, monkeypatch):
    """ASHA stops trials on probe values; those trials are PRUNED for Optuna (never COMPLETE with probe
    values), off the Pareto front, listed apart in the summary, their MLflow runs KILLED."""
    monkeypatch.chdir(tmp_path)
    argv = ["--space", "beta_dim", "--scheduler", "asha", "--steps", "16", "--num-samples", "6"]
    assert main(argv + ["--experiment", "asha"]) == 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("asha").experiment_id
    children = client.search_runs([experiment], f"tags.`{ROLE_TAG}` = 'trial'")
    assert len(children) == 6  # 6, not 4: trials start in pairs, and 4 left ASHA nobody to stop at times
    for child in children:
        # rungs at steps 4 and 8: the cheap battery ran there and was logged as probe/*
        history = client.get_metric_history(child.info.run_id, "probe/rollout/k4")
        assert [m.step for m in history][:1] == [4]
        assert child.info.status in ("FINISHED", "KILLED")  # none left RUNNING
        expected = "completed" if child.info.status == "FINISHED" else "stopped early"
        assert child.data.tags["sweep.status"] == expected
        objectives = {k: v for k, v in child.data.metrics.items() if k.startswith("objective/")}
        assert set(objectives) == set(OBJECTIVES)  # logged first, as NaN: MLflow's compare view opens on them
        if expected == "stopped early":  # nothing final-looking: probe values only, under probe/
            assert all(math.isnan(v) for v in objectives.values()), child.data.metrics
        else:
            assert all(math.isfinite(v) for v in objectives.values()), child.data.metrics
    summary = pd.read_csv(tmp_path / "sweep-results" / "asha" / "summary" / "summary.csv")
    stopped = summary[summary["status"] == "stopped early"]
    assert set(summary["status"]) <= {"completed", "stopped early"} and "completed" in set(summary["status"])
    assert len(stopped) >= 1, "ASHA stopped no trial: nothing below was checked"
    assert not stopped["pareto"].any() and stopped["objective/rollout_k4"].isna().all()
    assert stopped["probe/objective/rollout_k4"].notna().all()
    study = optuna.load_study(study_name="asha", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    states = {t.user_attrs.get("step"): t.state for t in study.trials if t.user_attrs}
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert len(pruned) == len(stopped) and all(t.values is None for t in pruned)
    assert sorted(t.user_attrs["step"] for t in pruned) == sorted(stopped["step"].astype(float)), states
    for name in stopped["trial"]:
        assert check_trial_folder(tmp_path / "sweep-results" / "asha" / name) == "stopped early"


def test_the_listening_page_plays_from_its_file_and_in_mlflow_and_the_compare_view_opens_on_the_objective(
    smoke_sweep, tmp_path
):
    """Headless Chromium opens the sweep's listening page from its file and from the parent run's
    artifact view in MLflow's UI: every player loads (a duration > 0: 2 reference clips and 6 per trial
    for the smoke preset's one utterance). MLflow's compare view of the child runs then plots beta and
    dim against the k=4 rollout objective as it opens, with nothing to pick."""
    workdir, *_ = smoke_sweep
    _, parents, children = _runs(workdir)
    parent = parents[0].info
    page_file = workdir / "sweep-results" / "smoke-test" / "summary" / "listening.html"
    expected = 2 + 6 * len(children)
    with chromium() as page:
        page.goto(page_file.as_uri())
        durations = page.evaluate(AUDIO_DURATIONS)
        assert len(durations) == expected and min(durations) > 0, durations
        screenshot(page, "listening-page", tmp_path, full_page=True)
        port = free_port()
        store = f"sqlite:///{workdir / 'mlflow.db'}"
        server = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store,
                  "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
        with ui_server(server, port) as base:
            page.goto(
                f"{base}/#/experiments/{parent.experiment_id}/runs/{parent.run_id}/artifacts/listening.html"
            )
            durations = frame_with_audio(page).evaluate(AUDIO_DURATIONS)
            assert len(durations) == expected and min(durations) > 0, durations
            close_mlflow_assistant(page)
            screenshot(page, "mlflow-listening-page", tmp_path)
            runs = ",".join(f'"{c.info.run_id}"' for c in children)
            page.goto(f'{base}/#/compare-runs?runs=[{runs}]&experiments=["{parent.experiment_id}"]')
            page.get_by_text("Parallel Coordinates Plot").first.wait_for(timeout=60_000)
            page.wait_for_timeout(3000)  # the plot draws after the runs load
            close_mlflow_assistant(page)
            assert "beta" in page.inner_text("body") and "dim" in page.inner_text("body")
            metrics = page.get_by_role("combobox").nth(1)  # it opens on the first metric the runs logged
            assert metrics.get_attribute("aria-description") == ROLLOUT_OBJECTIVE
            screenshot(page, "mlflow-compare-runs", tmp_path)


def test_optuna_dashboard_from_the_ui_extra_opens_the_sweeps_study(smoke_sweep, tmp_path):
    """`pip install -e ".[ui]"` brings optuna-dashboard; the command the sweep prints serves its study."""
    pytest.importorskip("optuna_dashboard", reason='pip install -e ".[ui]" brings optuna-dashboard')
    workdir, *_ = smoke_sweep
    port = free_port()
    command = [str(Path(sys.executable).parent / "optuna-dashboard"), f"sqlite:///{workdir / 'optuna.db'}",
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    with ui_server(command, port, "/api/studies") as base:
        with urllib.request.urlopen(f"{base}/api/studies", timeout=30) as answer:
            studies = json.load(answer)["study_summaries"]
        assert [s["study_name"] for s in studies] == ["smoke-test"]
        assert studies[0]["directions"] == ["minimize", "minimize"]
        with urllib.request.urlopen(f"{base}/dashboard", timeout=30) as answer:
            assert answer.status == 200
        if CHROMIUM:  # and how it looks, for the README
            with chromium() as page:
                page.goto(f"{base}/dashboard/studies/{studies[0]['study_id']}")
                page.get_by_text("smoke-test").first.wait_for(timeout=60_000)
                page.wait_for_timeout(3000)
                screenshot(page, "optuna-dashboard", tmp_path)


def test_sweep_report_rebuilds_the_listening_page_from_storage_and_serves_it(smoke_sweep, capsys):
    """`python -m sweep.report <experiment>` rebuilds the page from Tune's storage alone and serves it on
    127.0.0.1; an unknown experiment is one line and exit 2."""
    from sweep import report

    workdir, *_ = smoke_sweep
    page = workdir / "sweep-results" / "smoke-test" / "summary" / "listening.html"
    page.unlink()
    storage = str(workdir / "sweep-results")
    assert report.main(["smoke-test", "--storage", storage, "--no-serve"]) == 0
    assert page.read_text().count("<audio") == 2 + 6 * 4
    assert report.main(["no-such-sweep", "--storage", storage]) == 2
    assert "no sweep 'no-such-sweep'" in capsys.readouterr().err
    port = free_port()
    command = [sys.executable, "-m", "sweep.report", "smoke-test", "--storage", storage, "--port", str(port)]
    with ui_server(command, port, "/listening.html") as base:
        with urllib.request.urlopen(f"{base}/listening.html", timeout=30) as answer:
            assert answer.read() == page.read_bytes()
