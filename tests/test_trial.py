"""One trial's pieces without Ray (sweep/trial.py): the training loop's report points, rungs and
checkpoints, divergence, and the checkpoint a trial resumes from."""

import math
import shutil

import pytest
import torch

from models.codec import MimiCodec
from models.training import VAETrainer
from models.vae import BetaVAE, VAEConfig
from sweep.config import PRESETS, TrialParams
from sweep.trial import CheckpointWriter, Diverged, Trial, restore, train, write_checkpoint

PRESET = PRESETS["smoke"]  # 40 steps, a report every 5, a checkpoint every 20
NAMES = ("train/loss", "train/kl")


class FakeTrainer:
    """VAETrainer's loop-facing surface: a step counter and one row of loss terms per step."""

    metric_names = NAMES

    def __init__(self, losses, step=0):
        self.losses, self.step = losses, step

    def train_step_async(self, batch):
        self.step += 1
        return torch.tensor([self.losses[self.step - 1], 2.0 * self.step])


class FakeSampler:
    def batch(self, step):
        return None


def fake_trial(losses, rungs=(), step=0) -> Trial:
    params, trainer = TrialParams.from_config({}, PRESET), FakeTrainer(losses, step)
    return Trial(params, torch.device("cpu"), trainer, None, FakeSampler(), frozenset(rungs), {})


def test_reports_come_every_report_every_steps_at_rungs_and_at_the_end():
    losses = [float(i) for i in range(1, 41)]
    intervals = list(train(fake_trial(losses, rungs=(10, 20, 23)), PRESET))
    assert [i.step for i in intervals] == [5, 10, 15, 20, 23, 25, 30, 35, 40]
    assert [i.step for i in intervals if i.rung] == [10, 20, 23]
    assert [i.step for i in intervals if i.checkpoint] == [10, 20, 23]  # every 20, and at rungs
    assert [i.last for i in intervals] == [False] * 8 + [True]
    # the means of the loss terms since the previous report point
    assert intervals[0].curves == {"train/loss": 3.0, "train/kl": 6.0}
    assert intervals[4].curves["train/loss"] == pytest.approx((21 + 22 + 23) / 3)


def test_a_resumed_trial_reports_from_its_step_on():
    intervals = list(train(fake_trial([1.0] * 40, step=20), PRESET))
    assert [i.step for i in intervals] == [25, 30, 35, 40]


def test_a_non_finite_loss_ends_training_at_the_next_report_point():
    losses = [1.0] * 40
    losses[12] = math.nan  # step 13
    seen = []
    with pytest.raises(Diverged) as raised:
        for interval in train(fake_trial(losses), PRESET):
            seen.append(interval.step)
    assert seen == [5, 10]
    diverged = raised.value
    assert diverged.step == 13 and math.isnan(diverged.values["train/loss"])
    assert diverged.last_finite == {"train/loss": 1.0, "train/kl": pytest.approx(2.0 * 11.5)}  # steps 11, 12


@pytest.fixture(scope="module")
def codec():
    return MimiCodec.random_init("reduced", seed=0)


def tiny_trainer(codec, step=0) -> VAETrainer:
    fresh = type(codec).random_init("reduced", seed=0)
    trainer = VAETrainer(BetaVAE(VAEConfig(latent_dim=8), fresh.decoder))
    trainer.step = step
    return trainer


def test_a_trial_resumes_weights_step_and_probe_values_from_its_checkpoint(codec, tmp_path):
    saved = tiny_trainer(codec, step=20)
    with torch.no_grad():
        for p in saved.vae.parameters():
            p.add_(0.01)
    probe = {"probe/objective/rollout_k4": -0.25, "probe/measured": 1.0}
    write_checkpoint(tmp_path, saved, probe)
    fresh = tiny_trainer(codec)
    assert restore(fresh, tmp_path, train_steps=40) == probe
    assert fresh.step == 20
    for a, b in zip(saved.vae.state_dict().values(), fresh.vae.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_weights_only_checkpoint_cannot_continue_training(codec, tmp_path):
    write_checkpoint(tmp_path, tiny_trainer(codec, step=20), {}, optimizer=False)
    with pytest.raises(RuntimeError, match="no optimizer state"):
        restore(tiny_trainer(codec), tmp_path, train_steps=40)
    assert restore(tiny_trainer(codec), tmp_path, train_steps=20) == {}  # finished: evaluates again


def test_a_checkpoint_written_beside_training_holds_the_state_it_was_started_at(codec, tmp_path):
    """CheckpointWriter copies the weights and AdamW's state when started; training that goes on while
    its thread writes changes nothing in the folder it hands over, and the folder resumes a trial."""
    trainer = tiny_trainer(codec, step=20)
    for p in trainer.vae.parameters():  # AdamW gets state to save (zero gradients: the weights stay)
        p.grad = torch.zeros_like(p)
    trainer.optimizer.step()
    before = {k: v.clone() for k, v in trainer.vae.state_dict().items()}
    probe = {"probe/measured": 1.0}
    with CheckpointWriter() as writer:
        writer.start(trainer, probe)
        with torch.no_grad():  # "training" goes on at once
            for p in trainer.vae.parameters():
                p.add_(1.0)
        trainer.step = 25
        probe["probe/measured"] = 2.0
        writer.settle()  # what a rung's probe waits for: the write is complete, still to be handed over
        folder, step = writer.written()
        assert step == 20 and writer.written() is None  # handed over once
        resumed = tiny_trainer(codec)
        assert restore(resumed, folder, train_steps=40) == {"probe/measured": 1.0}
        assert resumed.step == 20 and resumed.optimizer.state_dict()["state"]
        for name, value in resumed.vae.state_dict().items():
            assert torch.equal(value, before[name]), name
        writer.start(trainer, probe)  # one more, never handed over: removed on leaving the block
        started = writer._pending.result()
    assert not started.exists() and folder.exists()  # handing over makes it the caller's
    shutil.rmtree(folder.parent)


def test_a_workers_trials_run_on_one_thread_that_survives_their_exits():
    """Tune calls each trial of a reused worker from a new thread; TrialThread runs them all on one, so
    thread-local state (the compiled step's CUDA-graph trees) made by one trial is there for the next,
    and a trial ended by SystemExit (Tune stopping it inside tune.report) or an error leaves it working."""
    import threading

    from sweep.trainable import TrialThread

    runner, local = TrialThread(), threading.local()

    def first():
        local.trees = "compiled by the first trial"
        raise SystemExit(0)

    def second():
        return getattr(local, "trees", None), threading.current_thread().name

    def third():
        raise ValueError("a failing trial")

    outcomes = []

    def tune_thread(fn):
        try:
            outcomes.append(runner.run(fn))
        except BaseException as err:  # noqa: BLE001
            outcomes.append(type(err).__name__)

    for fn in (first, second, third, second):
        caller = threading.Thread(target=tune_thread, args=(fn,))
        caller.start()
        caller.join(timeout=10)
    assert outcomes == [
        "SystemExit",
        ("compiled by the first trial", "trial"),
        "ValueError",
        ("compiled by the first trial", "trial"),
    ]


def test_reports_are_made_in_order_beside_training_and_tunes_stop_reaches_the_trial(monkeypatch, tmp_path):
    """Reporter: a report with a periodic checkpoint returns before Tune has copied it (the copy is
    what made the trial wait); reports keep their order, a rung's (the trainer's own checkpoint) waits
    for those queued; Tune's SystemExit for a stopped trial reaches the trial at its next report, and
    nothing queued after it is reported, its checkpoint folder removed."""
    import threading
    import time

    import sweep.trainable
    from sweep.trainable import Reporter

    made, copying = [], threading.Event()

    def fake_report(metrics, trainer, latest, written=None):
        if written is not None:
            copying.wait(5)  # Tune copying the checkpoint into its storage
        if metrics.get("stop"):
            raise SystemExit(0)
        made.append((metrics["step"], trainer is not None, threading.current_thread().name))

    monkeypatch.setattr(sweep.trainable, "_report", fake_report)
    folder = tmp_path / "sweep-checkpoint-x" / "checkpoint"
    folder.mkdir(parents=True)
    with Reporter(background=True) as reporter:
        began = time.perf_counter()
        reporter.report({"step": 1}, None, {}, (folder, 1))
        assert time.perf_counter() - began < 1 and made == []  # the trial trains on during the copy
        reporter.report({"step": 2}, None, {})
        copying.set()
        reporter.report({"step": 3}, object(), {})  # a rung's: after the queued ones, on this thread
        assert [(s, t) for s, t, _ in made] == [(1, False), (2, False), (3, True)]
        assert made[0][2].startswith("tune-report") and made[2][2] == threading.current_thread().name
        reporter.report({"step": 4, "stop": True}, None, {})
        late = tmp_path / "sweep-checkpoint-y" / "checkpoint"
        late.mkdir(parents=True)
        with pytest.raises(SystemExit):
            reporter.report({"step": 5}, None, {}, (late, 5))
            reporter.drain()
        with pytest.raises(SystemExit):
            reporter.drain()
    assert [s for s, _, _ in made] == [1, 2, 3] and not late.parent.exists()
    with Reporter(background=False) as reporter:  # --without background-io: all on the trial's thread
        reporter.report({"step": 6}, None, {})
    assert made[-1][2] == threading.current_thread().name


def test_a_killed_workers_checkpoint_folder_goes_with_the_next_trial_on_the_machine(tmp_path, monkeypatch):
    """A worker killed while it held a checkpoint written beside training leaves its folder in the
    temporary folder (460 MB for a paper trial); the next CheckpointWriter removes those of dead
    processes, and leaves a live process's and any other folder alone."""
    import os
    import subprocess
    import sys
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    orphan = tmp_path / f"sweep-checkpoint-{gone.pid}-x1y2z3" / "checkpoint"
    orphan.mkdir(parents=True)
    (orphan / "model.pt").write_bytes(b"0" * 1024)
    live = tmp_path / f"sweep-checkpoint-{os.getpid()}-a1b2c3"
    unrelated = [tmp_path / "sweep-checkpoint-k8m2p0qz", tmp_path / "sweep-checkpoint-notapid-1"]
    for folder in (live, *unrelated):
        folder.mkdir()
    with CheckpointWriter():
        pass
    assert not orphan.parent.exists() and live.exists() and all(f.exists() for f in unrelated)
