"""Train the style CNN: a plain torch loop over precomputed log-mel clips.

No Ray here: `train_style` takes a `report(epoch, metrics, model)` callback, which a Ray Tune
trial (ASHA) turns into `tune.report`, and the hyperparameters are one flat dataclass
whose field names are the sweep keys. Features are computed once per recording before
training; augmentation (SpecAugment time and frequency masks, random gain) works on
the features, so an epoch costs only the network.

Validation is per recording: a recording's prediction is the mean of its clips'
probabilities, which is what `StyleClassifier.predict` returns for a user's file. The
weights of the best validation epoch (accuracy, then loss) are the ones kept.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from midiforge.classifiers.style.data import Item, StyleDataError, load_recording
from midiforge.classifiers.style.features import MelConfig, mel_clips
from midiforge.classifiers.style.model import CnnConfig, StyleCnn, build_model
from midiforge.config import ConfigError

log = logging.getLogger(__name__)

Report = Callable[[int, dict[str, Any], Any], None]  # (epoch, metrics, model)


@dataclass
class StyleTrainConfig:
    # The sweep keys.
    lr: float = 1e-3
    weight_decay: float = 1e-2  # AdamW's decoupled decay
    batch_size: int = 32
    epochs: int = 30
    width: int = 32
    dropout: float = 0.3
    n_mels: int = 64
    # Fixed per run.
    blocks: int = 4
    clip_s: float = 5.0
    clip_hop_s: float = 2.5
    time_masks: int = 2  # SpecAugment masks per clip, each up to the fraction below wide
    time_mask_frac: float = 0.1
    freq_masks: int = 2
    freq_mask_frac: float = 0.15
    gain_db: float = 6.0  # random gain in +-gain_db per clip
    w_cnn: float = 1.0  # ensemble weights (see `ensemble`); w_hand 0 = the CNN alone
    w_hand: float = 0.0
    seed: int = 0
    threads: int = 0  # torch intra-op threads; 0 = torch's default

    def validate_config(self) -> None:
        if self.lr <= 0 or self.weight_decay < 0:
            raise ConfigError("lr must be > 0 and weight_decay >= 0")
        if self.batch_size < 1 or self.epochs < 1:
            raise ConfigError("batch_size and epochs must be >= 1")
        for key in ("time_mask_frac", "freq_mask_frac"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"{key} must lie in [0, 1)")
        if self.time_masks < 0 or self.freq_masks < 0 or self.gain_db < 0:
            raise ConfigError("mask counts and gain_db must be >= 0")
        if self.w_cnn < 0 or self.w_hand < 0 or self.w_cnn + self.w_hand == 0:
            raise ConfigError("w_cnn and w_hand must be >= 0 and not both 0")
        self.mel_config().validate_config()
        self.cnn_config(2).validate_config()

    def mel_config(self) -> MelConfig:
        return MelConfig(n_mels=self.n_mels, clip_s=self.clip_s, clip_hop_s=self.clip_hop_s)

    def cnn_config(self, n_classes: int) -> CnnConfig:
        return CnnConfig(
            n_mels=self.n_mels,
            n_classes=n_classes,
            width=self.width,
            dropout=self.dropout,
            blocks=self.blocks,
        )

    @classmethod
    def debug(cls) -> StyleTrainConfig:
        """Seconds on a CPU: a tiny CNN on 1 s clips of 16 mels, two epochs."""
        return cls(
            width=4, blocks=2, n_mels=16, dropout=0.0, epochs=2, batch_size=8, lr=3e-3,
            clip_s=1.0, clip_hop_s=0.5,
        )  # fmt: skip


@dataclass
class ClipSet:
    """Every clip of some recordings, with its label and the recording it came from."""

    x: np.ndarray  # (n, 1, n_mels, frames) float32
    y: np.ndarray  # (n,) int64 class index
    recording: np.ndarray  # (n,) index into `items`
    items: list[Item]

    def __len__(self) -> int:
        return len(self.y)

    def recording_labels(self) -> np.ndarray:
        labels = np.zeros(len(self.items), dtype=np.int64)
        labels[self.recording] = self.y
        return labels


@dataclass
class StyleData:
    train: ClipSet
    val: ClipSet
    labels: list[str]  # class order: index i is labels[i]


def clip_set(items: Sequence[Item], labels: Sequence[str], mel: MelConfig) -> ClipSet:
    """Load, resample and cut every recording; features as `features.mel_clips` makes them."""
    index = {s: i for i, s in enumerate(labels)}
    xs, ys, recs = [], [], []
    for r, item in enumerate(items):
        if item.style not in index:
            raise StyleDataError(f"{item.path}: style {item.style!r} is not among {list(labels)}")
        feats = mel_clips(load_recording(item.path, mel.sample_rate), mel)
        xs.append(feats)
        ys.append(np.full(len(feats), index[item.style], dtype=np.int64))
        recs.append(np.full(len(feats), r, dtype=np.int64))
    if not xs:
        shape = (0, 1, mel.n_mels, mel.frames)
        return ClipSet(
            np.zeros(shape, np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64), []
        )
    return ClipSet(np.concatenate(xs), np.concatenate(ys), np.concatenate(recs), list(items))


def build_data(splits: dict[str, list[Item]], labels: Sequence[str], mel: MelConfig) -> StyleData:
    return StyleData(
        clip_set(splits["train"], labels, mel), clip_set(splits["val"], labels, mel), list(labels)
    )


# --- augmentation --------------------------------------------------------------------------


def _masks(batch: int, size: int, count: int, frac: float, gen: torch.Generator) -> torch.Tensor:
    """(batch, size) bool: `count` random bands per row, each up to frac*size wide."""
    if count == 0 or frac == 0:
        return torch.zeros(batch, size, dtype=torch.bool)
    widths = (torch.rand(batch, count, generator=gen) * frac * size).long()
    starts = (torch.rand(batch, count, generator=gen) * (size - widths + 1)).long()
    pos = torch.arange(size).view(1, 1, size)
    inside = (pos >= starts[..., None]) & (pos < (starts + widths)[..., None])
    return inside.any(dim=1)


def augment(
    x: torch.Tensor, cfg: StyleTrainConfig, floor: float, scale_db: float, gen: torch.Generator
) -> torch.Tensor:
    """Random gain (a shift of the dB features, floored as silence is), then masks filled
    with silence."""
    b, _, n_mels, frames = x.shape
    gain = (torch.rand(b, 1, 1, 1, generator=gen) * 2 - 1) * cfg.gain_db / scale_db
    x = torch.clamp(x + gain, min=floor)
    freq = _masks(b, n_mels, cfg.freq_masks, cfg.freq_mask_frac, gen)[:, None, :, None]
    time_ = _masks(b, frames, cfg.time_masks, cfg.time_mask_frac, gen)[:, None, None, :]
    return x.masked_fill(freq | time_, floor)


# --- the loop -------------------------------------------------------------------------------


def clip_probs(model: nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Softmax over (n, 1, n_mels, frames) clips, in eval mode, without gradients."""
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            out.append(torch.softmax(model(torch.from_numpy(x[i : i + batch_size])), -1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def recording_probs(clip_p: np.ndarray, recording: np.ndarray, n_recordings: int) -> np.ndarray:
    """A recording's probabilities: the mean over its clips."""
    sums = np.zeros((n_recordings, clip_p.shape[1]))
    np.add.at(sums, recording, clip_p)
    counts = np.bincount(recording, minlength=n_recordings)[:, None]
    return sums / np.maximum(counts, 1)


def _class_weights(y: np.ndarray, n_classes: int) -> torch.Tensor:
    """Inverse clip frequency: a user style with few files counts as much as the rest."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    weights = np.where(counts > 0, len(y) / (n_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def _validate(model: StyleCnn, val: ClipSet) -> dict[str, float]:
    p = clip_probs(model, val.x)
    eps = 1e-7
    val_loss = float(-np.mean(np.log(p[np.arange(len(p)), val.y] + eps)))
    rec = recording_probs(p, val.recording, len(val.items))
    return {
        "val_loss": val_loss,
        "val_accuracy": float(np.mean(rec.argmax(1) == val.recording_labels())),
        "val_clip_accuracy": float(np.mean(p.argmax(1) == val.y)),
    }


def train_style(
    cfg: StyleTrainConfig, data: StyleData, report: Report | None = None
) -> tuple[StyleCnn, list[dict[str, Any]]]:
    """Train a fresh CNN; returns the best-validation model (eval mode) and the history.

    `report(epoch, metrics, model)` is called after every epoch with epoch, train_loss,
    val_loss, val_accuracy (per recording), val_clip_accuracy and seconds.
    """
    cfg.validate_config()
    if len(data.train) == 0 or len(data.val) == 0:
        raise StyleDataError("training needs clips in both the train and the val split")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    mel = cfg.mel_config()
    if data.train.x.shape[2:] != (mel.n_mels, mel.frames):
        raise ConfigError(
            f"clips are {data.train.x.shape[2:]} (mels, frames) but the config makes "
            f"{(mel.n_mels, mel.frames)}: build the data with cfg.mel_config()"
        )
    n_classes = len(data.labels)
    model = build_model(cfg.cnn_config(n_classes), seed=cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    x_all, y_all = torch.from_numpy(data.train.x), torch.from_numpy(data.train.y)
    steps_per_epoch = -(-len(y_all) // cfg.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.1
    )  # warm-up then cosine decay: stable from the first batch whatever lr a sweep picks
    loss_fn = nn.CrossEntropyLoss(weight=_class_weights(data.train.y, n_classes))
    history: list[dict[str, Any]] = []
    best: tuple[tuple[float, float], dict[str, Any]] | None = None
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(len(y_all), generator=gen)
        total = 0.0
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples to train
                continue
            xb = augment(x_all[idx], cfg, mel.floor, mel.scale_db, gen)
            loss = loss_fn(model(xb), y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        metrics = {"epoch": epoch, "train_loss": total / len(y_all), **_validate(model, data.val)}
        metrics["seconds"] = round(time.perf_counter() - t0, 3)
        history.append(metrics)
        log.info(
            "epoch %d: train loss %.3f, val loss %.3f, val accuracy %.3f",
            epoch, metrics["train_loss"], metrics["val_loss"], metrics["val_accuracy"],
        )  # fmt: skip
        if report is not None:
            report(epoch, dict(metrics), model)  # the model, so a trial can checkpoint it
        key = (metrics["val_accuracy"], -metrics["val_loss"])
        if best is None or key > best[0]:
            best = (key, copy.deepcopy(model.state_dict()))
    if best is not None:
        model.load_state_dict(best[1])
    return model.eval(), history
