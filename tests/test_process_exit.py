"""sweep.exit_without_teardown: the driver's process ends once its exit handlers have run and its
output is flushed, without Python's teardown of its modules (1.4-1.9 s of a sweep's end on an H200)."""

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import atexit, sys, threading, time
    from pathlib import Path
    from sweep import exit_without_teardown

    log = Path(sys.argv[1])

    class Teardown:  # a module global: its finaliser runs when Python tears the modules down
        def __del__(self):
            with log.open("a") as f:
                f.write("teardown ")

    kept = Teardown()
    atexit.register(lambda: log.open("a").write("atexit "))
    if sys.argv[3] == "thread":
        def late():
            time.sleep(0.5)
            log.open("a").write("thread ")
        threading.Thread(target=late).start()  # not a daemon: Python's exit waits for it
    print("the summary", end="")  # no newline: still in stdout's buffer, which is a pipe
    (exit_without_teardown if sys.argv[2] == "fast" else sys.exit)(3)
    """
)


@pytest.mark.parametrize(
    ("how", "thread", "written"),
    [
        ("fast", "none", "atexit "),  # the handlers ran, the teardown did not
        ("python", "none", "atexit teardown "),  # Python's own exit, for comparison
        ("fast", "thread", "thread atexit teardown "),  # a live thread: Python's exit, which waits for it
    ],
)
def test_the_driver_exits_after_its_handlers_without_the_teardown(tmp_path, how, thread, written):
    log = tmp_path / "log"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(log), how, thread], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 3, done.stderr
    assert done.stdout == "the summary"
    assert log.read_text() == written
