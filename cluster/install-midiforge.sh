#!/usr/bin/env bash
# Install midiforge into the current Python (a node's or an image's), from this checkout.
#   cluster/install-midiforge.sh cpu|gpu|auto
# The same steps as `make install`, without the venv: torch from the CPU or CUDA
# requirements, midiforge with its cluster extras under the shared constraints, then
# basic-pitch without its TensorFlow dependency. `auto` picks gpu where nvidia-smi
# finds a GPU. The Ray version is not touched: the node's Ray must already be the one
# pyproject.toml pins (the image's or `ray up`'s), and the last line checks it.
set -euo pipefail
variant="${1:-auto}"
if [ "$variant" = auto ]; then
    if nvidia-smi -L >/dev/null 2>&1; then variant=gpu; else variant=cpu; fi
fi
case "$variant" in cpu|gpu) ;; *) echo "usage: $0 cpu|gpu|auto" >&2; exit 2 ;; esac
root="$(cd "$(dirname "$0")/.." && pwd)"
pip="python -m pip --disable-pip-version-check --no-cache-dir -q"
$pip install "setuptools<81" wheel
# PyPI's torch wheel for Linux is the CUDA build (several GB); CPU nodes take PyTorch's
# CPU index instead. torch-gpu.txt names its CUDA index itself.
index=()
if [ "$variant" = cpu ]; then index=(--extra-index-url https://download.pytorch.org/whl/cpu); fi
$pip install "${index[@]}" -r "$root/requirements/torch-$variant.txt"
$pip install -c "$root/requirements/constraints.txt" "$root[data,train,serve]"
$pip install --no-deps -r "$root/requirements/basic-pitch.txt"
if [ "$variant" = gpu ]; then
    # midiforge depends on onnxruntime; the CUDA build ships the same module, so it
    # replaces the CPU build rather than sitting beside it.
    $pip uninstall -y onnxruntime
    $pip install --force-reinstall --no-deps onnxruntime-gpu
fi
pinned="$(sed -n 's/.*"ray\[[^]]*\]==\([0-9.]*\)".*/\1/p' "$root/pyproject.toml" | head -n 1)"
python - "$pinned" <<'PY'
import sys

import midiforge  # noqa: F401 - the install is importable
import ray

if ray.__version__ != sys.argv[1]:
    sys.exit(f"this node runs Ray {ray.__version__}; midiforge pins {sys.argv[1]}")
print(f"midiforge installed on Ray {ray.__version__}")
PY
