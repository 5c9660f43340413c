"""GPU facts for the plan from nvidia-smi, as CUDA would show them to this process (no GPU in CI: a
stand-in nvidia-smi prints what the real one prints for two H200s)."""

import os
import stat

import pytest

from sweep import gpus

H200_MIB = 143771
LISTING = f"0, GPU-aaaa1111-0000, {H200_MIB}\n1, GPU-bbbb2222-0000, {H200_MIB // 2}\n"


@pytest.fixture
def two_gpus(tmp_path, monkeypatch):
    tool = tmp_path / "nvidia-smi"
    tool.write_text(f"#!/bin/sh\nprintf '{LISTING}'\n")
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(gpus, "_torch_has_cuda", lambda: True)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return tool


@pytest.mark.parametrize(
    "visible, expected",
    [
        (None, [H200_MIB * 2**20, H200_MIB // 2 * 2**20]),
        ("1", [H200_MIB // 2 * 2**20]),
        ("1,0", [H200_MIB // 2 * 2**20, H200_MIB * 2**20]),  # CUDA's order is the variable's
        ("GPU-aaaa", [H200_MIB * 2**20]),  # a UUID's prefix, as CUDA takes it
    ],
)
def test_visible_gpus_follow_cuda_visible_devices(two_gpus, monkeypatch, visible, expected):
    if visible is not None:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert gpus.visible_gpu_memory() == expected


@pytest.mark.parametrize("visible", ["MIG-1234", "", "-1", "7"])
def test_torch_answers_what_nvidia_smi_cannot(two_gpus, monkeypatch, visible):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert gpus._from_nvidia_smi() is None
    assert gpus.visible_gpu_memory() == []  # this machine's torch sees no GPU


def test_a_torch_without_cuda_sees_no_gpu_whatever_nvidia_smi_says(two_gpus, monkeypatch):
    monkeypatch.setattr(gpus, "_torch_has_cuda", lambda: False)
    assert gpus._from_nvidia_smi() is None


def test_an_unreadable_answer_falls_back_to_torch(two_gpus):
    two_gpus.write_text("#!/bin/sh\necho '0, GPU-aaaa, [N/A]'\n")  # a MIG-enabled board's memory
    assert gpus._from_nvidia_smi() is None


def test_the_plan_packs_trials_by_what_nvidia_smi_says(two_gpus, tmp_path):
    from sweep.launch import parse_args
    from sweep.plan import TRIALS_PER_GPU, make_plan

    plan = make_plan(parse_args(["--space", "baseline", "--codec", "random:reduced"]), tmp_path)
    assert plan.gpus_per_trial == 1 / TRIALS_PER_GPU
