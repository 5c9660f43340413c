import time

import pytest
import torch

from models.codec import MIMI_REVISION, CodecSpec, CodecWeightsMissing, MimiCodec


def test_shapes_of_encode_and_decode(codec):
    audio = torch.randn(2, 1, 7 * 1920)
    latents = codec.encode(audio)
    assert latents.shape == (2, 512, 7)
    assert codec.decode(latents).shape == (2, 1, 7 * 1920)


def test_interface_constants(codec):
    assert (codec.sample_rate, codec.frame_rate, codec.frame_size, codec.codec_dim) == (
        24000,
        12.5,
        1920,
        512,
    )


def test_encode_rejects_wrong_shape_with_fix(codec):
    with pytest.raises(ValueError, match=r"\(B, 1, N\).*unsqueeze"):
        codec.encode(torch.randn(2, 1920))
    with pytest.raises(ValueError, match="latents of shape"):
        codec.decode(torch.randn(1, 64, 3))


def test_encoder_is_causal(codec):
    """Right-padding (as the feature cache batches utterances) must not change earlier frames."""
    audio = torch.randn(1, 1, 6 * 1920)
    padded = torch.cat([audio, torch.randn(1, 1, 4 * 1920)], dim=-1)
    alone = codec.encode(audio)
    # Different lengths take different kernels: equal up to fp32 rounding (latents are ~10-30 in size).
    torch.testing.assert_close(
        codec.encode(padded)[..., :6], alone, rtol=1e-4, atol=1e-5 * alone.abs().max().item()
    )


def test_encoder_frozen_decoder_trainable(codec):
    assert all(not p.requires_grad for p in codec.encoder.parameters())
    assert all(p.requires_grad for p in codec.decoder.parameters())
    codec.train()
    assert not codec.encoder.training and codec.decoder.training
    latents = codec.encode(torch.randn(1, 1, 4 * 1920))
    assert not latents.requires_grad  # no graph through the encoder
    codec.zero_grad(set_to_none=True)
    codec.decode(latents).square().mean().backward()
    assert all(p.grad is None for p in codec.encoder.parameters())
    grads = [p.grad for p in codec.decoder.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    codec.zero_grad(set_to_none=True)


def test_random_init_is_seeded():
    a, b, c = (
        MimiCodec.random_init("reduced", 3),
        MimiCodec.random_init("reduced", 3),
        MimiCodec.random_init("reduced", 4),
    )
    pa, pb, pc = (next(m.decoder.parameters()) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("random:reduced", CodecSpec("random", "", "", "reduced", 0)),
        ("random:full:7", CodecSpec("random", "", "", "full", 7)),
        ("kyutai/mimi", CodecSpec("pretrained", "kyutai/mimi", MIMI_REVISION, "full", 0)),
        ("kyutai/mimi@abc123", CodecSpec("pretrained", "kyutai/mimi", "abc123", "full", 0)),
    ],
)
def test_codec_spec_parse(text, expected):
    assert CodecSpec.parse(text) == expected


@pytest.mark.parametrize("text", ["random:tiny", "random:full:x", "random:"])
def test_codec_spec_parse_rejects_with_choices(text):
    with pytest.raises(ValueError, match="random:SIZE"):
        CodecSpec.parse(text)


def test_pretrained_loads_from_local_folder(tmp_path):
    source = MimiCodec.random_init("reduced", seed=5)
    from transformers import MimiModel

    full = MimiModel(source.config)
    full.encoder.load_state_dict(source.encoder.state_dict())
    full.decoder.load_state_dict(source.decoder.mimi.state_dict())
    full.save_pretrained(tmp_path / "mimi")
    loaded = MimiCodec.from_spec(CodecSpec.parse(str(tmp_path / "mimi")))
    audio = torch.randn(1, 1, 3 * 1920)
    torch.testing.assert_close(loaded.encode(audio), source.encode(audio))
    assert loaded.spec.source == "pretrained" and "files" in loaded.spec.fingerprint()


def test_missing_weights_fail_fast_with_the_fix(tmp_path):
    started = time.perf_counter()
    with pytest.raises(CodecWeightsMissing) as err:
        MimiCodec.pretrained("kyutai/mimi", cache_dir=tmp_path / "empty-cache", allow_download=False)
    assert time.perf_counter() - started < 10
    message = str(err.value)
    assert "hf download kyutai/mimi --revision" in message
    assert "--codec /path/to/mimi" in message and "random:full" in message


def test_folder_without_config_is_explained(tmp_path):
    with pytest.raises(CodecWeightsMissing, match="no config.json"):
        MimiCodec.pretrained(str(tmp_path))


def test_integer_padding_changes_no_output():
    """IntegerPaddingConv1d (no host sync, no graph break per convolution) computes what
    transformers' MimiConv1d computes, through encoder and decoder, on an odd length."""
    from transformers import MimiConfig, MimiModel
    from transformers.models.mimi.modeling_mimi import MimiConv1d

    from models.codec import IntegerPaddingConv1d, use_integer_padding

    torch.manual_seed(0)
    model = MimiModel(MimiConfig(num_filters=8, num_hidden_layers=2)).eval()
    audio = torch.randn(2, 1, 2 * 24_000 + 123)
    with torch.no_grad():
        before = model.encoder(audio).latents, model.decoder(model.encoder(audio).latents).audio_values
        use_integer_padding(model)
        after = model.encoder(audio).latents, model.decoder(model.encoder(audio).latents).audio_values
    assert not any(type(m) is MimiConv1d for m in model.modules())
    assert sum(isinstance(m, IntegerPaddingConv1d) for m in model.modules()) > 20
    for x, y in zip(before, after, strict=True):
        assert torch.equal(x, y)
