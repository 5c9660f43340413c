"""Everything a trial measures after training (docs/science.md §2.4-2.6), in one call.

    result = evaluate_vae(vae, train_features, eval_features, eval_audio, eval_ids, EvalConfig(), "out/eval")
    result.metrics["rollout/k4"], result.metrics["recon/mel"], result.wavs, print(result.report)

Features are the frozen codec encoder's (F, 512) latents per utterance (a feature cache gives
them); `eval_audio` the matching (F * 1920,) 24 kHz audio. The VAE's posterior means feed the
diagnostics battery (MDN_h fitted on train, scored on eval); reconstruction metrics compare the
decoded posterior means of the first `recon_utterances` eval utterances with their audio; rollout
WAVs are written for the first `audio_utterances`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from evaluation.audio import ROLLOUT_LENGTHS, AudioExample, audio_levels, vae_decoder, write_rollout_audio
from evaluation.diagnostics import BatteryConfig, BatteryResult, run_battery
from evaluation.recon import mel_distance, waveform_l1
from evaluation.report import battery_report
from models.vae import BetaVAE, posterior_means


@dataclass(frozen=True)
class EvalConfig:
    battery: BatteryConfig = field(default_factory=BatteryConfig)
    recon_utterances: int = 32  # eval utterances decoded for recon/mel and recon/l1
    audio_utterances: int = 10  # eval utterances given rollout WAVs (docs/science.md §4); 0 writes none
    rollout_lengths: tuple[int, ...] = ROLLOUT_LENGTHS

    @classmethod
    def sized(
        cls, hidden: int, steps: int, seed: int, device, cuda_graphs: bool = True, **settings
    ) -> EvalConfig:
        """The battery of docs/science.md §3 (2 hidden layers) at a chosen width and training-step budget."""
        battery = BatteryConfig(
            hidden=(hidden,) * 2, steps=steps, seed=seed, device=str(device), cuda_graphs=cuda_graphs
        )
        return cls(battery=battery, **settings)

    def __post_init__(self):
        if self.recon_utterances < 1 or self.audio_utterances < 0:
            raise ValueError(
                f"recon_utterances must be >= 1 and audio_utterances >= 0, "
                f"got {self.recon_utterances} and {self.audio_utterances}."
            )


@dataclass
class TrialEvaluation:
    metrics: dict[str, float]  # battery metrics plus recon/mel, recon/l1
    battery: BatteryResult
    recon: dict[str, float]
    wavs: list[Path]
    audio_levels: pd.DataFrame  # file, peak, clipped: one row per WAV
    report: str  # markdown: rollout, injection, reconstruction and audio-level tables
    seconds: dict[str, float]


def evaluate_vae(
    vae: BetaVAE,
    train_features: Sequence[np.ndarray],
    eval_features: Sequence[np.ndarray],
    eval_audio: Sequence[np.ndarray],
    eval_ids: Sequence[str],
    config: EvalConfig = EvalConfig(),
    audio_dir: str | Path | None = None,
    device="cpu",
    title: str | None = None,
) -> TrialEvaluation:
    """Battery on posterior means, reconstruction metrics, rollout WAVs (if `audio_dir`), report."""
    if not (len(eval_features) == len(eval_audio) == len(eval_ids)):
        raise ValueError(
            f"eval_features, eval_audio and eval_ids must be equally long, "
            f"got {len(eval_features)}, {len(eval_audio)}, {len(eval_ids)}."
        )
    started = time.perf_counter()
    train_z = posterior_means(vae, train_features, device)
    eval_z = posterior_means(vae, eval_features, device)
    battery = run_battery(train_z, eval_z, config.battery)
    after_battery = time.perf_counter()
    decode = vae_decoder(vae, device)
    recon = reconstruction_metrics(decode, eval_z[: config.recon_utterances], eval_audio)
    written = []
    if audio_dir is not None and config.audio_utterances:
        examples = [
            AudioExample(eval_ids[i], eval_z[i], np.asarray(eval_audio[i]))
            for i in range(min(config.audio_utterances, len(eval_z)))
        ]
        written = write_rollout_audio(
            examples, battery.models["h1"], decode, audio_dir, config.rollout_lengths,
            config.battery.feedback, config.battery.seed,
        )  # fmt: skip
    levels = audio_levels(written)
    seconds = {
        "battery": after_battery - started,
        "recon_audio": time.perf_counter() - after_battery,
    }
    return TrialEvaluation(
        metrics={**battery.metrics, **recon},
        battery=battery,
        recon=recon,
        wavs=[w.path for w in written],
        audio_levels=levels,
        report=battery_report(battery, recon, title=title, audio=levels),
        seconds=seconds,
    )


def reconstruction_metrics(
    decode, latents: Sequence[np.ndarray], audio: Sequence[np.ndarray]
) -> dict[str, float]:
    """Mean over utterances of mel distance and waveform L1 between decode(latents) and the audio."""
    mel, l1 = [], []
    for z, target in zip(latents, audio, strict=False):
        pred = decode(z)
        target = np.asarray(target, dtype=np.float32)[: len(pred)]
        mel.append(mel_distance(pred, target))
        l1.append(waveform_l1(pred, target))
    return {"recon/mel": float(np.mean(mel)), "recon/l1": float(np.mean(l1))}
