"""Reconstruction metrics, rollout audio and the report tables."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from reference.signals import signal_pairs

from evaluation.audio import (
    AudioExample,
    audio_levels,
    rollout_latents,
    safe_name,
    vae_decoder,
    write_rollout_audio,
)
from evaluation.recon import mel_distance, waveform_l1
from evaluation.report import (
    battery_report,
    decision_gate,
    finite_and_informative_at,
    finite_at,
    rollout_markdown,
)
from models.mdn import MDN
from models.vae import BetaVAE, VAEConfig


@pytest.fixture(scope="module")
def speech(feature_cache):
    return feature_cache.audio(0)[: 24000 * 3].copy()


def test_recon_metrics_zero_for_identical_signals(speech):
    assert mel_distance(speech, speech) == 0.0
    assert waveform_l1(speech, speech) == 0.0
    batch = torch.from_numpy(np.stack([speech, speech]))[:, None]
    assert mel_distance(batch, batch) == 0.0


def test_mel_distance_is_dacs_mel_loss_as_its_base_yml_sets_it():
    """Reference values from descript-audio-codec's own MelSpectrogramLoss (pow 1, Slaney filters,
    windows 32..2048): tests/reference/dac_mel_reference.py wrote them."""
    reference = json.loads((Path(__file__).parent / "reference" / "dac_mel.json").read_text())
    assert reference["config"]["pow"] == 1.0 and reference["config"]["mag_weight"] == 0.0
    pairs = signal_pairs()
    assert set(reference["values"]) == set(pairs)
    for name, (pred, target) in pairs.items():
        assert mel_distance(pred, target) == pytest.approx(reference["values"][name], rel=1e-4), name


def test_recon_metrics_grow_with_noise(speech):
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(len(speech)).astype(np.float32)
    levels = [0.001, 0.003, 0.01, 0.03, 0.1]
    mel = [mel_distance(speech + s * noise, speech) for s in levels]
    l1 = [waveform_l1(speech + s * noise, speech) for s in levels]
    assert all(a < b for a, b in zip(mel, mel[1:], strict=False)), mel
    assert all(a < b for a, b in zip(l1, l1[1:], strict=False)), l1
    assert l1[2] == pytest.approx(0.01 * math.sqrt(2 / math.pi), rel=0.05)  # E|N(0, s^2)| = s sqrt(2/pi)


def test_recon_rejects_mismatched_lengths(speech):
    with pytest.raises(ValueError, match="same shape"):
        mel_distance(speech, speech[:-1])


@pytest.fixture(scope="module")
def vae_and_latents(codec, feature_cache):
    torch.manual_seed(0)
    vae = BetaVAE(VAEConfig(latent_dim=8), codec.decoder).eval()
    examples = []
    for i in range(2):
        with torch.no_grad():
            mu, _ = vae.posterior(torch.from_numpy(feature_cache.latents(i).T.copy())[None])
        examples.append(AudioExample(f"utt{i}", mu[0].T.numpy(), feature_cache.audio(i).copy()))
    mdn = MDN(dim=8, context=8, hidden=(32,))
    mdn.set_standardisation(torch.from_numpy(np.concatenate([e.latents for e in examples])))
    return vae, examples, mdn.eval()


def test_rollout_latents_replace_only_the_window(vae_and_latents):
    _, examples, mdn = vae_and_latents
    z = examples[0].latents
    rolled = rollout_latents(mdn, z, start=20, length=4)
    np.testing.assert_array_equal(rolled[:20], z[:20])
    np.testing.assert_array_equal(rolled[24:], z[24:])
    scorer = MDN(8, 8, hidden=(32,))
    scorer.load_state_dict(mdn.state_dict())
    with torch.no_grad():
        expected = scorer.double().mean(torch.from_numpy(z[12:20]).double()[None])[0].numpy()
    np.testing.assert_allclose(rolled[20], expected, rtol=1e-6)
    assert next(mdn.parameters()).dtype == torch.float32  # the caller's model is left as it was
    with pytest.raises(ValueError, match="needs 8 frames before it"):
        rollout_latents(mdn, z, start=3, length=2)


def test_rollout_wavs_decode_the_whole_modified_sequence(vae_and_latents, tmp_path):
    """No splicing: each rollout WAV is the decoder's output for the whole modified latent sequence, so
    what the decoder does after the window stays audible; before it, Mimi's causal decoder gives the
    plain reconstruction. Each WAV's peak and clipped share are reported."""
    vae, examples, mdn = vae_and_latents
    decode = vae_decoder(vae)
    written = write_rollout_audio(examples, mdn, decode, tmp_path)
    names = {w.path.name for w in written}
    for utt in ("utt0", "utt1"):
        assert {f"{utt}_orig.wav", f"{utt}_recon.wav"} | {
            f"{utt}_roll{n:02d}.wav" for n in (1, 2, 4, 8, 16)
        } <= names
    assert len(written) == 14 and all(w.path.exists() for w in written)
    pcm = 1.5 / 32768  # one 16-bit step, and rounding
    for ex in examples:
        frames = len(ex.latents)
        recon, rate = sf.read(tmp_path / f"{ex.utterance_id}_recon.wav")
        assert rate == 24000 and len(recon) == frames * 1920
        assert len(sf.read(tmp_path / f"{ex.utterance_id}_orig.wav")[0]) == frames * 1920
        start = frames // 3
        window = json.loads((tmp_path / "rollouts.json").read_text())[ex.utterance_id]  # the page clips there
        assert window["start_frame"] == start and window["lengths"] == [1, 2, 4, 8, 16]
        for n in (1, 2, 4, 8, 16):
            rolled, _ = sf.read(tmp_path / f"{ex.utterance_id}_roll{n:02d}.wav")
            decoded = np.clip(decode(rollout_latents(mdn, ex.latents, start, n)), -1, 1)
            np.testing.assert_allclose(rolled, decoded, atol=pcm)  # the whole sequence, as decoded
            begin, end = start * 1920, (start + n) * 1920
            np.testing.assert_allclose(
                rolled[:begin], recon[:begin], atol=pcm
            )  # causal: the prefix is recon's
            assert not np.allclose(rolled[begin:end], recon[begin:end], atol=pcm)
        assert not np.allclose(rolled[end:], recon[end:], atol=pcm)  # 16 rolled frames change what follows
    levels = audio_levels(written)
    assert list(levels["file"]) == [w.path.name for w in written]
    assert ((levels["peak"] > 0) & (levels["clipped"] >= 0) & (levels["clipped"] <= 1)).all()


def test_audio_levels_measure_before_clipping(tmp_path, vae_and_latents):
    _, examples, mdn = vae_and_latents
    loud = lambda z: np.concatenate([np.full(len(z) * 1920 // 2, 2.0), np.zeros(len(z) * 1920 // 2)])  # noqa: E731
    written = write_rollout_audio(examples[:1], mdn, loud, tmp_path, lengths=(1,))
    recon = next(w for w in written if w.path.name.endswith("_recon.wav"))
    assert recon.peak == 2.0 and recon.clipped == 0.5
    assert sf.read(recon.path)[0].max() == pytest.approx(1.0, abs=1e-4)


def test_safe_names_never_leave_the_folder():
    assert safe_name("../../etc/passwd") == "_.._etc_passwd"
    assert "/" not in safe_name("a/b\\c") and safe_name("") == "utterance"
    assert safe_name("103-1240-0000") == "103-1240-0000"


def _table(rollout4, finite4=True):
    return pd.DataFrame({
        "h": [1, 2, 4], "teacher": [-40.0, -30.0, -20.0], "rollout": [-40.0, -10.0, rollout4],
        "gap": [0.0, 20.0, rollout4 + 20.0], "finite": [True, True, finite4],
    })  # fmt: skip


def test_rollout_markdown_shows_non_finite_values_as_they_are():
    text = rollout_markdown(_table(math.inf, finite4=False))
    assert [c.strip() for c in text.splitlines()[0].split("|")[1:-1]] == [
        "h",
        "teacher",
        "rollout",
        "gap",
        "finite",
    ]
    assert "inf" in text and "NO" in text and "-40.000" in text


def test_both_gates_each_named_in_the_verdict():
    good = {"rollout/k4": -1.5, "rollout/finite/k4": 1.0, "rollout/horizon": 4.0}
    dead = {
        "rollout/k4": 3e60,
        "rollout/finite/k4": 0.0,
        "rollout/horizon": 2.0,
    }  # float64-finite, float32 not
    useless = {"rollout/k4": 0.3, "rollout/finite/k4": 1.0, "rollout/horizon": 1.0}  # finite, uninformative
    assert finite_and_informative_at(good) and not finite_and_informative_at(dead)
    assert finite_at(useless) and not finite_and_informative_at(useless) and not finite_at(dead)
    research, strict = decision_gate({"t000 (a)": dead, "t001 (b)": good}).splitlines()
    assert research.startswith("research gate (a finite k=4 rollout): MET by t001 (b);")
    assert strict.startswith(
        "strict gate (a finite and informative k=4 rollout (delta-NLL < 0)): MET by t001"
    )
    research, strict = decision_gate({"a": dead, "b": useless}).splitlines()
    assert "MET by b;" in research and "breakable" in research  # the research's own test is passed...
    assert strict.startswith("strict gate") and "not met by any of 2" in strict and "k=2 at best" in strict
    assert decision_gate({}) == "no configuration counts: no verdict."


def test_battery_report_has_every_section():
    class Result:
        rollout_table = _table(-0.5)
        injection = pd.DataFrame(
            {"mode": ["A_teacher", "D_rollout"], "cos": [0.9, 0.2], "state_err": [0.0, 1.0],
             "state_err_rel": [0.0, 0.5], "dnll": [-40.0, 3.0]}
        )  # fmt: skip
        injection_curves = pd.DataFrame({"step": range(32)})
        metrics = {"rollout/horizon": 4.0}

    text = battery_report(Result(), recon={"recon/mel": 2.47, "recon/l1": 0.036}, title="beta=0.01 dim=32")
    for piece in (
        "## beta=0.01 dim=32",
        "Rollout horizon: k=4",
        "| D_rollout",
        "16 steps",
        "recon/mel",
        "2.470",
    ):
        assert piece in text


def test_evaluate_vae_gives_metrics_wavs_and_report(codec, feature_cache, tmp_path):
    from evaluation.diagnostics import BatteryConfig
    from evaluation.trial import EvalConfig, evaluate_vae

    vae = BetaVAE(VAEConfig(latent_dim=4), codec.decoder).eval()
    ids = list(range(len(feature_cache)))
    train_ids, eval_ids = ids[:8], ids[8:]
    config = EvalConfig(
        battery=BatteryConfig(hidden=(32,), components=2, steps=40, horizons=(1, 2, 4), injection_steps=4),
        recon_utterances=2,
        audio_utterances=1,
        rollout_lengths=(1, 2),
    )
    result = evaluate_vae(
        vae,
        [feature_cache.latents(i) for i in train_ids],
        [feature_cache.latents(i) for i in eval_ids],
        [feature_cache.audio(i) for i in eval_ids],
        [feature_cache.utterances[i].utterance_id for i in eval_ids],
        config,
        audio_dir=tmp_path,
        title="tiny",
    )
    assert result.metrics["rollout/k1"] == result.metrics["teacher/k1"]
    assert result.metrics["recon/mel"] > 0 and result.metrics["recon/l1"] > 0
    assert len(result.wavs) == 4  # orig, recon, roll01, roll02
    assert all(p.exists() and p.parent == tmp_path for p in result.wavs)
    assert "tiny" in result.report and "recon/mel" in result.report
    assert (
        list(result.audio_levels["file"]) == [p.name for p in result.wavs]
        and "### Rollout audio" in result.report
    )
    assert set(result.seconds) == {"battery", "recon_audio"}


def test_evaluate_vae_rejects_mismatched_eval_inputs(codec, feature_cache):
    from evaluation.trial import evaluate_vae

    vae = BetaVAE(VAEConfig(latent_dim=4), codec.decoder)
    with pytest.raises(ValueError, match="equally long"):
        evaluate_vae(vae, [feature_cache.latents(0)], [feature_cache.latents(1)], [], ["a"])
