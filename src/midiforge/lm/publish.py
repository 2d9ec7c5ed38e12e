"""`midiforge lm export NAME [--int8] [--graph auto|gqa|traced]`: add ONNX graphs to a
registered model.

The model is fetched from the registry, exported (lm.export: past key/values as inputs
and outputs), optionally quantized to INT8, and pushed back under the same name as a new
version that carries everything the old one had plus model.onnx (and model.int8.onnx).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

ONNX = "model.onnx"
ONNX_INT8 = "model.int8.onnx"


def export_registered(
    name: str, int8: bool = False, models_root: str | None = None, graph: str = "auto"
) -> dict:
    from midiforge import registry
    from midiforge.lm.export import export_onnx, quantize_int8

    reg = registry.Registry(models_root)
    manifest = reg.manifest(name)
    if manifest.kind != "lm":
        raise registry.RegistryError(f"model {name!r} is a {manifest.kind}, not a language model")
    src = reg.fetch(name)
    info: dict[str, Any] = {"name": name, "from_version": manifest.version}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / name
        shutil.copytree(src, work, ignore=shutil.ignore_patterns("manifest.json"))
        t0 = time.perf_counter()
        export_onnx(work / "hf", work / ONNX, graph=graph)
        info["graph"] = json.loads((work / "export.json").read_text())["graph"]
        info["onnx_bytes"] = (work / ONNX).stat().st_size
        info["export_s"] = round(time.perf_counter() - t0, 2)
        if int8:
            quantize_int8(work / ONNX, work / ONNX_INT8)
            info["int8_bytes"] = (work / ONNX_INT8).stat().st_size
        mpath = work / "metrics.json"
        metrics = json.loads(mpath.read_text()) if mpath.is_file() else {}
        metrics["export"] = {k: v for k, v in info.items() if k != "name"}
        mpath.write_text(json.dumps(metrics, indent=2))
        pushed = reg.push(
            work,
            name,
            kind="lm",
            parent=manifest.parent,
            training_data_hash=manifest.training_data_hash,
            metrics=metrics,
        )
    info["version"] = pushed.version
    return info
