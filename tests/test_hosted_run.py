"""sweep.hosted_run: a trial's MLflow run kept in a process its worker spawns, so that the trial's own
process never imports mlflow; what a trial logs arrives as if it had logged it itself."""

import dataclasses
import json
import logging
import subprocess
import sys
import textwrap

import pytest

from sweep import hosted_run
from sweep.hosted_run import HostedTrialRun, open_trial_run, start_host, stop_host
from sweep.tracking import TrialRun, mlflow_client, open_sweep_tracking

TRIAL = {"trial_id": "abc_00001", "name": "t001 beta=0.01", "params": {"beta": 0.01}, "tags": {"seed": "7"}}


@pytest.fixture
def tracking(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return open_sweep_tracking(uri, "hosted", tmp_path / "artifacts", params={}, tags={"sweep.code": "x"})


@pytest.fixture
def host():
    start_host()
    yield hosted_run._HOST[0]
    stop_host()


def child_runs(tracking):
    client = mlflow_client(tracking.uri)
    return client.search_runs([tracking.experiment_id], "tags.`sweep.role` = 'trial'")


def test_a_trial_process_logs_through_its_host_and_never_imports_mlflow(tracking, tmp_path):
    script = textwrap.dedent(
        f"""
        import json, sys
        from sweep.hosted_run import open_trial_run, start_host
        from sweep.tracking import SweepTracking
        start_host()
        tracking = SweepTracking(**json.loads(sys.argv[1]))
        run = open_trial_run(tracking, hosted=True, **{TRIAL!r})
        run.log_in_background()
        for step in (50, 100):
            run.log_metrics({{"train/loss": 2.0 - step / 100, "note": "not a number"}}, step)
        run.set_tags({{"rollout/horizon": "4"}})
        print(type(run).__name__, "mlflow" in sys.modules)
        """
    )
    arguments = json.dumps(dataclasses.asdict(tracking))
    command = [sys.executable, "-c", script, arguments]
    out = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["HostedTrialRun", "False"], out.stderr[-2000:]
    (run,) = child_runs(tracking)
    client = mlflow_client(tracking.uri)
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/loss")] == [
        (50, 1.5),
        (100, 1.0),
    ]
    assert run.data.tags["rollout/horizon"] == "4" and run.data.tags["seed"] == "7"
    assert run.data.tags["mlflow.parentRunId"] == tracking.parent_run_id
    assert run.data.params["beta"] == "0.01"


def test_the_same_trial_again_finds_its_run_through_the_host(tracking, host):
    first = open_trial_run(tracking, hosted=True, **TRIAL)
    again = open_trial_run(tracking, hosted=True, **TRIAL)  # Tune's retry in the same worker
    assert isinstance(first, HostedTrialRun) and isinstance(again, HostedTrialRun)
    (run,) = child_runs(tracking)
    assert run.data.tags["sweep.attempt"] == "2"
    with pytest.raises(KeyError):  # the host let the earlier trial's run go: it keeps one at a time
        host.call(first._handle, "flush")
    assert host.call(again._handle, "flush") is None


def test_without_the_host_the_run_stays_in_the_trials_process_and_the_host_ends(tracking, host):
    run = open_trial_run(tracking, hosted=False, **TRIAL)
    assert isinstance(run, TrialRun) and not hosted_run._HOST
    host._process.join(5)
    assert not host._process.is_alive()


def test_a_host_that_died_before_the_run_opened_leaves_the_run_in_the_trials_process(tracking, host, caplog):
    host._process.kill()
    host._process.join(5)
    with caplog.at_level(logging.WARNING, logger="sweep.hosted_run"):
        run = open_trial_run(tracking, hosted=True, **TRIAL)
    assert isinstance(run, TrialRun) and "keeps its MLflow run in its own process" in caplog.text
    assert len(child_runs(tracking)) == 1


def test_a_host_that_dies_under_a_run_is_said_once_and_the_trial_goes_on(tracking, host, caplog):
    run = open_trial_run(tracking, hosted=True, **TRIAL)
    host._process.kill()
    host._process.join(5)
    with caplog.at_level(logging.WARNING, logger="sweep.hosted_run"):
        for step in (50, 100):
            run.log_metrics({"train/loss": 1.0}, step)  # raises nothing: the trial trains on
        run.set_tags({"rollout/horizon": "4"})
    assert caplog.text.count("this trial stops logging to MLflow") == 1
    assert "python -m sweep.sync" in caplog.text
