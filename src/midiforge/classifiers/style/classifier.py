"""Load a style model folder and classify audio with onnxruntime: no torch at inference.

`StyleClassifier.load` reads the folder once (ONNX session, mel settings, labels, the
optional handcrafted model); `predict` is then cheap to call again and again, and safe
from several threads (onnxruntime sessions are), which is how Serve's `/v1/classify`
uses it. Audio is checked before any work: empty, too short, silent or non-finite input
is refused with the reason, since a confident answer about silence would be a lie.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml

from midiforge import audio as audiomod
from midiforge import config as cfgmod
from midiforge.classifiers.style.ensemble import HAND_FILE, HandModel, combine
from midiforge.classifiers.style.features import MelConfig, handcrafted_features, mel_clips
from midiforge.errors import MidiforgeError

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.yaml"
LABELS_FILE = "labels.json"
METRICS_FILE = "metrics.json"
INPUT_NAME, OUTPUT_NAME = "mel", "probs"
KIND = "style-classifier"  # the registry kind
MAX_CHANNELS = 16  # more "channels" than this means frames and channels were swapped


class StyleInputError(MidiforgeError, ValueError):
    """Audio that cannot be classified; `reason` is a stable code (empty, too_short, ...)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self):
        # Rebuilt from both fields when it crosses processes (a Serve replica to its
        # caller); the default would call __init__ with the joined message only.
        return type(self), (self.reason, self.detail)


class StyleModelError(MidiforgeError, LookupError):
    """A model name or folder that is not a usable style classifier."""


def resolve_model_dir(name_or_path: str | Path, models_root: str | None = None) -> Path:
    """A folder holding model.onnx, or a registry name of kind style-classifier -> folder.
    A local folder wins over a registry name of the same spelling, since the user sees it."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / MODEL_FILE).is_file():
            raise StyleModelError(f"{path} is a folder without {MODEL_FILE}")
        return path
    return registry_model_dir(str(name_or_path), models_root, "no such folder, and ")


def registry_model_dir(name: str, models_root: str | None = None, why: str = "") -> Path:
    """A registry name of kind style-classifier -> its folder (never a local path: what the
    service resolves from a request's model name)."""
    from midiforge.registry import Registry, RegistryError

    reg = Registry(models_root)
    try:
        manifest = reg.manifest(name)
    except RegistryError as e:
        raise StyleModelError(f"style model {name!r} not found: {why}{e}") from None
    if manifest.kind != KIND:
        raise StyleModelError(f"model {manifest.name!r} is a {manifest.kind}, not a {KIND}")
    return reg.fetch(manifest.name)


class StyleClassifier:
    """A loaded style model; `predict(audio, sr)` -> [(style, probability)] best first."""

    def __init__(
        self,
        session,
        labels: Sequence[str],
        mel: MelConfig,
        *,
        w_cnn: float = 1.0,
        w_hand: float = 0.0,
        hand: HandModel | None = None,
        limits: audiomod.AudioLimits | None = None,
        batch_size: int = 64,
    ) -> None:
        if w_hand > 0 and hand is None:
            raise StyleModelError(f"w_hand is {w_hand} but the model has no {HAND_FILE}")
        self.session = session
        self.labels = list(labels)
        self.mel = mel
        self.w_cnn, self.w_hand, self.hand = w_cnn, w_hand, hand
        self.limits = limits or audiomod.AudioLimits()
        self.batch_size = batch_size

    @classmethod
    def load(
        cls,
        folder: str | Path,
        *,
        threads: int = 1,
        limits: audiomod.AudioLimits | None = None,
    ) -> StyleClassifier:
        """Read a model folder (see `onnx_export`); `threads` per onnxruntime call."""
        import onnxruntime as ort

        root = Path(folder)
        missing = [f for f in (MODEL_FILE, CONFIG_FILE, LABELS_FILE) if not (root / f).is_file()]
        if missing:
            raise StyleModelError(f"{root} is not a style model: missing {', '.join(missing)}")
        config = yaml.safe_load((root / CONFIG_FILE).read_text()) or {}
        labels = json.loads((root / LABELS_FILE).read_text())
        if labels != config.get("labels"):
            raise StyleModelError(f"{root}: {LABELS_FILE} and {CONFIG_FILE} disagree on labels")
        mel = cfgmod.from_dict(MelConfig, config.get("mel", {}))
        train = config.get("train", {})
        w_hand = float(train.get("w_hand", 0.0))
        if w_hand > 0 and not (root / HAND_FILE).is_file():
            raise StyleModelError(f"{root}: config sets w_hand {w_hand} but {HAND_FILE} is missing")
        hand = HandModel.load(root) if w_hand > 0 else None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(
            str(root / MODEL_FILE), opts, providers=["CPUExecutionProvider"]
        )
        return cls(
            session, labels, mel, w_cnn=float(train.get("w_cnn", 1.0)), w_hand=w_hand,
            hand=hand, limits=limits,
        )  # fmt: skip

    def _checked_mono(self, audio: np.ndarray, sr: int) -> np.ndarray:
        x = np.asarray(audio, dtype=np.float32)
        if x.size == 0:
            raise StyleInputError("empty", "the audio has no samples")
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[0] > MAX_CHANNELS:
            raise StyleInputError(
                "bad_shape", f"want mono (frames,) or (channels, frames) audio, got {x.shape}"
            )
        if not isinstance(sr, int | np.integer) or sr < 1:
            raise StyleInputError("bad_sample_rate", f"sample rate {sr!r} is not a positive int")
        try:
            audiomod.check_finite(x)
            audiomod.check_content(x, int(sr), self.limits)
        except audiomod.AudioError as e:
            raise StyleInputError(e.reason, e.detail) from None
        return audiomod.to_mono(x, int(sr), self.mel.sample_rate)

    def probabilities(self, audio: np.ndarray, sr: int) -> np.ndarray:
        """(n_classes,) probabilities in `labels` order: the mean over the audio's clips,
        mixed with the handcrafted model where the model has one."""
        mono = self._checked_mono(audio, sr)
        feats = mel_clips(mono, self.mel)
        parts = [
            self.session.run([OUTPUT_NAME], {INPUT_NAME: feats[i : i + self.batch_size]})[0]
            for i in range(0, len(feats), self.batch_size)
        ]
        p = np.concatenate(parts).mean(axis=0)
        if self.hand is not None and self.w_hand > 0:
            p_hand = self.hand.proba(handcrafted_features(mono, self.mel.sample_rate))[0]
            p = combine(p, p_hand, self.w_cnn, self.w_hand)
        return (p / p.sum()).astype(np.float64)

    def predict(self, audio: np.ndarray, sr: int, top: int = 3) -> list[tuple[str, float]]:
        """The `top` most likely styles, best first, with their probabilities."""
        if top < 1:
            raise StyleInputError("bad_top", f"top must be >= 1, got {top}")
        p = self.probabilities(audio, sr)
        order = np.argsort(-p, kind="stable")[:top]
        return [(self.labels[i], float(p[i])) for i in order]
