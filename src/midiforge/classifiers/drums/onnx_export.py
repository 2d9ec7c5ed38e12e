"""A trained drum filter as a model folder that runs on onnxruntime alone.

The folder holds `model.onnx` (input `features`, float32 (N, 7); outputs `label` and
`probabilities`, plain tensors: ZipMap is switched off so no runtime needs a list of
dicts), `config.yaml` (the `DrumTrainConfig` it was trained with, feature windows and
sample rate included, since inference must compute features the same way),
`metrics.json` and `features.json` (feature order and stem). Export is refused unless
onnxruntime's keep probabilities match scikit-learn's within 1e-4 on the check rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from midiforge import config as cfgmod
from midiforge.classifiers.drums.features import BANDS_HZ, FEATURES, FeatureConfig
from midiforge.classifiers.drums.kit import check_stem
from midiforge.classifiers.drums.model import DrumTrainConfig
from midiforge.errors import MidiforgeError

INPUT = "features"
PARITY_ATOL = 1e-4
# ai.onnx.ml 3 holds TreeEnsembleClassifier and LinearClassifier as every onnxruntime
# since 1.10 reads them.
OPSET = {"": 17, "ai.onnx.ml": 3}


class ExportError(MidiforgeError, RuntimeError):
    """The ONNX graph disagrees with the scikit-learn model, or a folder is not a filter."""


def _final_step(estimator: Any) -> Any:
    return estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator


def to_onnx(estimator: Any) -> bytes:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    onx = convert_sklearn(
        estimator,
        initial_types=[(INPUT, FloatTensorType([None, len(FEATURES)]))],
        options={id(_final_step(estimator)): {"zipmap": False}},
        target_opset=OPSET,
    )
    return onx.SerializeToString()


def _session(model: bytes | str | Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # a few hundred rows: threads cost more than they save
    src = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def _keep_column(classes: Any) -> int:
    classes = [int(c) for c in np.asarray(classes).reshape(-1)]
    if 1 not in classes:
        raise ExportError(f"the model knows classes {classes}, not 1 (keep)")
    return classes.index(1)


def check_parity(
    estimator: Any, onnx_bytes: bytes, x: np.ndarray, atol: float = PARITY_ATOL
) -> float:
    """Largest |onnxruntime - scikit-learn| keep probability on x; raises above atol.
    Both see the same float32 rows, as the ONNX input is float32."""
    x32 = np.asarray(x, dtype=np.float32).reshape(-1, len(FEATURES))
    col = _keep_column(estimator.classes_)
    ref = estimator.predict_proba(x32.astype(np.float64))[:, col]
    got = _session(onnx_bytes).run(["probabilities"], {INPUT: x32})[0][:, col]
    worst = float(np.max(np.abs(ref - got))) if len(x32) else 0.0
    if not worst <= atol:
        raise ExportError(
            f"ONNX keep probabilities differ from scikit-learn's by up to {worst:.2e} "
            f"(allowed {atol:g}); the model was not saved"
        )
    return worst


def save_model(
    folder: str | Path,
    estimator: Any,
    stem: str,
    config: DrumTrainConfig,
    *,
    metrics: dict[str, Any],
    x_check: np.ndarray,
) -> Path:
    """Export, check parity on x_check, and write the model folder."""
    check_stem(stem)
    onnx_bytes = to_onnx(estimator)
    worst = check_parity(estimator, onnx_bytes, x_check)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.onnx").write_bytes(onnx_bytes)
    cfgmod.save(config, out / "config.yaml")
    metrics = {**metrics, "onnx_parity_max_abs": worst}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    features = {
        "stem": stem,
        "features": list(FEATURES),
        "bands_hz": {"body": BANDS_HZ[stem][0], "brilliance": BANDS_HZ[stem][1]},
        "keep_column": _keep_column(estimator.classes_),
    }
    (out / "features.json").write_text(json.dumps(features, indent=2) + "\n")
    return out


class DrumFilter:
    """A model folder loaded for inference: `keep_probability(features)`."""

    def __init__(self, folder: Path, stem: str, config: DrumTrainConfig, keep_column: int):
        self.folder = folder
        self.stem = stem
        self.config = config
        self.feature_config: FeatureConfig = config.features
        self.sample_rate = config.sample_rate
        self._keep = keep_column
        self._session = _session(folder / "model.onnx")

    @classmethod
    def load(cls, folder: str | Path) -> DrumFilter:
        folder = Path(folder)
        missing = [f for f in ("model.onnx", "config.yaml", "features.json")
                   if not (folder / f).is_file()]  # fmt: skip
        if missing:
            raise ExportError(f"{folder} is not a drum filter: missing {', '.join(missing)}")
        info = json.loads((folder / "features.json").read_text())
        if list(info.get("features", [])) != list(FEATURES):
            raise ExportError(
                f"{folder} was trained on features {info.get('features')}, this version "
                f"computes {list(FEATURES)}: retrain it"
            )
        config = cfgmod.from_dict(DrumTrainConfig, cfgmod.read_yaml(folder / "config.yaml"))
        return cls(folder, check_stem(info["stem"]), config, int(info["keep_column"]))

    def keep_probability(self, features: np.ndarray) -> np.ndarray:
        x = np.asarray(features, dtype=np.float32).reshape(-1, len(FEATURES))
        if len(x) == 0:
            return np.zeros(0, dtype=np.float32)
        return self._session.run(["probabilities"], {INPUT: x})[0][:, self._keep]
