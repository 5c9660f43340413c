"""sweep.process_call: one call in a process spawned ahead of it (how the driver prepares a sweep's data),
and objects kept in such a process (a trial worker's MLflow runs)."""

import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from sweep.process_call import ProcessCall, ProcessCallFailed, ProcessHost


def test_the_answer_comes_from_the_child_which_then_ends():
    with ProcessCall("os:getpid") as child:
        assert child.call() != os.getpid()
        child._process.join(10)
        assert child._process.exitcode == 0  # it ends by itself once it has answered


def test_the_targets_imports_happen_in_the_child_not_here(tmp_path, monkeypatch):
    (tmp_path / "only_in_child.py").write_text("def double(x):\n    return 2 * x\n")
    monkeypatch.syspath_prepend(tmp_path)  # the spawned child gets this process's sys.path
    with ProcessCall("only_in_child:double") as child:
        assert child.call(21) == 42
    assert "only_in_child" not in sys.modules


def test_the_childs_exception_is_raised_here_with_its_type_and_message():
    with ProcessCall("math:sqrt") as child, pytest.raises(ValueError, match="math domain error"):
        child.call(-1.0)


def test_a_target_that_does_not_import_fails_at_the_call():
    with ProcessCall("no_such_module_here:prepare") as child:
        with pytest.raises(ModuleNotFoundError, match="no_such_module_here"):
            child.call(1)


def test_a_child_that_dies_says_so_with_its_exit_code():
    with ProcessCall("os:_exit") as child:
        with pytest.raises(ProcessCallFailed, match=r"os:_exit died .*exit code 3"):
            child.call(3)


def test_an_answer_that_cannot_be_sent_back_is_an_error_not_a_hang():
    with ProcessCall("threading:Lock") as child:
        with pytest.raises(ProcessCallFailed, match="threading:Lock: TypeError"):
            child.call()


def test_closing_before_the_call_stops_the_child_at_once():
    child = ProcessCall("time:sleep")
    began = time.monotonic()
    child.close()
    assert not child._process.is_alive() and time.monotonic() - began < 5


@pytest.fixture
def host():
    host = ProcessHost(("collections",))
    yield host
    host.close()


def test_a_hosts_objects_live_in_its_child_and_answer_calls(host):
    counts = host.make("collections:Counter", "abracadabra")
    assert host.call(counts, "most_common", 1) == [("a", 5)]
    host.call(counts, "update", "bbbbb")
    assert host.call(counts, "most_common", 1) == [("b", 7)]
    assert host.call(host.make("os:getpid"), "__int__") != os.getpid()
    half = host.make("fractions:Fraction.from_float", 0.5)  # a class's method as the target
    assert host.call(half, "__str__") == "1/2"
    host.drop(counts)
    with pytest.raises(KeyError):  # a dropped handle is gone from the child
        host.call(counts, "most_common", 1)


def test_a_methods_exception_is_raised_here_and_the_host_goes_on(host):
    words = host.make("collections:OrderedDict")
    with pytest.raises(KeyError, match="missing"):
        host.call(words, "pop", "missing")
    host.call(words, "__setitem__", "k", 1)
    assert host.call(words, "popitem") == ("k", 1)


def test_an_answer_that_cannot_travel_is_an_error_and_the_host_goes_on(host):
    condition = host.make("threading:Condition")
    with pytest.raises(ProcessCallFailed, match="call 1: TypeError: cannot pickle"):
        host.call(condition, "__getattribute__", "_lock")  # its lock, which cannot be pickled
    assert host.call(condition, "_is_owned") is False  # the host answers the next call


def test_calls_from_several_threads_each_get_their_own_answer(host):
    counts = host.make("collections:Counter")

    def add(letter):
        for _ in range(50):
            assert host.call(counts, "update", letter) is None

    threads = [threading.Thread(target=add, args=(letter,)) for letter in "wxyz"]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(host.call(counts, "most_common")) == [(letter, 50) for letter in "wxyz"]


def test_a_hosts_imports_happen_in_its_child_and_their_failure_answers_every_request(tmp_path, monkeypatch):
    (tmp_path / "only_in_host.py").write_text("class Box:\n    def get(self):\n        return 7\n")
    monkeypatch.syspath_prepend(tmp_path)
    host = ProcessHost(("only_in_host",))
    try:
        assert host.call(host.make("only_in_host:Box"), "get") == 7
    finally:
        host.close()
    assert "only_in_host" not in sys.modules
    broken = ProcessHost(("no_such_module_here",))
    try:
        for _ in range(2):
            with pytest.raises(ModuleNotFoundError, match="no_such_module_here"):
                broken.make("collections:Counter")
    finally:
        broken.close()


def test_a_host_that_dies_says_so_with_its_exit_code(host):
    with pytest.raises(ProcessCallFailed, match=r"host process ended \(exit code 3\)"):
        host.make("os:_exit", 3)


def test_a_hosts_child_ends_when_its_parent_dies_without_closing_it(tmp_path):
    """A Ray worker can end with os._exit or be killed: its host must not outlive it."""
    script = textwrap.dedent(
        """
        import os
        from sweep.process_call import ProcessHost
        host = ProcessHost(("collections",))
        print(host.call(host.make("os:getpid"), "__int__"), flush=True)
        os._exit(0)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    child = int(out.stdout.split()[-1])
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{child}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{child}")
