"""The quiet console's trial events (sweep/events.py), driven the way Tune calls them, without Ray."""

import re
from dataclasses import dataclass, field

from sweep.events import TrialEvents
from sweep.launch import parse_args
from sweep.objective import COMPLETED, DIVERGED, PROBE, STATUS, TIME_ATTR
from sweep.plan import make_plan


@dataclass(eq=False)
class FakeTrial:
    name: str
    config: dict
    status: str = "PENDING"
    last_result: dict = field(default_factory=dict)
    path: str = "/results/sweep/t000"

    @property
    def trial_id(self):
        return self.name + "_id"

    def __str__(self):
        return self.name


def events(tmp_path, *flags):
    plan = make_plan(parse_args(["--space", "beta_dim", "--num-samples", "3", *flags]), tmp_path)
    return TrialEvents(plan)


def lines(capsys) -> list[str]:
    return [re.sub(r"^\d\d:\d\d:\d\d ", "", line) for line in capsys.readouterr().out.splitlines()]


def test_one_line_per_event_with_the_sweeps_progress(tmp_path, capsys):
    callback = events(tmp_path, "--scheduler", "none")
    a, b, c = (FakeTrial(f"t00{i}", {"beta": 0.01 * i, "dim": 16 * i}) for i in (1, 2, 3))
    trials = [a, b, c]
    callback.on_trial_start(0, trials, a)  # Tune calls back before the status changes
    a.status = "RUNNING"
    callback.on_trial_start(0, trials, b)
    b.status = "RUNNING"
    a.last_result = {TIME_ATTR: 40, STATUS: COMPLETED, "objective/rollout_k4": -0.76,
                     "objective/teacher_k1": -0.852, "recon/mel": 13.21}  # fmt: skip
    callback.on_trial_complete(0, trials, a)
    a.status = "TERMINATED"
    b.last_result = {TIME_ATTR: 17, STATUS: DIVERGED}
    callback.on_trial_complete(0, trials, b)
    b.status = "TERMINATED"
    callback.on_trial_error(0, trials, c)
    out = lines(capsys)
    assert len(out) == 5
    assert re.fullmatch(r"t001 started: beta=0.01 dim=16, 40 steps +\[0/3 done, 1 running\]", out[0])
    assert out[1].endswith("[0/3 done, 2 running]")
    assert re.fullmatch(
        r"t001 finished at step 40: rollout_k4 -0.760, teacher_k1 -0.852 nats/dim; recon/mel 13.2 "
        r"\[1/3 done, 1 running\]",
        out[2],
    )
    assert out[3].startswith("t002 diverged at step 17") and out[3].endswith("[2/3 done, 0 running]")
    assert "t003 failed for good; its error: /results/sweep/t000/error.txt" in out[4]


def test_asha_rungs_and_stops_are_said_once(tmp_path, capsys):
    callback = events(tmp_path, "--scheduler", "asha")  # smoke: 40 steps, rungs at 10 and 20
    trial = FakeTrial("t004", {"beta": 0.1, "dim": 64})
    callback.on_trial_start(0, [trial], trial)
    trial.status = "RUNNING"
    probe = {PROBE + "objective/rollout_k4": -0.118, PROBE + "objective/teacher_k1": -0.402}
    for step in (5, 10, 15):
        callback.on_trial_result(0, [trial], trial, {TIME_ATTR: step, **probe})
    trial.last_result = {TIME_ATTR: 10, **probe}  # no status: ASHA stopped it
    callback.on_trial_complete(0, [trial], trial)
    out = lines(capsys)
    assert out[1] == "t004 rung at step 10: probe rollout_k4 -0.118, teacher_k1 -0.402 nats/dim"
    assert out[2].startswith("t004 stopped by ASHA at step 10") and out[2].endswith("[1/3 done, 0 running]")
    assert len(out) == 3


def test_without_asha_no_rung_lines(tmp_path, capsys):
    callback = events(tmp_path, "--scheduler", "none")
    trial = FakeTrial("t001", {"beta": 0.1, "dim": 64})
    callback.on_trial_start(0, [trial], trial)
    callback.on_trial_result(0, [trial], trial, {TIME_ATTR: 10})
    assert len(lines(capsys)) == 1
