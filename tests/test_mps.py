"""The sweep's own MPS daemon is stopped on every exit path (with a stand-in for NVIDIA's control
program, tests/fake_mps/, since CI has no GPU; the real one ran in the H100/H200 benchmark runs)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sweep.mps import PIPE_ENV, MPSError, check_mps_available, daemon_processes, mps_daemon

FAKE = Path(__file__).parent / "fake_mps"


@pytest.fixture
def fake_control(monkeypatch):
    monkeypatch.setenv("PATH", f"{FAKE}{os.pathsep}{os.environ['PATH']}")


def wait_gone(pipe: str, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while daemon_processes(pipe) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not daemon_processes(pipe)


def wait_running(pipe: str, seconds: float = 5.0) -> bool:
    """The stand-in daemon forks into the background: give it a moment to appear."""
    deadline = time.monotonic() + seconds
    while not daemon_processes(pipe) and time.monotonic() < deadline:
        time.sleep(0.05)
    return bool(daemon_processes(pipe))


def test_daemon_runs_inside_the_block_and_is_gone_after_it(fake_control, tmp_path):
    with mps_daemon(tmp_path / "mps") as env:
        assert env[PIPE_ENV] == str(tmp_path / "mps" / "pipe")
        assert wait_running(env[PIPE_ENV]), "the daemon should be running inside the block"
        assert PIPE_ENV not in os.environ or os.environ[PIPE_ENV] != env[PIPE_ENV]  # workers only
        leaving = time.monotonic()
    assert not daemon_processes(env[PIPE_ENV])  # gone when the block is left
    # a daemon that quits is not waited on further (the stop once slept 2 s after every quit)
    assert time.monotonic() - leaving < 1.0


def test_daemon_is_stopped_when_the_sweep_raises(fake_control, tmp_path):
    with pytest.raises(KeyboardInterrupt), mps_daemon(tmp_path / "mps") as env:
        raise KeyboardInterrupt
    assert wait_gone(env[PIPE_ENV], 1.0)


def test_a_daemon_that_ignores_quit_is_terminated(fake_control, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_MPS_IGNORE_QUIT", "1")
    with mps_daemon(tmp_path / "mps", stop_timeout_s=1.0) as env:
        pass
    assert wait_gone(env[PIPE_ENV], 1.0)


def test_the_watchdog_stops_the_daemon_when_the_driver_is_killed(fake_control, tmp_path):
    """SIGKILL runs no finally block: the watchdog, holding a pipe from the driver, stops the daemon."""
    driver = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys, time; from pathlib import Path; from sweep.mps import mps_daemon\n"
            f"with mps_daemon(Path({str(tmp_path / 'mps')!r})):\n"
            "    print('ready', flush=True); time.sleep(60)\n"
        )],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path.cwd())},
    )  # fmt: skip
    try:
        assert driver.stdout.readline().strip() == "ready"
        pipe = str(tmp_path / "mps" / "pipe")
        assert wait_running(pipe)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    assert wait_gone(pipe), "the watchdog should have stopped the daemon"


def test_missing_control_program_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MPSError, match="nvidia-cuda-mps-control .* on PATH"):
        check_mps_available()
