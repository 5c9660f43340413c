"""Spaces, presets, objectives and the launcher's validation: fast, no Ray run."""

import math
import re
import subprocess

import numpy as np
import optuna
import pandas as pd
import pytest
from helpers import launch_command
from ray import tune

from evaluation.report import metrics_report, tables_from_metrics
from sweep import spaces
from sweep.config import PRESETS, TrialParams, rung_steps, trial_name, trial_number, trial_seed
from sweep.console import describe
from sweep.errors import UsageError
from sweep.launch import main, parse_args
from sweep.objective import (
    COMPLETED,
    CONSTRAINT,
    OBJECTIVES,
    PROBE,
    SCHEDULER_METRIC,
    STATUS,
    SURROGATE,
    objective_values,
    pending,
    probe_values,
    unmeasured,
)
from sweep.plan import make_plan
from sweep.search import ConstrainedOptunaSearch
from sweep.summary import pareto_mask

LOG_LINE = re.compile(r"\d\d:\d\d:\d\d ")  # the launcher's own log lines (logging.basicConfig's format)


def test_spaces_have_the_documented_domains():
    grid = spaces.SPACES["beta_dim"]("grid")
    assert grid["beta"] == tune.grid_search([0.001, 0.01, 0.1, 1.0])
    assert grid["dim"] == tune.grid_search([16, 32, 64, 128])
    optuna_space = spaces.SPACES["beta_dim"]("optuna")
    assert isinstance(optuna_space["beta"], tune.search.sample.Float)
    assert (optuna_space["beta"].lower, optuna_space["beta"].upper) == (0.001, 1.0)
    assert optuna_space["dim"].categories == [16, 32, 64, 128]
    assert set(spaces.SPACES["ar_losses"]("optuna")) == {"lambda_smooth", "lambda_pred"}
    assert [spaces.grid_size(n) for n in spaces.SPACES] == [16, 32, 2, 8, 1]
    assert spaces.baseline_point("beta_dim_steps") == {"beta": 0.01, "dim": 32, "steps": 10_000}


def test_preset_scales_paper_steps():
    smoke = PRESETS["smoke"].with_overrides(steps_per_10k=8)
    assert TrialParams.from_config({"steps": 10_000}, smoke).train_steps == 8
    assert TrialParams.from_config({"steps": 50_000}, smoke).train_steps == 40
    paper = TrialParams.from_config({"beta": 0.1, "dim": 64}, PRESETS["paper"])
    assert (paper.train_steps, paper.vae_config(PRESETS["paper"]).lr) == (10_000, 1e-4)
    assert paper.label() == "beta=0.1 dim=64"
    with pytest.raises(ValueError, match="unknown trial parameters"):
        TrialParams.from_config({"gamma": 1}, smoke)


def test_rungs_double_from_the_first():
    assert rung_steps(10_000, 2_500) == [2_500, 5_000]
    assert rung_steps(50_000, 2_500) == [2_500, 5_000, 10_000, 20_000, 40_000]
    assert rung_steps(3, 10) == []


def test_objectives_are_per_dimension_and_finite():
    metrics = {"rollout/k4": -64.0, "rollout/finite/k4": 1.0, "teacher/k1": -128.0, "recon/mel": 3.0}
    values = objective_values(metrics, dim=32, max_recon_mel=4.0)
    assert values["objective/rollout_k4"] == -2.0 and values["objective/teacher_k1"] == -4.0
    assert values[CONSTRAINT] == -1.0
    broken = objective_values({"rollout/k4": math.inf, "teacher/k1": math.nan, "recon/mel": math.nan}, 8, 4.0)
    assert all(broken[name] == SURROGATE for name in OBJECTIVES) and broken[CONSTRAINT] == SURROGATE
    assert math.isinf(broken["rollout/k4_per_dim"])  # the raw value is kept beside the surrogate
    # finite number but a fed-back state blew up on the way: not finite by docs/science.md §3
    flagged = objective_values({"rollout/k4": -1.0, "rollout/finite/k4": 0.0, "teacher/k1": -1.0}, 1)
    assert flagged["objective/rollout_k4"] == SURROGATE


def test_searcher_sets_the_constraint_and_never_tells_nan(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    searcher = ConstrainedOptunaSearch(
        space={"beta": optuna.distributions.FloatDistribution(1e-3, 1.0, log=True)},
        metric=list(OBJECTIVES),
        mode=["min", "min"],
        study_name="s",
        storage=storage,
        seed=0,
    )
    for trial_id, result in [
        ("a", {OBJECTIVES[0]: -1.0, OBJECTIVES[1]: -2.0, CONSTRAINT: 0.5, STATUS: COMPLETED}),
        ("b", {OBJECTIVES[0]: math.nan, OBJECTIVES[1]: -2.0, CONSTRAINT: -1.0, STATUS: COMPLETED}),
    ]:
        searcher.suggest(trial_id)
        searcher.on_trial_complete(trial_id, result)
    trials = optuna.load_study(study_name="s", storage=storage).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert trials[0].constraints == {"recon_mel": 0.5} and trials[1].constraints == {"recon_mel": -1.0}
    assert trials[1].values == [SURROGATE, -2.0]


def test_a_trial_asha_stopped_is_pruned_for_optuna_with_its_probe_values(tmp_path):
    """Its last result carries probe values only: Optuna must learn it as PRUNED, never COMPLETE."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    searcher = ConstrainedOptunaSearch(
        space={"beta": optuna.distributions.FloatDistribution(1e-3, 1.0, log=True)},
        metric=list(OBJECTIVES), mode=["min", "min"], study_name="s", storage=storage, seed=0,
    )  # fmt: skip
    searcher.suggest("stopped")
    searcher.on_trial_complete("stopped", {"step": 500, SCHEDULER_METRIC: -0.7, PROBE + OBJECTIVES[1]: -1.1})
    searcher.suggest("failed")
    searcher.on_trial_complete("failed", {"step": 20}, error=True)
    stopped, failed = optuna.load_study(study_name="s", storage=storage).trials
    assert stopped.state == optuna.trial.TrialState.PRUNED and stopped.values is None
    assert stopped.user_attrs == {"step": 500.0, SCHEDULER_METRIC: -0.7, PROBE + OBJECTIVES[1]: -1.1}
    assert stopped.constraints is None or not stopped.constraints
    assert failed.state == optuna.trial.TrialState.FAIL


def test_probe_values_are_named_apart_from_final_ones():
    probe = probe_values({"rollout/k4": -64.0, "rollout/finite/k4": 1.0, "teacher/k1": -32.0}, dim=32)
    assert probe[SCHEDULER_METRIC] == -2.0 and probe["probe/objective/teacher_k1"] == -1.0
    assert probe["probe/rollout/k4"] == -64.0 and probe["probe/measured"] == 1.0
    assert all(k.startswith("probe/") for k in probe)
    assert SCHEDULER_METRIC in unmeasured() and not any(k.startswith("objective/") for k in unmeasured())
    assert pending() == {name: SURROGATE for name in OBJECTIVES}  # placeholders Tune insists on


def test_trials_are_named_by_number_and_seeded_apart():
    assert trial_name(7) == "t007" and trial_number("t007") == 7 and trial_number(trial_name(1234)) == 1234
    with pytest.raises(ValueError, match="t<number>"):
        trial_number("train_trial_ab12")
    seeds = {trial_seed(s, n) for s in (0, 1) for n in range(64)}
    assert len(seeds) == 128  # repeats differ, and so do two sweeps' trials
    assert trial_seed(0, 0) == 0


def test_pareto_mask():
    values = np.array([[0, 3], [1, 1], [3, 0], [2, 2], [np.nan, 0]], dtype=float)
    assert pareto_mask(values).tolist() == [True, True, True, False, False]


def test_tables_rebuilt_from_flat_metrics():
    metrics = {"teacher/k1": -40.0, "rollout/k1": -40.0, "gap/k1": 0.0, "rollout/finite/k1": 1.0,
               "teacher/k4": -30.0, "rollout/k4": math.inf, "gap/k4": math.inf, "rollout/finite/k4": 0.0,
               "rollout/horizon": 1.0, "injection/A_teacher/cos": 0.5, "recon/mel": 2.5}  # fmt: skip
    rollout, injection = tables_from_metrics(metrics)
    assert rollout["h"].tolist() == [1, 4] and rollout["finite"].tolist() == [True, False]
    assert injection["mode"].tolist() == ["A_teacher"]
    text = metrics_report(metrics, title="t")
    assert "inf" in text and "Rollout horizon: k=1" in text and "recon/mel" in text
    assert isinstance(rollout, pd.DataFrame)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--space", "nope"], "unknown space 'nope'; choose one of: beta_dim, beta_dim_steps, steps, ar_"),
        (["--space", "beta_dim", "--preset", "huge"], "unknown preset 'huge'; choose one of: smoke, tiny, "),
        (["--space", "steps", "--set", "beta=-0.1"], "beta must be a finite number >= 0"),
        (["--space", "steps", "--set", "dim=0"], "dim must be >= 1, got 0"),
        (["--space", "steps", "--set", "dim=2.5"], "'2.5' is not an integer"),
        (["--space", "beta_dim", "--set", "beta=0.1"], "varies beta"),
        (["--space", "beta_dim", "--gpus-per-trial", "0.5"], "no visible GPU"),
        (["--space", "beta_dim", "--preset", "paper"], "pass --data"),
        (["--space", "beta_dim", "--data", "/no/such/folder"], "no such folder"),
        (["--space", "beta_dim", "--steps", "0"], "--steps must be >= 1"),
        (["--space", "beta_dim", "--keep-checkpoints", "0"], "--keep-checkpoints must be >= 1"),
        (["--space", "beta_dim", "--codec", "/no/such/mimi"], "--codec /no/such/mimi: no such folder"),
        (["--resume", "gone"], "no such experiment"),
        ([], "say which space"),
        (["--space", "beta_dim", "--mps"], "--mps needs a GPU"),
        (["--space", "beta_dim", "--mps", "--address", "10.0.0.1:6379"], "Start MPS on each node yourself"),
        (["--space", "beta_dim", "--address", "127.0.0.1:1"], "nothing answers at 127.0.0.1:1 within 5 s"),
        (["--space", "baseline", "--search", "optuna"], "varies nothing for Optuna to search"),
    ],
)
def test_bad_input_is_explained_before_any_compute(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "data").exists()


def test_missing_codec_weights_are_explained_before_any_compute(tmp_path, monkeypatch, capsys):
    """Pretrained weights neither cached nor downloadable: one line with the fixes, before Ray starts
    (the trials start while the driver prepares, so the driver no longer finds this out by loading them)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    assert main(["--space", "beta_dim", "--codec", "kyutai/mimi"]) == 2
    err = capsys.readouterr().err
    assert "are not in the Hugging Face cache" in err and "HF_HUB_OFFLINE is set" in err
    assert "hf download kyutai/mimi --revision" in err and "--codec random:full" in err
    assert not (tmp_path / "mlflow.db").exists()
    assert main(["--space", "beta_dim", "--codec", "kyutai/mimi", "--dry-run"]) == 0  # the plan, all the same


def test_empty_data_folder_is_refused(tmp_path, monkeypatch, capsys):
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path)
    assert main(["--space", "beta_dim", "--data", "empty"]) == 2
    assert "--data empty" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--mlflow-uri", "http://127.0.0.1:9"], "http://127.0.0.1:9 is unreachable"),
        (["--codec", "{empty}"], "has no config.json and no model.safetensors"),
    ],
)
def test_usage_errors_from_the_command_line_are_one_line_and_exit_2(extra, message, tmp_path):
    """`python -m sweep.launch` runs launch.py as __main__: errors raised by the driver's modules must
    still be caught there (they once escaped as a 15-line traceback, exit 1)."""
    (tmp_path / "empty").mkdir()
    extra = [arg.replace("{empty}", str(tmp_path / "empty")) for arg in extra]
    argv = ["--space", "beta_dim", "--no-dashboard", *extra]
    done = subprocess.run(launch_command(*argv), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stderr.splitlines() if not LOG_LINE.match(line)]
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr and not (tmp_path / "mlflow.db").exists()


def test_unreachable_mlflow_fails_fast(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["--space", "beta_dim", "--mlflow-uri", "http://127.0.0.1:9", "--no-dashboard"])
    err = capsys.readouterr().err
    assert code == 2 and "http://127.0.0.1:9 is unreachable" in err and "mlflow server" in err
    assert not (tmp_path / "data").exists()  # failed before the corpus or the cache were made


def test_a_server_that_takes_seconds_to_answer_is_reachable():
    """A server that has taken the connection but answers only after 6 s (as `mlflow server` does while
    its workers start) passes the check; a refused address fails at once (the test above)."""
    import http.server
    import json
    import threading
    import time

    from sweep.tracking import check_reachable

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # search_experiments
            time.sleep(6)
            body = json.dumps({"experiments": []}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        started = time.monotonic()
        check_reachable(f"http://127.0.0.1:{server.server_address[1]}")
        assert time.monotonic() - started >= 6
    finally:
        server.shutdown()


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--space", "beta_dim", "--search", "grid", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "16 trials of the exact grid" in out and "trials at a time" in out
    assert "nothing was started" in out
    assert list(tmp_path.iterdir()) == []


def test_the_recon_constraint_is_relative_to_the_codec_unless_bounded(tmp_path):
    relative = make_plan(parse_args(["--space", "beta_dim", "--recon-margin", "2"]), tmp_path)
    assert relative.describe_constraint() == "recon/mel <= 2 x the codec's own"
    relative.codec_reference = {"recon/mel": 3.0, "recon/l1": 0.1}
    assert relative.recon_bound == 6.0 and relative.describe_constraint().endswith("= 6")
    absolute = make_plan(parse_args(["--space", "beta_dim", "--max-recon-mel", "4.5"]), tmp_path)
    absolute.codec_reference = {"recon/mel": 3.0}
    assert absolute.recon_bound == 4.5 and absolute.describe_constraint() == "recon/mel <= 4.5"
    assert "constraint  recon/mel <= 1.5 x the codec's own" in describe(
        make_plan(parse_args(["--space", "beta_dim"]), tmp_path), cpus=2, gpus=0
    )
    with pytest.raises(UsageError, match="--recon-margin must be a positive number"):
        make_plan(parse_args(["--space", "beta_dim", "--recon-margin", "0"]), tmp_path)


def test_resource_arithmetic(tmp_path):
    args = parse_args(
        ["--space", "beta_dim_steps", "--search", "grid", "--cpus-per-trial", "2"] + ["--steps", "10"]
    )
    plan = make_plan(args, tmp_path)
    text = describe(plan, cpus=16, gpus=0)
    assert "32 trials of the exact grid" in text and "8 trials at a time, 4 waves" in text
    assert "longest trial 50" in text


def test_resume_refuses_a_new_constraint(tmp_path):
    """--resume runs the saved sweep: its space, search, preset, steps and reconstruction constraint."""
    storage = str(tmp_path / "results")
    plan = make_plan(parse_args(["--space", "beta_dim", "--experiment", "x", "--storage", storage]), tmp_path)
    plan.save()
    resumed = make_plan(parse_args(["--resume", "x", "--storage", storage]), tmp_path)
    assert (resumed.recon_margin, resumed.max_recon_mel) == (1.5, None)
    for flag, value, saved in (("--recon-margin", "2", "1.5"), ("--max-recon-mel", "4", "None")):
        with pytest.raises(UsageError, match=f"{flag} {float(value)} \\(the sweep has {saved}\\)"):
            make_plan(parse_args(["--resume", "x", "--storage", storage, flag, value]), tmp_path)


def test_a_grid_runs_long_trials_first_and_its_compile_shapes_in_turn():
    """The first wave of a beta_dim grid holds each dim once (each compiles its step once, side by
    side; later waves find them all in the compile cache), every point runs `repeats` times, and the
    research grid's 50k-step trials come before its 10k ones."""
    points = spaces.grid_points("beta_dim", repeats=2)
    assert len(points) == 32 and [p["dim"] for p in points[:4]] == [16, 32, 64, 128]
    assert sorted((p["beta"], p["dim"]) for p in points) == sorted(
        [(b, d) for b in (0.001, 0.01, 0.1, 1.0) for d in (16, 32, 64, 128)] * 2
    )
    research = spaces.grid_points("beta_dim_steps")
    assert [p["steps"] for p in research] == [50_000] * 16 + [10_000] * 16
    shapes = [(p["lambda_smooth"] > 0, p["lambda_pred"] > 0) for p in spaces.grid_points("ar_losses")[:4]]
    assert len(set(shapes)) == 4
