"""sweep.process_call: one call in a process spawned ahead of it (how the driver prepares a sweep's data)."""

import os
import sys
import time

import pytest

from sweep.process_call import ProcessCall, ProcessCallFailed


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
