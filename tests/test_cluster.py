"""Scale-out on this machine: a two-node Ray cluster joined with --address, a node lost mid-sweep,
and an MLflow tracking server on loopback serving the WAVs back."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import launch, launch_command, trial_reports
from mlflow import MlflowClient

from sweep.tracking import ROLE_TAG

RAY = str(Path(sys.executable).parent / "ray")
# Ray >= 2.59 turns token authentication on for clusters started here; clients must say so too.
ENV = {**os.environ, "RAY_AUTH_MODE": "token"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(condition, seconds: float, what: str, poll: float = 1.0, logs: tuple[Path, ...] = ()):
    """Poll `condition` until it holds; on timeout, fail showing the tail of each of `logs`."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() >= deadline:
            tails = "".join(f"\n--- {log} ---\n{_tail(log)}" for log in logs)
            raise AssertionError(f"timed out after {seconds} s waiting for {what}{tails}")
        time.sleep(poll)


def _tail(log: Path, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(not written)"


def _start_server(port: int, folder: Path) -> subprocess.Popen:
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{folder / 'server.db'}",
            "--artifacts-destination",
            str(folder / "server-artifacts"),
            "--workers",  # one process serves these tests; MLflow's 4 took ~25 s to start on two cores
            "1",
        ],
        stdout=open(folder / "server.log", "a"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def up():  # the port opens before the app can answer: ask it
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as answer:
                return answer.status == 200
        except OSError:
            return False

    _wait(up, 120, "mlflow server", logs=(folder / "server.log",))
    return server


def _second_node_id(address: str) -> str:
    """The Ray node id of the 2-CPU node, once it has joined (asked from a short-lived driver)."""
    ask = (
        "import sys, time, ray\n"
        f"ray.init(address={address!r}, logging_level='ERROR')\n"
        "for _ in range(240):\n"
        "    ids = [n['NodeID'] for n in ray.nodes() if n['Alive'] and n['Resources'].get('CPU') == 2.0]\n"
        "    if ids:\n"
        "        print(ids[0]); sys.exit(0)\n"
        "    time.sleep(0.5)\n"
        "sys.exit('the second node did not join within 120 s')\n"
    )
    done = subprocess.run([sys.executable, "-c", ask], capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()[-1]


@pytest.fixture
def two_nodes(tmp_path):
    """A head with 1 CPU and a second node with 2 CPUs, both on 127.0.0.1, each its own raylet."""
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--disable-usage-stats", "--include-dashboard=false"]
    subprocess.run(
        [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=1", *common],
        check=True,
        capture_output=True,
        timeout=120,
        env=ENV,
    )
    second = subprocess.Popen(
        [
            RAY,
            "start",
            f"--address={address}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=2",
            "--block",
            "--disable-usage-stats",
        ],
        stdout=open(tmp_path / "second-node.log", "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=ENV,
    )

    yield address, second, _second_node_id(address)
    if second.poll() is None:
        os.killpg(second.pid, signal.SIGTERM)
        second.wait(timeout=60)
    subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120, env=ENV)


@pytest.mark.slow
def test_two_node_sweep_survives_losing_a_node(two_nodes, tmp_path):
    address, second, second_id = two_nodes
    args = ("--address", address, "--space", "beta_dim", "--steps", "60", "--num-samples", "4")
    driver = launch(tmp_path, *args, "--experiment", "two-nodes", env=ENV)
    experiment = tmp_path / "sweep-results" / "two-nodes"

    def checkpointed_and_running_on_second_node():
        """A trial whose latest report came from the second node, with a checkpoint, still training."""
        for rows in trial_reports(experiment).values():
            on_second = [r for r in rows if r.get("node_id") == second_id]
            if on_second and rows[-1] is on_second[-1] and rows[-1].get("status") != "completed":
                if any(r.get("checkpoint_dir_name") for r in on_second):
                    return True
        return False

    def where_trials_ran():
        return {
            name[:24]: [(r["step"], "second" if r.get("node_id") == second_id else "head") for r in rows]
            for name, rows in trial_reports(experiment).items()
        }

    _wait(
        lambda: checkpointed_and_running_on_second_node() or driver.poll() is not None,
        400,
        "a checkpointed trial training on the second node",
        logs=(tmp_path / "driver.log",),
    )
    assert driver.poll() is None, (where_trials_ran(), _tail(tmp_path / "driver.log"))
    os.killpg(second.pid, signal.SIGTERM)  # the second node goes away mid-sweep
    second.wait(timeout=60)
    assert driver.wait(timeout=600) == 0, _tail(tmp_path / "driver.log", 4000)

    results = trial_reports(experiment)
    assert len(results) == 4
    node_ids = {row["node_id"] for rows in results.values() for row in rows if "node_id" in row}
    assert len(node_ids) == 2  # trials ran on both nodes
    assert all(rows[-1].get("status") == "completed" for rows in results.values())
    moved = [rows for rows in results.values() if len({r["node_id"] for r in rows if "node_id" in r}) == 2]
    assert moved, "no trial was running on the lost node"
    resumed = []
    for rows in moved:  # retried from a checkpoint it had reported (the step it holds), or from step 0
        lost = 1 + max(i for i, r in enumerate(rows) if r["node_id"] == second_id)  # first report after
        checkpoints = [r["checkpoint/step"] for r in rows[:lost] if r.get("checkpoint_dir_name")]
        restart = rows[lost]["step"] - 5  # reports come every 5 steps
        assert restart in (checkpoints or [0]), (restart, checkpoints, where_trials_ran())
        resumed.append(restart)
    assert max(resumed) > 0, where_trials_ran()  # the trial the node was lost under resumed mid-way

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("two-nodes").experiment_id])
    children = [r for r in runs if r.data.tags.get(ROLE_TAG) == "trial"]
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)


@pytest.fixture
def mlflow_server(tmp_path):
    server = _start_server(port := _free_port(), tmp_path)
    yield f"http://127.0.0.1:{port}"
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)


def test_sweep_logs_to_an_mlflow_server_and_wavs_come_back(mlflow_server, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    args = ("--space", "beta_dim", "--steps", "4", "--num-samples", "2", "--mlflow-uri", mlflow_server)
    command = launch_command(*args, "--experiment", "served", "--no-dashboard")
    done = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert not (work / "mlflow.db").exists() and not (work / "mlartifacts").exists()

    client = MlflowClient(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("served").experiment_id])
    parents = [r for r in runs if r.data.tags.get(ROLE_TAG) == "sweep"]
    children = [r for r in runs if r.data.tags.get(ROLE_TAG) == "trial"]
    assert len(parents) == 1 and len(children) == 2
    local = Path(client.download_artifacts(children[0].info.run_id, "audio", str(tmp_path / "download")))
    wavs = sorted(local.glob("*.wav"))
    assert len(wavs) == 7 and all(w.stat().st_size > 1000 for w in wavs)
    assert children[0].info.artifact_uri.startswith("mlflow-artifacts:")  # served by the server, not a path


@pytest.mark.slow
def test_mlflow_going_away_mid_sweep_loses_nothing(tmp_path):
    """The server dies mid-sweep: trials finish, results stay in Tune's storage, sweep.sync sends them."""
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    server = _start_server(port, tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    args = ("--space", "beta_dim", "--steps", "60", "--num-samples", "2", "--mlflow-uri", uri)
    driver = launch(work, *args, "--experiment", "away", "--no-dashboard")
    client = MlflowClient(uri)

    def logging_started():
        experiment = client.get_experiment_by_name("away")
        runs = (
            client.search_runs([experiment.experiment_id], "metrics.`train/loss` > -1") if experiment else []
        )
        return len(runs) >= 1

    driver_log = work / "driver.log"
    _wait(
        lambda: logging_started() or driver.poll() is not None,
        300,
        "the first train/loss in MLflow",
        logs=(driver_log, tmp_path / "server.log"),
    )
    assert driver.poll() is None, f"the driver ended before a train/loss reached MLflow:\n{_tail(driver_log)}"
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)
    assert driver.wait(timeout=900) == 0, _tail(driver_log)
    assert "python -m sweep.sync away" in driver_log.read_text()

    server = _start_server(port, tmp_path)  # back, same store
    try:
        sync = [sys.executable, "-m", "sweep.sync", "away"]
        done = subprocess.run(sync, cwd=work, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and "synced 2 trials" in done.stdout, done.stdout + done.stderr[-3000:]
        runs = client.search_runs([client.get_experiment_by_name("away").experiment_id])
        parents = [r for r in runs if r.data.tags.get(ROLE_TAG) == "sweep"]
        children = [r for r in runs if r.data.tags.get(ROLE_TAG) == "trial"]
        assert len(parents) == 1 and parents[0].info.status == "FINISHED" and len(children) == 2
        for child in children:
            assert child.info.status == "FINISHED" and "recon/mel" in child.data.metrics
            wavs = [a for a in client.list_artifacts(child.info.run_id, "audio") if a.path.endswith(".wav")]
            assert len(wavs) == 7
            steps = [m.step for m in client.get_metric_history(child.info.run_id, "train/loss")]
            assert len(steps) == len(set(steps)) and max(steps) == 60  # every report once
        assert {a.path for a in client.list_artifacts(parents[0].info.run_id)} >= {
            "summary.csv",
            "verdict.md",
        }
        again = subprocess.run(sync, cwd=work, capture_output=True, text=True, timeout=300)
        assert "0 reports and 0 files" in again.stdout  # idempotent
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def _idle_workers() -> int:
    """Worker processes of this driver's Ray that serve nothing yet (Ray names them ray::IDLE)."""
    import psutil
    from ray._private import ray_constants, worker

    raylet = worker._global_node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
    return sum("ray::IDLE" in " ".join(child.cmdline()) for child in psutil.Process(raylet).children())


@pytest.mark.parametrize("without", [[], ["lean-ray-start"]])
def test_ray_started_for_mps_workers_prestarts_no_idle_workers(without):
    """The workers of a job with a runtime_env (--mps: the daemon's variables) never run on the idle
    workers that Ray prestarts as the driver connects, so a sweep that gives one starts none."""
    from types import SimpleNamespace

    import ray

    from sweep.cluster import start_ray

    plan = SimpleNamespace(gpus_per_trial=0, without=without)
    start_ray(None, False, plan, worker_env={"SWEEP_TEST_MPS_PIPE": "/tmp/pipe"})
    try:
        time.sleep(3)  # Ray prestarts them within a second of the driver's connection
        idle = _idle_workers()
        value = ray.get(ray.remote(lambda: os.environ.get("SWEEP_TEST_MPS_PIPE")).remote())
    finally:
        ray.shutdown()
    assert value == "/tmp/pipe"  # the workers still get the variables
    assert (idle == 0) if not without else (idle > 0), f"{idle} idle workers with --without {without}"
