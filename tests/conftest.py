"""Shared fixtures: a reduced random-init codec and a small real-speech corpus with its cache."""

from __future__ import annotations

import pytest
import torch

from models.codec import MimiCodec
from sweep.corpus import write_corpus
from sweep.data import discover_audio
from sweep.features import build_feature_cache


@pytest.fixture(scope="session")
def codec() -> MimiCodec:
    return MimiCodec.random_init("reduced", seed=0)


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory):
    """12 real LibriSpeech utterances (12 speakers) from the bundled subset."""
    out = tmp_path_factory.mktemp("corpus") / "speech"
    write_corpus(out, source="bundled", utterances=12)
    return out


@pytest.fixture(scope="session")
def feature_cache(corpus_dir, codec, tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    return build_feature_cache(discover_audio(corpus_dir), codec, root, progress=False)


@pytest.fixture(scope="module")
def ray_cluster():
    """Local Ray with 2 CPUs for one test module (Ray's own tests do the same); sweeps join it."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
