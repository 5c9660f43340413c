"""A CUDA MPS daemon of the sweep's own, started only when asked (`--mps`), always stopped.

    with mps_daemon(Path(".mps/my-sweep")) as env:     # CUDA_MPS_PIPE_DIRECTORY / _LOG_DIRECTORY
        ray.init(runtime_env={"env_vars": env})        # the trials' workers share the GPU through MPS
        tuner.fit()

Why: trials on fractional GPUs are separate processes, and without MPS the GPU time-slices between
their contexts; a batch-4 step leaves most of the GPU idle, so with MPS the kernels of several trials
run side by side (sweep.bench measures the difference). MPS changes how every process that uses the
daemon's pipe directory shares the GPU, so it is never started unless asked, only on this machine's
local Ray (not on a cluster joined with --address), in a folder of this sweep's own.

Stopping: `echo quit | nvidia-cuda-mps-control` on every exit of the `with` block (return,
exception, Ctrl-C, SIGTERM turned into SystemExit by the launcher), after Ray has shut down, then
SIGTERM/SIGKILL to whatever of the daemon is left. A watchdog in its own process session holds a
pipe from the driver and does the same when the driver dies any other way (SIGKILL, OOM killer),
so no daemon outlives its sweep.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

log = logging.getLogger(__name__)

CONTROL = "nvidia-cuda-mps-control"
PIPE_ENV, LOG_ENV = "CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY"
DISMISS = b"stopped\n"  # what the driver writes to its watchdog once it has stopped the daemon itself


class MPSError(RuntimeError):
    """The MPS daemon could not be started; the message says why and what to do."""


def check_mps_available() -> None:
    """Raise MPSError unless this machine can run an MPS daemon (checked before any compute)."""
    if shutil.which(CONTROL) is None:
        raise MPSError(
            f"--mps needs {CONTROL} (part of the NVIDIA driver utilities) on PATH; it is not here. "
            "Install the driver's utilities or run without --mps."
        )


def mps_env(folder: Path) -> dict[str, str]:
    return {PIPE_ENV: str(folder / "pipe"), LOG_ENV: str(folder / "log")}


@contextmanager
def mps_daemon(folder: Path, stop_timeout_s: float = 30.0) -> Iterator[dict[str, str]]:
    """Start an MPS control daemon with its pipe and log folders under `folder`; yields the
    environment variables that make a process its client. Give them to the trials' workers only
    (Ray's runtime_env): a client process keeps the daemon from quitting until it exits, and the
    driver, which builds the feature cache on the GPU, lives as long as this block."""
    check_mps_available()
    env = mps_env(folder.resolve())
    for path in env.values():
        Path(path).mkdir(parents=True, exist_ok=True)
    started = subprocess.run([CONTROL, "-d"], env={**os.environ, **env}, capture_output=True, text=True)
    if started.returncode != 0:
        raise MPSError(
            f"{CONTROL} -d failed (exit {started.returncode}): {started.stderr.strip()[:300]}. "
            f"Its log is in {env[LOG_ENV]}. Run without --mps, or stop the other MPS daemon first."
        )
    watchdog = _start_watchdog(env)
    log.info("started an MPS daemon (pipe %s)", env[PIPE_ENV])
    try:
        yield env
    finally:
        stop_daemon(env, stop_timeout_s)
        _dismiss(watchdog)


@contextmanager
def sigterm_as_exit():
    """SIGTERM raises SystemExit, so that `finally` blocks (stopping the MPS daemon) run."""

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop_daemon(env: dict[str, str], timeout_s: float = 30.0) -> None:
    """`echo quit | nvidia-cuda-mps-control` for the daemon of `env`. `quit` waits for the daemon's
    clients to exit; whatever of it is still running after `timeout_s` is terminated."""
    pipe = env[PIPE_ENV]
    try:
        subprocess.run(
            [CONTROL], input="quit\n", env={**os.environ, **env}, capture_output=True, text=True,
            timeout=timeout_s,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as err:
        log.warning("MPS daemon of %s did not quit (%s); terminating it", pipe, err)
    deadline = time.monotonic() + timeout_s
    while daemon_processes(pipe) and time.monotonic() < deadline:
        time.sleep(0.2)
    for sig in (signal.SIGTERM, signal.SIGKILL):  # only where the daemon outlived its quit
        left = daemon_processes(pipe)
        for pid in left:
            with suppress(ProcessLookupError):
                os.kill(pid, sig)
        if left:
            time.sleep(1.0)
    left = daemon_processes(pipe)
    if left:
        log.error("MPS processes %s of %s are still running; stop them by hand (kill %s)", left, pipe, left)
    else:
        log.debug("stopped the MPS daemon (pipe %s)", pipe)  # after the summary: the console ends with it


def daemon_processes(pipe: str) -> list[int]:
    """PIDs of the MPS control daemon and servers (and their quit clients) using pipe directory `pipe`:
    processes named nvidia-cuda-mps-* whose environment names it."""
    marker = f"{PIPE_ENV}={pipe}".encode()
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if not (proc / "comm").read_text().startswith("nvidia-cuda-mps"):
                continue
            if marker in (proc / "environ").read_bytes().split(b"\0"):
                pids.append(int(proc.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return pids


def _start_watchdog(env: dict[str, str]) -> subprocess.Popen:
    """A process in its own session that quits the daemon once our end of its stdin closes,
    which the kernel does for us however this process ends."""
    return subprocess.Popen(
        [sys.executable, "-m", "sweep.mps", env[PIPE_ENV], env[LOG_ENV]],
        stdin=subprocess.PIPE,
        start_new_session=True,
        env={**os.environ, **env},
    )


def _dismiss(watchdog: subprocess.Popen) -> None:
    """The daemon was stopped here: tell the watchdog so, and let it go."""
    with suppress(OSError):
        watchdog.stdin.write(DISMISS)
        watchdog.stdin.close()
    with suppress(subprocess.TimeoutExpired):
        watchdog.wait(timeout=5)


def _watch(pipe: str, log_dir: str) -> None:
    # read() returns at EOF: the driver closed the pipe (after DISMISS) or died (without it)
    if sys.stdin.buffer.read() != DISMISS:
        stop_daemon({PIPE_ENV: pipe, LOG_ENV: log_dir})


if __name__ == "__main__":
    _watch(sys.argv[1], sys.argv[2])
