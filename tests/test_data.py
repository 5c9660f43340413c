import random

import numpy as np
import pytest
import soundfile as sf

from sweep.corpus import BUNDLED_CORPUS, synthesize_utterance, write_corpus
from sweep.data import (
    AudioFile,
    DataError,
    discover_audio,
    read_audio,
    select_utterances,
    split_by_speaker,
)


def test_librispeech_layout_speakers(corpus_dir):
    files = discover_audio(corpus_dir)
    assert len(files) == 12
    for f in files:
        speaker, chapter, _ = f.utterance_id.split("-")
        assert f.speaker == speaker == f.path.parent.parent.name
    assert len({f.speaker for f in files}) == 12


def test_plain_folder_speaker_is_first_subfolder(tmp_path):
    for rel in ["alice/a.wav", "alice/sub/b.flac", "bob/c.wav", "loose.wav", "notes.txt"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    files = discover_audio(tmp_path)
    assert [(f.path.name, f.speaker) for f in files] == [
        ("a.wav", "alice"),
        ("b.flac", "alice"),
        ("c.wav", "bob"),
        ("loose.wav", "loose"),
    ]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing", "does not exist"),
        (lambda p: (p / "f.wav").write_bytes(b"") or p / "f.wav", "is a file, not a folder"),
        (lambda p: p, "holds no .flac/.wav files"),
    ],
)
def test_bad_data_folder_errors_say_how_to_fix(tmp_path, make, message):
    with pytest.raises(DataError, match=message) as err:
        discover_audio(make(tmp_path))
    assert "--data" in str(err.value) or "sweep.corpus" in str(err.value)


def _files(n_speakers, per_speaker):
    from pathlib import Path

    return [
        AudioFile(Path(f"/x/{s}/{u}.flac"), str(s), f"{s}-1-{u}")
        for s in range(n_speakers)
        for u in range(per_speaker)
    ]


def test_split_is_deterministic_speaker_disjoint_and_order_free():
    files = _files(30, 4)
    train, evaluation = split_by_speaker(files, eval_fraction=0.1, seed=0)
    assert {f.speaker for f in train}.isdisjoint({f.speaker for f in evaluation})
    assert len({f.speaker for f in evaluation}) == 3 and len(train) + len(evaluation) == len(files)
    shuffled = files[:]
    random.Random(1).shuffle(shuffled)
    train2, eval2 = split_by_speaker(shuffled, eval_fraction=0.1, seed=0)
    assert {f.speaker for f in eval2} == {f.speaker for f in evaluation}
    _, eval3 = split_by_speaker(files, eval_fraction=0.1, seed=1)
    assert {f.speaker for f in eval3} != {f.speaker for f in evaluation}  # the seed matters


def test_split_needs_two_speakers():
    with pytest.raises(DataError, match="at least 2 speakers"):
        split_by_speaker(_files(1, 5))


def test_select_caps_deterministically():
    files = _files(50, 10)
    chosen = select_utterances(files, max_utterances=100)
    assert len(chosen) == 100 and chosen == sorted(chosen, key=lambda f: f.path)
    assert select_utterances(list(reversed(files)), 100) == chosen
    assert len({f.speaker for f in chosen}) > 30  # spread over speakers, not the first ten
    assert select_utterances(files[:7], 100) == files[:7]


def test_read_audio_mixes_stereo_and_resamples(tmp_path):
    source = sorted(BUNDLED_CORPUS.rglob("*.flac"))[0]
    mono16k, _ = sf.read(source, dtype="float32")
    import torch
    import torchaudio

    at44k = torchaudio.functional.resample(torch.from_numpy(mono16k), 16000, 44100).numpy()
    stereo = np.stack([at44k, 0.5 * at44k], axis=1)
    sf.write(tmp_path / "stereo.flac", stereo, 44100, subtype="PCM_24")
    audio = read_audio(tmp_path / "stereo.flac")
    reference = read_audio(source)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - len(mono16k) * 1.5) <= 2
    n = min(len(audio), len(reference))
    # Mixed down (mean of 1.0x and 0.5x = 0.75x) and back at 24 kHz: the same speech, scaled.
    corr = np.corrcoef(audio[1000 : n - 1000], reference[1000 : n - 1000])[0, 1]
    assert corr > 0.99
    assert np.std(audio[:n]) == pytest.approx(0.75 * np.std(reference[:n]), rel=0.02)


def test_synthetic_corpus_is_deterministic_and_speechlike(tmp_path):
    files = write_corpus(tmp_path / "a", source="synthetic", utterances=6, speakers=3)
    again = write_corpus(tmp_path / "b", source="synthetic", utterances=6, speakers=3)
    assert [sf.read(a)[0].tolist() == sf.read(b)[0].tolist() for a, b in zip(files, again, strict=True)] == [
        True
    ] * 6
    found = discover_audio(tmp_path / "a")
    assert len({f.speaker for f in found}) == 3
    audio = synthesize_utterance(seed=0, speaker=0, seconds=4.0)
    assert len(audio) == 64000 and np.abs(audio).max() <= 0.5 + 1e-6
    frames = np.abs(audio[: 64000 // 400 * 400].reshape(-1, 400)).mean(axis=1)
    assert (frames < 1e-4).mean() > 0.05  # pauses
    assert (frames > 0.02).mean() > 0.3  # voiced stretches


def test_corpus_refuses_non_empty_folder(tmp_path):
    (tmp_path / "x").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        write_corpus(tmp_path)


def test_bundled_corpus_carries_licence_and_credit(corpus_dir):
    assert "Creative Commons Attribution 4.0" in (corpus_dir / "LICENSE.TXT").read_text()
    assert "Panayotov" in (corpus_dir / "README.md").read_text()
