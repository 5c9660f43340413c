"""Trials that start before the driver has prepared what they share.

A trial needs what the driver prepares (sweep/prepare.py: the data split, the feature cache, the
codec's reference) and the sweep's MLflow run. On a GPU machine that preparation takes the driver
tens of seconds (its imports, encoding the data), and a trial's new worker process about as long to
start and import. So the driver starts Tune first and prepares beside it: each trial does its imports,
then waits at the gate until the driver opens it with the context. The gate is an entry in Ray's
key-value store (where Tune keeps its own registry), so it needs no process of its own.

    gate = ContextGate(plan.experiment)                       # once Ray is up
    tuner = tune.Tuner(tune.with_parameters(train_trial, gate=gate),
                       run_config=tune.RunConfig(stop=gate.stopper(), ...), ...)
    gate.open(sealed, tracking)   # the preparation's SealedContext and the MLflow parent run;
                                  # gate.close(reason) where preparation failed

The context reaches the driver sealed (pickled where it was made): unpickling it would import all a
trial imports (torch, the codec, the evaluation code), seconds of the driver's time. The trials open it.

A closed gate ends the sweep: the trials waiting there return without training, and the stopper
stops Tune, so that the driver can say what went wrong.
"""

from __future__ import annotations

import dataclasses
import pickle as std_pickle
import time
import uuid
from dataclasses import dataclass

import ray.cloudpickle as pickle
from ray import tune
from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_get, _internal_kv_put

_CLOSED: dict[str, str] = {}  # experiment -> why its preparation failed, for PreparationStopper
_NAMESPACE = "sweep-gate"
POLL_S = 0.1  # how often a waiting trial looks: a lookup in Ray's GCS, well under a millisecond


@dataclass(frozen=True)
class SealedContext:
    """The trials' TrialContext (without tracking), pickled by the preparation; what of it the driver
    reads besides, in the clear."""

    pickled: bytes
    cache_dir: str

    @classmethod
    def seal(cls, context) -> SealedContext:
        return cls(std_pickle.dumps(context), context.cache_dir)


class PreparationFailed:
    """What a closed gate hands its trials instead of the context."""

    def __init__(self, reason: str):
        self.reason = reason


class ContextGate:
    """The driver's side (open, close, stopper, remove) and the trials' (wait). Pickles to the trials
    with tune.with_parameters: it holds the experiment's name and its key, new for every driver."""

    def __init__(self, experiment: str):
        self.experiment = experiment
        self.key = f"{experiment}/{uuid.uuid4().hex}"
        _CLOSED.pop(experiment, None)  # a sweep resumed in the same process after a failed preparation

    def open(self, sealed: SealedContext, tracking) -> None:
        _internal_kv_put(self.key, pickle.dumps((sealed.pickled, tracking)), namespace=_NAMESPACE)

    def close(self, reason: str) -> None:
        _CLOSED[self.experiment] = reason
        _internal_kv_put(self.key, pickle.dumps(PreparationFailed(reason)), namespace=_NAMESPACE)

    def remove(self) -> None:
        """Once the sweep is over: the entry out of Ray's store."""
        _internal_kv_del(self.key, namespace=_NAMESPACE)

    def wait(self):
        """The context once the driver opens the gate (PreparationFailed where it closed it)."""
        while (value := _internal_kv_get(self.key, namespace=_NAMESPACE)) is None:
            time.sleep(POLL_S)
        opened = pickle.loads(value)
        if isinstance(opened, PreparationFailed):
            return opened
        context, tracking = opened
        return dataclasses.replace(std_pickle.loads(context), tracking=tracking)

    def stopper(self) -> PreparationStopper:
        return PreparationStopper(self.experiment)


class PreparationStopper(tune.Stopper):
    """Stops the whole sweep once its preparation failed. It holds the experiment's name only: it is
    saved with Tune's state, and on --resume it reads the closing of the resumed driver's gate."""

    def __init__(self, experiment: str):
        self.experiment = experiment

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.experiment in _CLOSED


def train_trial(config: dict, gate: ContextGate) -> None:
    """Tune's trainable: a new worker's imports (seconds, while the driver prepares), then the sweep's
    context from the gate, then the trial (sweep.trainable.train_trial, whose name it keeps so that a
    sweep started by an earlier version resumes)."""
    from sweep.hosted_run import start_host

    start_host()  # mlflow imported in a process of the worker's own, beside the trial's imports
    from sweep.trainable import train_trial as run_trial

    began = time.perf_counter()
    context = gate.wait()
    if isinstance(context, PreparationFailed):
        return  # the driver says why and stops the sweep
    run_trial(config, context, waited_for_driver=time.perf_counter() - began)
