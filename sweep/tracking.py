"""MLflow: one parent run per sweep (made by the driver), one child run per trial (made by the trial).

    target = open_sweep_tracking(uri, "beta_dim-smoke-20261125-2101", workdir, params, tags)
    run = TrialRun.find_or_create(target, trial_id="a1b2_00000", name="beta=0.01 dim=32", params={...})
    run.log_metrics({"train/loss": 1.2}, step=100)
    run.log_artifacts(folder, "audio")

Why by hand and not through Ray's MLflow integrations : `MLflowLoggerCallback` logs from
the driver and `setup_mlflow` left workers on the wrong tracking URI (ray#36257, #45456), and nested
runs do not work through them (ray#19978). So the driver creates the experiment and the parent
run before any trial starts (creating them from many processes races: mlflow#4123), and every
trial talks to MLflow with an explicit URI and experiment id, marking its run as a child with the
`mlflow.parentRunId` tag. A retried or resumed trial finds its child run by the `sweep.trial_id`
tag and continues it, so a trial never gets two runs.

Logging from a trial is retried with backoff and, if MLflow stays away, reported as a warning: the
trial's results are in Tune's storage either way.

mlflow itself is imported where it is first used, not with this module: `python -m sweep.launch`
and the driver reach Ray without its seconds of imports, and a trial imports it beside its build.
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

from sweep.objective import OBJECTIVES
from sweep.storage import folder_bytes

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Param

log = logging.getLogger(__name__)

DEFAULT_STORE = "mlflow.db"
PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "sweep.trial_id"
ROLE_TAG = "sweep.role"
_RETRY_DELAYS = (0.5, 1.0)


class TrackingUnreachable(RuntimeError):
    pass


def default_uri(workdir: str | os.PathLike) -> str:
    """MLflow's own default store since 3.7, as an absolute path: trials run in other folders."""
    return f"sqlite:///{(Path(workdir) / DEFAULT_STORE).resolve()}"


def limit_http_retries() -> None:
    """MLflow retries an HTTP call for minutes by default: neither a trial nor the driver may stall on a
    server that went away (our own _retry covers short hiccups). A user's settings win. Called before
    every client this module makes (MLflow reads these when it sends)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def mlflow_client(uri: str) -> MlflowClient:
    from mlflow import MlflowClient

    limit_http_retries()
    return MlflowClient(uri)


# How long the check waits for a server that took the connection to answer. A wrong address is refused
# at once whatever this is; a server still starting takes connections before it answers: `mlflow server`
# answered its first request 5.1 s after its port opened, on two idle cores.
CHECK_TIMEOUT_S = 20


@contextmanager
def _fail_fast_http():
    """No retry storm while checking a server: MLflow retries HTTP for minutes by default."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT=str(CHECK_TIMEOUT_S))
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def check_reachable(uri: str) -> None:
    """Fail at once, naming the URI and the fix, when MLflow cannot be reached at `uri`."""
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if not folder.is_dir():
            raise TrackingUnreachable(
                f"MLflow store {uri}: the folder {folder} does not exist. Create it, or pass "
                f"--mlflow-uri sqlite:///mlflow.db to use the working folder."
            )
    try:
        with _fail_fast_http():
            mlflow_client(uri).search_experiments(max_results=1)
    except Exception as err:  # MlflowException, connection errors, SQL errors: all mean the same here
        hint = (
            "start the server (e.g. `mlflow server --host 127.0.0.1 --port 5000`) or"
            if uri.startswith("http")
            else "check the path and permissions, or"
        )
        raise TrackingUnreachable(
            f"MLflow tracking URI {uri} is unreachable ({type(err).__name__}: {str(err)[:200]}). "
            f"To fix: {hint} leave --mlflow-uri out to use sqlite:///mlflow.db in the working folder."
        ) from err


@dataclass(frozen=True)
class SweepTracking:
    """Everything a trial needs to log into the sweep's parent run; plain data, pickles to workers."""

    uri: str
    experiment_id: str
    parent_run_id: str
    tags: Mapping[str, str]  # carried by every child run: git commit, data fingerprint, codec, ...


def open_sweep_tracking(
    uri: str, experiment: str, artifact_root: Path | None, params: Mapping, tags: Mapping[str, str]
) -> SweepTracking:
    """Create (or reuse) the experiment and start the sweep's parent run."""
    client = mlflow_client(uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        experiment_id = found.experiment_id
    else:
        location = artifact_root.resolve().as_uri() if artifact_root and uri.startswith("sqlite") else None
        experiment_id = client.create_experiment(experiment, artifact_location=location)
        # MLflow 3's UI opens an experiment as GenAI traces unless told it holds training runs.
        client.set_experiment_tag(experiment_id, "mlflow.experimentKind", "custom_model_development")
    run = client.create_run(experiment_id, run_name=experiment, tags={**tags, ROLE_TAG: "sweep"})
    client.log_batch(run.info.run_id, params=_params(params))
    return SweepTracking(uri, experiment_id, run.info.run_id, dict(tags))


def reopen_sweep_tracking(uri: str, parent_run_id: str, tags: Mapping[str, str]) -> SweepTracking:
    """The same parent run again, for --resume; it is marked running until the sweep ends."""
    from mlflow.entities import RunStatus

    client = mlflow_client(uri)
    run = client.get_run(parent_run_id)
    client.update_run(parent_run_id, status=RunStatus.to_string(RunStatus.RUNNING))
    return SweepTracking(uri, run.info.experiment_id, parent_run_id, dict(tags))


def checked_sweep_tracking(
    uri: str,
    experiment: str,
    artifact_root: Path | None,
    params: Mapping,
    tags: Mapping[str, str],
    resume_run_id: str | None = None,
) -> SweepTracking:
    """check_reachable, then the sweep's parent run: a new one, or resume_run_id's again (--resume). The
    driver runs this in a process of its own (sweep/process_call.py), so that mlflow's imports and the
    store's first connection do not hold its interpreter while Ray starts."""  # fmt: skip
    check_reachable(uri)
    if resume_run_id:
        return reopen_sweep_tracking(uri, resume_run_id, tags)
    return open_sweep_tracking(uri, experiment, artifact_root, params, tags)


def add_sweep_tags(sweep: SweepTracking, tags: Mapping[str, str]) -> SweepTracking:
    """Tag the parent run with `tags` too (the data's, once the driver has prepared it); returns the
    SweepTracking that carries them to the child runs as well."""
    from mlflow.entities import RunTag

    batch = [RunTag(key, str(value)) for key, value in tags.items()]
    mlflow_client(sweep.uri).log_batch(sweep.parent_run_id, tags=batch)
    return SweepTracking(sweep.uri, sweep.experiment_id, sweep.parent_run_id, {**sweep.tags, **tags})


def log_sweep_metrics(sweep: SweepTracking, metrics: Mapping[str, float]) -> None:
    """Metrics of the sweep as a whole (the codec's reference reconstruction, the constraint's bound)."""
    from mlflow.entities import Metric

    stamp = int(time.time() * 1000)
    batch = [Metric(k, float(v), stamp, 0) for k, v in metrics.items()]
    mlflow_client(sweep.uri).log_batch(sweep.parent_run_id, metrics=batch)


def finish_sweep(tracking: SweepTracking, status: str = "FINISHED") -> None:
    mlflow_client(tracking.uri).set_terminated(tracking.parent_run_id, status=status)


# How a trial ended (sweep.status) -> the MLflow run status.
RUN_STATUS = {"completed": "FINISHED", "stopped early": "KILLED", "diverged": "FAILED", "error": "FAILED"}


def end_trial_run(sweep: SweepTracking, trial_id: str, status: str) -> bool:
    """Close a trial's child run once Tune has recorded how the trial ended.

    Trials never close their own run: a result Tune has not recorded yet (driver killed) is
    produced again on --resume, and the run stays open until then. False if no open run was found."""
    client = mlflow_client(sweep.uri)
    query = (f"tags.`{TRIAL_TAG}` = '{trial_id}' and tags.`{PARENT_TAG}` = '{sweep.parent_run_id}' "
             "and attributes.status = 'RUNNING'")  # fmt: skip
    runs = _retry(lambda: client.search_runs([sweep.experiment_id], query, max_results=1))
    for run in runs:
        _retry(lambda r=run: client.set_tag(r.info.run_id, "sweep.status", status))
        _retry(lambda r=run: client.set_terminated(r.info.run_id, status=RUN_STATUS.get(status, "FAILED")))
    return bool(runs)


def mlflow_artifact_bytes(sweep: SweepTracking) -> int | None:
    """Bytes of the sweep's runs' artifacts where MLflow keeps them in a local folder; None elsewhere
    (a server's store, object storage) or when MLflow cannot be asked."""
    try:
        runs = mlflow_client(sweep.uri).search_runs([sweep.experiment_id], max_results=10_000)
    except Exception:  # MLflow away: the storage line goes without this figure
        return None
    folders = [urlparse(r.info.artifact_uri) for r in runs]
    if not folders or any(f.scheme != "file" for f in folders):
        return None
    return sum(folder_bytes(Path(unquote(f.path))) for f in folders)


def _params(params: Mapping) -> list[Param]:
    from mlflow.entities import Param
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    return [Param(str(k), str(v)[:MAX_PARAM_VAL_LENGTH]) for k, v in params.items()]


class TrialRun:
    """A trial's child run; every call is retried, and a lasting failure is logged, not raised."""

    GIVE_UP_AFTER = 2  # failed calls in a row: MLflow is away; stop slowing the trial down

    def __init__(self, client: MlflowClient, run_id: str):
        self.client, self.run_id = client, run_id
        self.failures = 0
        self._background: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []

    def log_in_background(self) -> None:
        """From now on log_metrics returns at once: one thread of this run's own sends the metrics, in
        order, with the same retries; every other call waits for what is queued first."""
        self._background = self._background or ThreadPoolExecutor(1, thread_name_prefix="mlflow-metrics")

    def flush(self) -> None:
        """Wait until every queued log_metrics call has been sent (or given up on)."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    @classmethod
    def find_or_create(
        cls,
        sweep: SweepTracking,
        trial_id: str,
        name: str,
        params: Mapping,
        tags: Mapping[str, str],
        count_attempt: bool = True,
    ) -> TrialRun:
        from mlflow.entities import Metric, RunStatus

        client = mlflow_client(sweep.uri)
        query = f"tags.`{TRIAL_TAG}` = '{trial_id}' and tags.`{PARENT_TAG}` = '{sweep.parent_run_id}'"
        found = _retry(lambda: client.search_runs([sweep.experiment_id], query, max_results=1))
        if found and not count_attempt:
            return cls(client, found[0].info.run_id)
        if found:
            run = cls(client, found[0].info.run_id)
            attempt = int(found[0].data.tags.get("sweep.attempt", "1")) + 1
            run.set_tags({"sweep.attempt": str(attempt)})
            client.update_run(run.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
            return run
        all_tags = {**sweep.tags, **tags, PARENT_TAG: sweep.parent_run_id, TRIAL_TAG: trial_id,
                    ROLE_TAG: "trial", "sweep.attempt": "1"}  # fmt: skip
        created = _retry(lambda: client.create_run(sweep.experiment_id, run_name=name, tags=all_tags))
        run = cls(client, created.info.run_id)
        # The objectives come first, NaN until the trial's final evaluation measures them: MLflow's
        # compare view opens on the first metric its runs logged. A trial ASHA stops keeps the NaN.
        stamp = int(time.time() * 1000)
        placeholders = [Metric(name, float("nan"), stamp, 0) for name in OBJECTIVES]
        run._call(lambda: client.log_batch(run.run_id, metrics=placeholders, params=_params(params)))
        return run

    def _call(self, fn: Callable) -> None:
        if self.failures >= self.GIVE_UP_AFTER:
            return
        try:
            _retry(fn)
            self.failures = 0
        except Exception as err:
            self.failures += 1
            log.warning("MLflow logging to run %s failed after retries: %s", self.run_id, err)
            if self.failures >= self.GIVE_UP_AFTER:
                log.warning(
                    "MLflow unreachable: this trial stops logging to it; its results stay in Tune's storage. "
                    "Afterwards: python -m sweep.sync <experiment>"
                )

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        batch = [Metric(k, float(v), stamp, step) for k, v in metrics.items() if _is_number(v)]
        for i in range(0, len(batch), 900):  # MLflow takes at most 1000 metrics per batch
            send = functools.partial(
                self._call, lambda chunk=batch[i : i + 900]: self.client.log_batch(self.run_id, metrics=chunk)
            )
            if self._background is None:
                send()
            else:
                self._pending = [f for f in self._pending if not f.done()] + [self._background.submit(send)]

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.flush()
        for key, value in tags.items():
            self._call(lambda k=key, v=value: self.client.set_tag(self.run_id, k, str(v)))

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        self.flush()
        self._call(lambda: self.client.log_artifact(self.run_id, str(path), folder))

    def log_artifacts(self, directory: Path, folder: str | None = None) -> None:
        self.flush()
        self._call(lambda: self.client.log_artifacts(self.run_id, str(directory), folder))

    def log_table(self, frame, artifact_file: str) -> None:
        self.flush()
        self._call(lambda: self.client.log_table(self.run_id, frame, artifact_file))

    def finish(self, status: str = "FINISHED") -> None:
        self.flush()
        self._call(lambda: self.client.set_terminated(self.run_id, status=status))


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _retry(fn: Callable):
    for delay in _RETRY_DELAYS:
        try:
            return fn()
        except Exception as err:  # SQLite "database is locked", HTTP hiccups
            log.info("MLflow call failed (%s); retrying in %.1f s", err, delay)
            time.sleep(delay)
    return fn()


def git_commit(folder: Path) -> str:
    """The code's commit, for the runs' `git.commit` tag ("unknown" outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def sweep_params(plan) -> dict:
    """The sweep's parent run params (plan: a sweep.plan.SweepPlan): what the sweep is, as MLflow shows it."""
    return {
        "space": plan.space,
        "search": plan.search,
        "preset": plan.preset.name,
        "num_samples": plan.num_samples,
        "steps_per_10k": plan.preset.steps_per_10k,
        "scheduler": plan.scheduler,
        "seed": plan.seed,
        "codec": plan.codec,
        "data": plan.data,
        "cpus_per_trial": plan.cpus_per_trial,
        "gpus_per_trial": plan.gpus_per_trial,
        "compile": plan.compiled,
        "fused_optimizer": plan.fused_optimizer,
        "mps": plan.mps,
        "without": ",".join(plan.without) or "none",
        "constraint": plan.describe_constraint(),
        **{f"fixed.{k}": v for k, v in plan.fixed.items()},
    }
