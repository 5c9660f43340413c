import json

from sweep import smoke


def test_smoke_run_writes_corpus_cache_and_checkpoint(tmp_path, capsys):
    args = [
        "--data",
        str(tmp_path / "speech"),
        "--cache",
        str(tmp_path / "cache"),
        "--out",
        str(tmp_path / "run"),
        "--steps",
        "3",
        "--crop-seconds",
        "2",
    ]
    assert smoke.main(args) == 0
    out = capsys.readouterr().out
    assert "smoke run done: 40 utterances" in out and "speaker-disjoint" in out
    meta = json.loads((tmp_path / "run" / "checkpoint" / "meta.json").read_text())
    assert meta["step"] == 3 and meta["codec"] == "random:reduced:0"
    assert any((tmp_path / "cache").iterdir())


def test_smoke_rejects_bad_input_before_compute(tmp_path, capsys):
    assert smoke.main(["--data", str(tmp_path), "--cache", str(tmp_path / "c")]) == 2
    assert "holds no .flac/.wav files" in capsys.readouterr().err
    assert smoke.main(["--beta", "-1", "--data", str(tmp_path)]) == 2
    assert "beta must be" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
