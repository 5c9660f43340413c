import time

import numpy as np
import pytest
import soundfile as sf
import torch

from models.codec import MimiCodec
from sweep.data import DataError, UnusableAudioWarning, discover_audio, read_audio
from sweep.features import LATENTS_FILE, CropSampler, build_feature_cache, prepare_data


def test_cache_holds_whole_utterance_latents_and_audio(feature_cache, codec):
    assert len(feature_cache) == 12
    u = feature_cache.utterances[0]
    audio = read_audio(u.path)
    assert u.num_frames == len(audio) // 1920
    np.testing.assert_array_equal(feature_cache.audio(0), audio[: u.num_frames * 1920])
    direct = codec.encode(torch.from_numpy(feature_cache.audio(0).copy())[None, None])[0].T.numpy()
    lat = feature_cache.latents(0)
    assert lat.shape == (u.num_frames, 512)
    # Batched (padded) encoding equals encoding alone, up to fp32 rounding.
    np.testing.assert_allclose(lat, direct, rtol=1e-4, atol=1e-5 * np.abs(direct).max())


def test_second_load_is_a_fast_hit(corpus_dir, codec, tmp_path):
    files = discover_audio(corpus_dir)[:6]
    started = time.perf_counter()
    first = build_feature_cache(files, codec, tmp_path, progress=False)
    build_s = time.perf_counter() - started
    started = time.perf_counter()
    second = build_feature_cache(files, codec, tmp_path, progress=False)
    hit_s = time.perf_counter() - started
    assert second.directory == first.directory
    assert len(list(tmp_path.iterdir())) == 1
    assert hit_s < build_s / 5, f"hit {hit_s:.3f} s vs build {build_s:.3f} s"


def test_truncated_or_corrupt_cache_is_rebuilt(corpus_dir, codec, tmp_path):
    files = discover_audio(corpus_dir)[:3]
    cache = build_feature_cache(files, codec, tmp_path, progress=False)
    expected = cache.latents(1).copy()
    latents_path = cache.directory / LATENTS_FILE
    del cache
    size = latents_path.stat().st_size
    with open(latents_path, "r+b") as fh:
        fh.truncate(size // 2)
    rebuilt = build_feature_cache(files, codec, tmp_path, progress=False)
    assert latents_path.stat().st_size == size
    np.testing.assert_array_equal(rebuilt.latents(1), expected)
    del rebuilt
    with open(latents_path, "r+b") as fh:  # same size, flipped bytes: caught by the digest
        fh.seek(100)
        fh.write(b"\xff" * 8)
    again = build_feature_cache(files, codec, tmp_path, progress=False)
    np.testing.assert_array_equal(again.latents(1), expected)


def test_key_changes_with_codec_and_files(corpus_dir, codec, tmp_path):
    files = discover_audio(corpus_dir)[:2]
    a = build_feature_cache(files, codec, tmp_path, progress=False)
    b = build_feature_cache(files, MimiCodec.random_init("reduced", seed=1), tmp_path, progress=False)
    c = build_feature_cache(files[:1], codec, tmp_path, progress=False)
    assert len({a.directory, b.directory, c.directory}) == 3


def test_unusable_files_are_skipped_with_one_warning(corpus_dir, codec, tmp_path):
    data = tmp_path / "mixed"
    data.mkdir()
    good = sorted(corpus_dir.rglob("*.flac"))[:2]
    for i, path in enumerate(good):
        (data / f"good{i}.flac").write_bytes(path.read_bytes())
    (data / "empty.wav").write_bytes(b"")
    (data / "corrupt.flac").write_bytes(good[0].read_bytes()[:200])
    (data / "notaudio.wav").write_text("this is not audio")
    sf.write(data / "short.wav", np.zeros(int(0.3 * 16000), dtype=np.float32), 16000)
    with pytest.warns(UnusableAudioWarning) as record:
        cache = build_feature_cache(discover_audio(data), codec, tmp_path / "fc", progress=False)
    assert len(record) == 1
    message = str(record[0].message)
    for name in ["empty.wav", "corrupt.flac", "notaudio.wav", "short.wav"]:
        assert name in message
    assert "too short" in message and "good0" not in message
    assert sorted(u.utterance_id for u in cache.utterances) == ["good0", "good1"]


def test_no_usable_audio_is_a_clear_error(codec, tmp_path):
    (tmp_path / "a.wav").write_bytes(b"")
    sf.write(tmp_path / "b.wav", np.zeros(1600, dtype=np.float32), 16000)
    with (
        pytest.warns(UnusableAudioWarning),
        pytest.raises(DataError, match="none of the 2 audio files is usable"),
    ):
        build_feature_cache(discover_audio(tmp_path), codec, tmp_path / "fc", progress=False)
    assert not (tmp_path / "fc").exists() or not any((tmp_path / "fc").iterdir())


def test_crops_are_frame_aligned_and_deterministic(feature_cache):
    ids = list(range(len(feature_cache)))
    sampler = CropSampler(feature_cache, ids, crop_frames=50, batch_size=4, seed=0)
    batch = sampler.batch(7)
    assert batch.features.shape == (4, 512, 50) and batch.audio.shape == (4, 1, 96000)
    again = sampler.batch(7)
    assert torch.equal(batch.features, again.features) and torch.equal(batch.audio, again.audio)
    assert not torch.equal(sampler.batch(8).features, batch.features)
    # Each crop's latents and audio come from the same frames of one utterance.
    feats, audio = batch.features[0].T.numpy(), batch.audio[0, 0].numpy()
    for i in ids:
        lat = feature_cache.latents(i)
        starts = [s for s in range(len(lat) - 49) if np.array_equal(lat[s : s + 50], feats)]
        if starts:
            s = starts[0]
            np.testing.assert_array_equal(feature_cache.audio(i)[s * 1920 : (s + 50) * 1920], audio)
            break
    else:
        pytest.fail("crop not found in any cached utterance")


def test_sampler_rejects_crops_longer_than_any_utterance(feature_cache):
    with pytest.raises(DataError, match="no utterance holds a crop"):
        CropSampler(feature_cache, [0], crop_frames=10_000, batch_size=2)


def test_prepare_data_splits_by_speaker_and_reuses_the_cache(corpus_dir, codec, feature_cache, tmp_path):
    """The one preparation the driver, sweep.smoke and sweep.bench share: split, cache, ids."""
    prepared = prepare_data(corpus_dir, codec, feature_cache.directory.parent, seed=0)
    assert prepared.cache.directory == feature_cache.directory  # same files and codec: the same entry
    speakers = [
        {prepared.cache.utterances[i].speaker for i in ids} for ids in (prepared.train_ids, prepared.eval_ids)
    ]
    assert speakers[0] and speakers[1] and not speakers[0] & speakers[1]
    assert sorted(prepared.train_ids + prepared.eval_ids) == list(range(len(feature_cache)))


def test_prepare_data_writes_the_bundled_corpus_only_when_asked(codec, tmp_path):
    with pytest.raises(DataError):
        prepare_data(tmp_path / "absent", codec, tmp_path / "cache")
    assert not (tmp_path / "absent").exists()
