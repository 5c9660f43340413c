"""sweep.bench's CPU path end to end: every part runs and the JSON and tables say what was measured.
(On a GPU the same code measured the figures in the README; CI has no GPU.)"""

import json

import pytest

from sweep import bench


@pytest.mark.slow
def test_bench_runs_every_part_on_the_cpu_and_writes_json(corpus_dir, tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = [
        "--device", "cpu", "--codec", "random:reduced", "--preset", "tiny", "--data", str(corpus_dir),
        # 40 steps (~7 s on 2 cores): long enough that the two trials' training overlaps despite
        # their staggered starts (8 steps did not, once: the aggregate needs a common window)
        "--trials", "2", "--tune-steps", "40", "--step-steps", "3", "--warmup-steps", "1",
        "--space", "baseline", "--sweep-trials", "2", "--sweep-steps", "40",
        "--agreement-steps", "3", "--battery-utterances", "20", "--battery-seconds", "4",
        "--battery-hidden", "16", "--battery-steps", "20",
        "--workdir", str(tmp_path / "work"), "--out", str(out),
    ]  # fmt: skip
    assert bench.main(argv) == 0
    results = json.loads(out.read_text())
    assert results["machine"]["device"] == "cpu"
    variants = {v["variant"]: v for v in results["step"]["variants"]}
    assert set(variants) == {"eager, host sync every step", "eager"}
    assert all(v["steps_per_s"] > 0 for v in variants.values())
    agreement = results["step"]["agreement"]  # on the CPU the fast settings are the eager ones
    assert agreement["loss_terms_max_rel_err"] == 0 and agreement["grad_rel_err"] == 0
    assert results["battery"]["utterances"] == 20 and results["battery"]["seconds_total"] > 0
    (tune,) = results["tune"]
    assert tune["trials"] == 2 and tune["mps"] is False and tune["steps"] == 40
    assert tune["aggregate_steps_per_s"] == pytest.approx(sum([tune["per_trial_steps_per_s"]] * 2), rel=0.5)
    assert tune["trial"]["train_s"] > 0 and tune["trial"]["evaluation_s"] > 0
    assert 0 < tune["trial"]["build_s"] and tune["trial"]["setup_s"] > 0
    (overhead,) = results["overhead"]
    assert (
        0 < overhead["fraction"] < 1
        and overhead["outside_s"]["battery"] == results["battery"]["seconds_total"]
    )
    (sweep,) = results["sweeps"]
    assert sweep["trials"] == 2 and sweep["steps"] == 80 and sweep["errored"] == [] and sweep["gpus"] == 0
    assert sum(sweep["parts"].values()) == pytest.approx(sweep["wall_s"], rel=1e-6)
    assert sweep["ideal_s"] == pytest.approx(80 / sweep["aggregate_steps_per_s"]) and sweep["ratio"] > 1
    assert sweep["parts"]["start"] > 0 and sweep["parts"]["evaluation"] > 0
    # the driver's start, stage by stage (no MPS here), within its time to the trials' start
    stages = sweep["driver_stages"]
    assert set(stages) == {"imports and plan", "Ray", "MLflow beside Ray", "data"}
    # MLflow's check and parent run (a helper process) overlap Ray's start: the driver waits for the
    # longer of the two, not their sum
    beside_ray = max(stages["Ray"], stages["MLflow beside Ray"])
    assert stages["imports and plan"] + beside_ray < sweep["driver_ready_s"] + 0.15  # each logged to 0.1 s
    assert sweep["per_trial"]["setup/process/imports"] > 0  # a new worker's imports
    assert {"setup/codec", "setup/model", "setup/data"} <= set(sweep["per_trial"])  # the build's parts
    # the end, stage by stage: Tune's last result to the process's exit (no MPS: Ray stops at exit)
    ends = sweep["end_stages"]
    assert set(ends) == {"Tune", "summary", "MLflow", "exit"} and min(ends.values()) >= 0
    assert sum(ends.values()) == pytest.approx(sweep["parts"]["end"], abs=0.2)
    printed = capsys.readouterr().out
    for heading in (
        "## One trial",
        "## Battery at scale",
        "## N trials sharing one GPU",
        "## Outside training",
        "## Whole sweeps",
        "stage by stage",
    ):
        assert heading in printed
    assert "end: MLflow" in printed and "build: codec" in printed  # the stages' table

    # a rerun of one part keeps the others and replaces its own entry
    assert bench.main([*argv, "--parts", "battery", "--battery-utterances", "24"]) == 0
    again = json.loads(out.read_text())
    assert again["battery"]["utterances"] == 24 and again["tune"] == results["tune"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--data", "/no/such/folder"], "--data /no/such/folder: no such folder"),
        (["--device", "tpu"], "device 'tpu' is not one of"),
        (
            ["--space", "beta_dim", "--sweep-trials", "20"],
            "--sweep-trials 20: give a multiple of the beta_dim grid (16)",
        ),
        (["--without", "mps"], "--without mps: not a speed switch"),
    ],  # fmt: skip
)
def test_bad_bench_input_is_one_line_and_exit_2(argv, message, tmp_path, capsys):
    assert bench.main([*argv, "--parts", "step", "--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tmp_path / "w").exists()
