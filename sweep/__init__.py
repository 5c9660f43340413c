"""The sweep service: `python -m sweep.launch` (README.md)."""

import atexit
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import NoReturn

IMPORTED_AT = time.time()  # when this process first imported the package: a trial worker's imports begin


def process_age() -> float:
    """Seconds since this process started (Linux's /proc; 0.0 where it cannot be read): the driver's
    and the trials' start-up stages are timed from there."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def exit_without_teardown(code: int) -> NoReturn:
    """End this process with `code` once its exit handlers have run (atexit's: Ray's shutdown where it
    still runs, MLflow's, multiprocessing's for its children, logging's) and its streams are flushed,
    without Python's teardown of every module after them: 1.4-1.9 s of the driver's end on the H200s
    (Ray's core worker, gRPC, pandas and the rest) and 1.5 s on a 2-core box, on which nothing the
    sweep keeps depends (Tune's files, MLflow's and Optuna's stores are written as the sweep goes).
    Where a thread that Python would wait for is still running, Python's own exit waits for it."""
    main = threading.main_thread()
    if any(t is not main and not t.daemon and t.is_alive() for t in threading.enumerate()):
        sys.exit(code)
    atexit._run_exitfuncs()  # each once, latest first, as at Python's exit; then none are left
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed, or a pipe whose reader has gone
            pass
    os._exit(code)


def stages_text(seconds: dict[str, float]) -> str:
    """ "imports and plan 2.9, Ray 10.2": how the driver and the preparation log stage times, which
    sweep.bench reads back with stages_from_text."""
    return ", ".join(f"{stage} {value:.1f}" for stage, value in seconds.items())


def stages_from_text(text: str) -> dict[str, float]:
    """stages_text's dict back from its text."""
    return {stage: float(value) for stage, value in re.findall(r"([^,]+?) ([0-9.]+)(?:, |$)", text)}
