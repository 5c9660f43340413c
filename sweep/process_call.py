"""One call of a function in a process of its own, started ahead of the call so that its imports are
done by the time it is made.

The driver opens its MLflow run (mlflow's imports, the store's first connection) and prepares a sweep's
data (sweep/prepare.py: torch, the codec, tens of seconds on a GPU) this way. In threads of the driver,
their imports and their Python shared one interpreter lock with Ray's start and Tune's set-up and slowed
each; the preparation's CUDA context stayed in the driver for the whole sweep. Here each lives in a
child process that ends once it has answered.

    with ProcessCall("sweep.prepare:prepare_sweep", verbose) as child:  # spawned; it imports the module
        ...
        sealed, tags, reference = child.call(plan)  # blocks; the child's exception is raised here

The child is spawned, not forked (the driver has Ray's and gRPC's threads), and ignores Ctrl-C: the
driver stops it (close, on leaving the with block), and as a daemon it is stopped at the driver's exit
too; one left by a killed driver ends when its work is done, finding no one to answer.
"""

from __future__ import annotations

import importlib
import multiprocessing
import pickle
import signal


def resolve(target: str):
    """The function a "module:function" target names, its module imported."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


class ProcessCallFailed(RuntimeError):
    """The child died without an answer, or its exception could not be sent back."""


class ProcessCall:
    def __init__(self, target: str, verbose: bool = False):
        """target: "module:function", imported by the child as it starts."""
        context = multiprocessing.get_context("spawn")
        self.target = target
        self._connection, child_end = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(child_end, target, verbose), name=f"sweep {target}", daemon=True
        )
        self._process.start()
        child_end.close()  # the child's end lives in the child: a dead child reads as EOF here

    def call(self, *args):
        """The target's result for args, or its exception, raised here. Once per ProcessCall."""
        self._connection.send(args)
        try:
            outcome, value = self._connection.recv()
        except EOFError:
            self._process.join(5)
            raise ProcessCallFailed(
                f"{self.target} died in its process (exit code {self._process.exitcode}) without an answer"
            ) from None
        if outcome == "error":
            raise value
        return value

    def close(self) -> None:
        """Stop the child where it still runs (never called, or interrupted); it ends by itself after
        answering."""
        self._connection.close()
        if self._process.is_alive():
            self._process.terminate()
        self._process.join(5)

    def __enter__(self) -> ProcessCall:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _serve(connection, target: str, verbose: bool) -> None:
    """The child: import the target, then answer one call and end."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from sweep.console import configure_logging

    configure_logging(verbose)
    try:
        function = resolve(target)
    except BaseException as err:  # reported when the call comes, as the call's error
        function, failed = None, err
    try:
        args = connection.recv()
    except EOFError:  # the driver stopped before calling
        return
    try:
        if function is None:
            raise failed
        answer = ("ok", function(*args))
    except BaseException as err:
        answer = ("error", err)
    try:
        connection.send(answer)
    except (pickle.PicklingError, TypeError, AttributeError) as err:  # an answer that cannot travel
        kind = answer[1] if answer[0] == "error" else err
        connection.send(("error", ProcessCallFailed(f"{target}: {type(kind).__name__}: {kind}")))
