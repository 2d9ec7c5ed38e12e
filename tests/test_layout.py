"""The project's shape and set-up promises."""

import importlib.metadata
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_design_card_layout_exists_with_readmes():
    for folder in ("cluster", "jobs", "serve", "src", "tests", "k8s"):
        assert (ROOT / folder).is_dir(), folder
    for folder in ("cluster", "jobs", "serve", "k8s", "bench"):
        assert (ROOT / folder / "README.md").read_text().strip(), folder


def test_ci_runs_make_test_and_nothing_else():
    lines = [
        ln.strip()
        for ln in (ROOT / ".ci" / "run").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines[-1] == "exec make test"
    assert all(ln.startswith(("set ", "cd ", "exec make test")) for ln in lines)


def test_cpu_install_has_no_cuda_packages():
    if os.environ.get("MIDIFORGE_GPU_IMAGE") == "1":  # GPU images install CUDA on purpose
        return
    names = {d.metadata["Name"].lower() for d in importlib.metadata.distributions()}
    cuda = sorted(n for n in names if n.startswith("nvidia-") or n == "triton")
    assert not cuda, cuda
    assert "+cpu" in importlib.metadata.version("torch")
    assert "tensorflow" not in names  # basic-pitch went in without its TF dependency
