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

A ProcessHost keeps objects in such a process and answers calls on them until its parent goes: a trial
worker's MLflow runs live in one (sweep/hosted_run.py), spawned before the trial's own imports.

    host = ProcessHost(("mlflow", "sweep.tracking"))            # spawned; it imports them
    handle = host.make("sweep.tracking:TrialRun.find_or_create", tracking, ...)
    host.call(handle, "log_metrics", {"loss": 1.0}, 50)         # the method's value, or its exception
"""

from __future__ import annotations

import functools
import importlib
import multiprocessing
import pickle
import signal
import threading


def resolve(target: str):
    """The function a "module:function" (or "module:Class.method") target names, its module imported."""
    module, _, name = target.partition(":")
    return functools.reduce(getattr, name.split("."), importlib.import_module(module))


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
    _send_answer(connection, answer, target)


def _send_answer(connection, answer: tuple, what: str) -> None:
    """Send ("ok", value) or ("error", exception); one that cannot travel (pickling fails) becomes a
    ProcessCallFailed naming `what` and the exception, or else the pickling failure."""
    try:
        connection.send(answer)
    except (pickle.PicklingError, TypeError, AttributeError) as err:
        kind = answer[1] if answer[0] == "error" else err
        connection.send(("error", ProcessCallFailed(f"{what}: {type(kind).__name__}: {kind}")))


class ProcessHost:
    def __init__(self, imports: tuple[str, ...], verbose: bool = False):
        """imports: modules the child imports as it starts, before any call comes."""
        context = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()  # one request and its answer at a time, from any thread
        self._connection, child_end = context.Pipe()
        self._process = context.Process(
            target=_host, args=(child_end, imports, verbose), name="sweep host", daemon=True
        )
        self._process.start()
        child_end.close()

    def make(self, target: str, *args, **kwargs) -> int:
        """A handle to what the "module:function" target returns for the arguments, kept in the child."""
        return self._request(("make", target, None, args, kwargs))

    def call(self, handle: int, method: str, *args, **kwargs):
        """The value of the handle's method for the arguments, or its exception, raised here."""
        return self._request(("call", handle, method, args, kwargs))

    def drop(self, handle: int) -> None:
        """The child forgets the handle's object."""
        self._request(("drop", handle, None, (), {}))

    def _request(self, request: tuple):
        with self._lock:
            try:
                self._connection.send(request)
                outcome, value = self._connection.recv()
            except (EOFError, OSError):
                self._process.join(1)
                raise ProcessCallFailed(
                    f"the host process ended (exit code {self._process.exitcode}) without answering "
                    f"{request[0]} {request[1]}"
                ) from None
        if outcome == "error":
            raise value
        return value

    def close(self) -> None:
        """The child ends, its objects with it (it ends by itself too, once this process has gone)."""
        self._connection.close()
        self._process.join(5)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5)


def _host(connection, imports: tuple[str, ...], verbose: bool) -> None:
    """The host's child: import, then make objects and answer calls on them until the parent goes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from sweep.console import configure_logging

    configure_logging(verbose)
    try:
        for module in imports:
            importlib.import_module(module)
        failed = None
    except BaseException as err:  # every request is answered with it
        failed = err
    objects: dict[int, object] = {}
    made = 0
    while True:
        try:
            kind, target, method, args, kwargs = connection.recv()
        except EOFError:  # the parent closed its end, or died
            return
        try:
            if failed is not None:
                raise failed
            if kind == "make":
                made += 1
                objects[made] = resolve(target)(*args, **kwargs)
                answer = ("ok", made)
            elif kind == "call":
                answer = ("ok", getattr(objects[target], method)(*args, **kwargs))
            else:  # drop
                objects.pop(target, None)
                answer = ("ok", None)
        except BaseException as err:
            answer = ("error", err)
        _send_answer(connection, answer, f"{kind} {target}")
