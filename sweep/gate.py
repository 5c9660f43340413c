"""Trials that start before the driver has prepared what they share.

A trial needs what the driver prepares (sweep/prepare.py: the data split, the feature cache, the
codec's reference) and the sweep's MLflow run. On a GPU machine that preparation takes the driver
tens of seconds (its imports, encoding the data), and a trial's new worker process about as long to
start and import. So the driver starts Tune first and prepares beside it: each trial does its imports,
then waits at the gate, which a small actor holds, until the driver opens it with the context.

    gate = ContextGate(plan.experiment)                       # once Ray is up
    tuner = tune.Tuner(tune.with_parameters(train_trial, gate=gate),
                       run_config=tune.RunConfig(stop=gate.stopper(), ...), ...)
    gate.open(context)     # from the preparing thread; gate.close(reason) where preparation failed

A closed gate ends the sweep: the trials waiting there return without training, and the stopper
stops Tune, so that the driver can say what went wrong.
"""

from __future__ import annotations

import asyncio
import time

import ray
from ray import tune

_CLOSED: dict[str, str] = {}  # experiment -> why its preparation failed, for PreparationStopper


class PreparationFailed:
    """What a closed gate hands its trials instead of the context."""

    def __init__(self, reason: str):
        self.reason = reason


@ray.remote(num_cpus=0)  # takes no trial's CPU
class _GateKeeper:
    def __init__(self):
        self._filled = asyncio.Event()
        self._value = None

    async def fill(self, value) -> None:
        self._value = value
        self._filled.set()

    async def value(self):
        await self._filled.wait()
        return self._value


class ContextGate:
    """The driver's side (open, close, stopper) and the trials' (wait). Pickles to the trials with
    tune.with_parameters: it holds the experiment's name and the actor's handle."""

    def __init__(self, experiment: str):
        self.experiment = experiment
        self._keeper = _GateKeeper.remote()

    def open(self, context) -> None:
        ray.get(self._keeper.fill.remote(context))

    def close(self, reason: str) -> None:
        _CLOSED[self.experiment] = reason
        ray.get(self._keeper.fill.remote(PreparationFailed(reason)))

    def wait(self):
        """The context once the driver opens the gate (PreparationFailed where it closed it)."""
        return ray.get(self._keeper.value.remote())

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
    from sweep.trainable import train_trial as run_trial

    began = time.perf_counter()
    context = gate.wait()
    if isinstance(context, PreparationFailed):
        return  # the driver says why and stops the sweep
    run_trial(config, context, waited_for_driver=time.perf_counter() - began)
