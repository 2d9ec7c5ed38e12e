"""A trained style CNN -> a model folder that `StyleClassifier.load` serves without torch.

The folder holds:
  model.onnx    input `mel` (batch, 1, n_mels, frames) float32, output `probs` (batch,
                n_classes): the softmax is in the graph, so callers never re-derive it
  config.yaml   labels (class order), mel (MelConfig), cnn (CnnConfig), train, data
  labels.json   the class labels in output order
  metrics.json  training history and, once evaluated, held-out results
  hand.json     only with an ensemble (w_hand > 0)

The export is checked against torch on random input and refused beyond 1e-4.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from midiforge import config as cfgmod
from midiforge.classifiers.style.classifier import (
    CONFIG_FILE,
    INPUT_NAME,
    LABELS_FILE,
    METRICS_FILE,
    MODEL_FILE,
    OUTPUT_NAME,
)
from midiforge.classifiers.style.ensemble import HandModel
from midiforge.classifiers.style.features import MelConfig
from midiforge.classifiers.style.model import StyleCnn
from midiforge.errors import MidiforgeError

VERIFY_ATOL = 1e-4
OPSET = 17
IR_VERSION = 10  # onnxruntime 1.18+ reads it; newer onnx writes versions older runtimes refuse


class ExportError(MidiforgeError, RuntimeError):
    """An exported graph that does not reproduce the torch model."""


class _Probs(torch.nn.Module):
    def __init__(self, model: StyleCnn) -> None:
        super().__init__()
        self.model = model

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(mel), dim=-1)


def export_onnx(model: StyleCnn, path: str | Path, frames: int) -> Path:
    """Write the CNN with its softmax as ONNX, batch dynamic, and check parity."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(2, 1, model.cfg.n_mels, frames)
    with torch.no_grad(), warnings.catch_warnings():
        # Exporter chatter, not faults: the legacy (TorchScript) exporter is chosen on purpose,
        # as in the transcription and LM exports, and says so with deprecation warnings.
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            _Probs(model.eval()),
            (dummy,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,  # the TorchScript exporter: no onnxscript at export time
        )
    proto = onnx.load(str(path))
    proto.ir_version = min(proto.ir_version, IR_VERSION)
    onnx.save(proto, str(path))
    err = max_abs_diff(model, path, frames)
    if err > VERIFY_ATOL:
        raise ExportError(f"exported {path} differs from torch by {err:.2e} (> {VERIFY_ATOL:g})")
    return path


def max_abs_diff(model: StyleCnn, onnx_path: str | Path, frames: int, n: int = 3) -> float:
    """Largest |torch - onnxruntime| over the probabilities of `n` random clips."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    mel = rng.normal(-1.0, 0.5, (n, 1, model.cfg.n_mels, frames)).astype(np.float32)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (got,) = sess.run([OUTPUT_NAME], {INPUT_NAME: mel})
    with torch.no_grad():
        ref = torch.softmax(model.eval()(torch.from_numpy(mel)), -1).numpy()
    return float(np.abs(ref - got).max())


def save_model_folder(
    folder: str | Path,
    model: StyleCnn,
    *,
    labels: list[str],
    mel: MelConfig,
    train: Any,
    metrics: dict[str, Any],
    data: dict[str, Any] | None = None,
    hand: HandModel | None = None,
) -> Path:
    """Export and write every file of the model folder; returns the folder."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    if len(labels) != model.cfg.n_classes:
        raise ExportError(f"{len(labels)} labels for a model with {model.cfg.n_classes} outputs")
    if mel.n_mels != model.cfg.n_mels:
        raise ExportError(f"mel config has {mel.n_mels} mels, the model {model.cfg.n_mels}")
    export_onnx(model, out / MODEL_FILE, mel.frames)
    config = {
        "labels": list(labels),
        "mel": cfgmod.to_dict(mel),
        "cnn": cfgmod.to_dict(model.cfg),
        "train": cfgmod.to_dict(train),
        "data": data or {},
    }
    (out / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
    (out / LABELS_FILE).write_text(json.dumps(list(labels)))
    write_metrics(out, metrics)
    if hand is not None:
        hand.save(out)
    return out


def write_metrics(folder: str | Path, metrics: dict[str, Any]) -> None:
    (Path(folder) / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
