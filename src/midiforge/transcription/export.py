"""A trained BasicPitch -> ONNX shaped exactly like the stock `nmp.onnx`, plus the files that
let it be fine-tuned again.

Same input name and shape (batch, 43,844, 1) and the same three output names, so the
dataset job, Serve and the CLI run a custom model through the same OnnxTranscriber with no
special case. Next to model.onnx sits `weights.pt` (front-end constants + state dict):
ONNX is for inference, weights.pt is what `--base-model NAME` starts from.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import torch

from midiforge.transcription import constants as bp
from midiforge.transcription.torch_model import BasicPitch, FrontEndConstants

WEIGHTS = "weights.pt"
VERIFY_ATOL = 1e-4
IR_VERSION = 10  # onnxruntime 1.18+ reads it; newer onnx writes versions older runtimes refuse


class _Outputs(torch.nn.Module):
    """The stock graph's output order: onset, note, contour."""

    ORDER = ("onset", "note", "contour")

    def __init__(self, model: BasicPitch) -> None:
        super().__init__()
        self.model = model

    def forward(self, audio: torch.Tensor):
        out = self.model(audio)
        return tuple(out[k] for k in self.ORDER)


def export_onnx(model: BasicPitch, out_path: str | Path, verify: bool = True) -> Path:
    """Write model.onnx; with `verify`, check onnxruntime against torch on random audio."""
    import onnx

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = _Outputs(model.eval())
    names = [bp.OUTPUT_NAMES[k] for k in _Outputs.ORDER]
    dummy = torch.zeros(1, bp.AUDIO_N_SAMPLES, 1)
    dummy[0, :, 0] = torch.randn(bp.AUDIO_N_SAMPLES, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), warnings.catch_warnings():
        # The harmonic-stacking slices are not constant-folded; that is expected and harmless.
        warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
        torch.onnx.export(
            wrapper,
            (dummy,),
            str(out_path),
            input_names=[bp.INPUT_NAME],
            output_names=names,
            dynamic_axes={n: {0: "batch"} for n in [bp.INPUT_NAME, *names]},
            opset_version=17,
            dynamo=False,
        )
    proto = onnx.load(str(out_path))
    proto.ir_version = min(proto.ir_version, IR_VERSION)
    onnx.save(proto, str(out_path))
    if verify:
        err = max_abs_diff(model, out_path)
        if err > VERIFY_ATOL:
            raise RuntimeError(f"exported {out_path} differs from torch by {err:.2e}")
    return out_path


def max_abs_diff(model: BasicPitch, onnx_path: str | Path, n: int = 2, seed: int = 0) -> float:
    """Largest |torch - onnxruntime| over the three outputs on `n` random windows."""
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    audio = (0.1 * rng.standard_normal((n, bp.AUDIO_N_SAMPLES, 1))).astype(np.float32)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = dict(zip(bp.OUTPUT_NAMES, sess.run(list(bp.OUTPUT_NAMES.values()),
                                             {bp.INPUT_NAME: audio}), strict=True))  # fmt: skip
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(audio))
    return max(float(np.abs(ref[k].numpy() - got[k]).max()) for k in bp.OUTPUT_NAMES)


def save_weights(model: BasicPitch, path: str | Path) -> None:
    front = model.cqt.constants
    torch.save(
        {"front": dataclasses.asdict(front), "state": model.head_state()},
        Path(path),
    )


def load_weights(path: str | Path) -> BasicPitch:
    saved = torch.load(Path(path), weights_only=False)
    model = BasicPitch(FrontEndConstants(**saved["front"]))
    model.load_head_state(saved["state"])
    return model
