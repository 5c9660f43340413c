"""A trial's MLflow run kept in a process of its worker's own.

A trial opens its MLflow child run while it builds its codec and VAE. Done in the trial's process,
mlflow's imports and calls held the interpreter lock beside the build: on an H200 the codec took
3.3-5.3 s to build beside them, against 1.0 s alone. Here each trial worker spawns a host
(sweep.process_call.ProcessHost) at the gate, before the trial's own imports (sweep/gate.py). The host
imports mlflow beside those imports, then keeps the runs of the worker's trials and sends what they
log. The worker process never imports mlflow. `--without mlflow-host` keeps the run in the trial's
process (sweep.tracking.TrialRun), as before.

    start_host()                                    # the gate, before `import sweep.trainable`
    run = open_trial_run(tracking, hosted=True, trial_id=..., name=..., params=..., tags=...)
    run.log_metrics({"train/loss": 1.5}, step=50)   # TrialRun's calls, answered by the host

The host is a daemon child of the worker and ends with it, killed or not (its end of the pipe closes).
A trial's last call sets tags, which waits for the metrics queued before it, as in the trial's process.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from sweep.process_call import ProcessCallFailed, ProcessHost

log = logging.getLogger(__name__)

HOST_IMPORTS = ("mlflow", "sweep.tracking")  # what the host imports as it starts
FIND_OR_CREATE = "sweep.tracking:TrialRun.find_or_create"
_HOST: list[ProcessHost] = []  # this worker process's host, once started
_RUN: list[int] = []  # the handle of the run it keeps for this worker's current trial


def start_host() -> None:
    """Spawn this process's host unless it has one (a reused worker keeps its host for its next trials)."""
    if not _HOST:
        _HOST.append(ProcessHost(HOST_IMPORTS))


def stop_host() -> None:
    """End this process's host, if any (a trial that keeps its run itself has no use for it)."""
    if _HOST:
        _HOST.pop().close()
        _RUN.clear()


def open_trial_run(tracking, hosted: bool, **find_or_create):
    """The trial's child run (sweep.tracking.TrialRun.find_or_create's arguments after `tracking`): kept
    in this process's host when `hosted` and the host answers, else in this process. Raises what
    find_or_create raises (MLflow away)."""
    if hosted and _HOST:
        host = _HOST[0]
        try:
            # A worker runs its trials one at a time (sweep.trainable.TrialThread): the last one's run is
            # over, and the host lets it go (its metrics already queued are still sent).
            for handle in _RUN:
                host.drop(handle)
            _RUN[:] = [host.make(FIND_OR_CREATE, tracking, **find_or_create)]
            return HostedTrialRun(host, _RUN[0])
        except ProcessCallFailed as err:
            log.warning("%s; the trial keeps its MLflow run in its own process", err)
    stop_host()
    from sweep.tracking import TrialRun

    return TrialRun.find_or_create(tracking, **find_or_create)


class HostedTrialRun:
    """sweep.tracking.TrialRun's calls, sent to the host that keeps the run. Like TrialRun, it raises
    nothing for MLflow's sake: a host that has gone is logged once, and the calls after it do nothing
    (the trial's results stay in Tune's storage, for `python -m sweep.sync`)."""

    def __init__(self, host: ProcessHost, handle: int):
        self._host: ProcessHost | None = host
        self._handle = handle

    def _send(self, method: str, *args) -> None:
        if self._host is None:
            return
        try:
            self._host.call(self._handle, method, *args)
        except ProcessCallFailed as err:
            self._host = None
            log.warning(
                "%s: this trial stops logging to MLflow; its results stay in Tune's storage. "
                "Afterwards: python -m sweep.sync <experiment>",
                err,
            )

    def log_in_background(self) -> None:
        self._send("log_in_background")

    def flush(self) -> None:
        self._send("flush")

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._send("log_metrics", dict(metrics), step)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._send("set_tags", dict(tags))

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        self._send("log_artifact", path, folder)

    def log_artifacts(self, directory: Path, folder: str | None = None) -> None:
        self._send("log_artifacts", directory, folder)

    def log_table(self, frame, artifact_file: str) -> None:
        self._send("log_table", frame, artifact_file)

    def finish(self, status: str = "FINISHED") -> None:
        self._send("finish", status)
