"""Source separation with Demucs: pick one stem (e.g. ``other``) out of a mix.

A separator is named by a spec string:

- ``none``: no separation (the pipeline transcribes the mix itself);
- a pretrained name such as ``htdemucs``: weights from torch.hub's cache, or downloaded once
  on the driver by :func:`check_available`;
- ``DIR:NAME``: a local Demucs repo, a folder holding ``NAME.th`` or a ``NAME.yaml`` bag.
  :func:`make_debug_repo` writes a tiny random model in that format, so tests and debug jobs
  load through the same code as real models.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from midiforge.errors import MidiforgeError

log = logging.getLogger(__name__)

NONE = "none"
DEBUG_SOURCES = ["drums", "bass", "other", "vocals"]
# Tiny on purpose: depth 4 keeps the transformer's sequence short (that dominates CPU time);
# dconv_comp=2 because the default 8 would leave the residual branch 0 channels wide.
_DEBUG_KWARGS = {"audio_channels": 2, "samplerate": 44_100, "segment": 4, "channels": 4}
_DEBUG_KWARGS |= {"depth": 4, "dconv_comp": 2, "t_layers": 1, "t_heads": 2}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class SeparationError(MidiforgeError, RuntimeError):
    """A separator that cannot be used; the message says why and what to do."""


def parse_spec(spec: str) -> tuple[str, str | None, str | None]:
    """Split a spec into ``(kind, name, directory)``; kind is none | pretrained | local."""
    if not isinstance(spec, str) or not spec.strip():
        raise SeparationError(
            "empty separator spec: use a pretrained Demucs name (e.g. 'htdemucs'), "
            "DIR:NAME for a local Demucs repo, or 'none'"
        )
    spec = spec.strip()
    if spec == NONE:
        return NONE, None, None
    # rsplit: the folder may itself contain ':', the model name never does.
    directory, sep, name = spec.rpartition(":")
    if sep and not directory:
        raise SeparationError(f"invalid separator spec {spec!r}: the folder before ':' is empty")
    if not _NAME_RE.match(name):
        raise SeparationError(
            f"invalid separator spec {spec!r}: model name {name!r} must be letters, digits, "
            "'_', '.' or '-' (use a pretrained Demucs name, DIR:NAME, or 'none')"
        )
    return ("local", name, directory) if sep else ("pretrained", name, None)


def _is_offline() -> bool:
    flags = (os.environ.get(v, "").strip().lower() for v in ("MIDIFORGE_OFFLINE", "HF_HUB_OFFLINE"))
    return any(flag in {"1", "true", "yes", "on"} for flag in flags)


def _remote_root() -> Path:
    from demucs.pretrained import REMOTE_ROOT

    return Path(REMOTE_ROOT)


def _signatures(bag_yaml: Path) -> list[str]:
    import yaml

    return [str(sig) for sig in yaml.safe_load(bag_yaml.read_text())["models"]]


def _needed_checkpoints(name: str) -> list[str]:
    """Checkpoint file names (as torch.hub caches them) that pretrained ``name`` loads."""
    # demucs ships its download list: lines SIG-CHECKSUM.th, torch.hub keeps the file name.
    lines = (_remote_root() / "files.txt").read_text().split()
    files = {f.split("-", 1)[0]: f for f in lines if f.endswith(".th")}
    bag = _remote_root() / f"{name}.yaml"
    if bag.is_file():
        return [files[sig] for sig in _signatures(bag)]
    if name in files:
        return [files[name]]
    known = sorted(p.stem for p in _remote_root().glob("*.yaml"))
    raise SeparationError(
        f"unknown pretrained Demucs model {name!r}; known names: {', '.join(known)} "
        "(or pass --separator DIR:NAME with a local Demucs repo, or --separator none)"
    )


def _checkpoint_dir() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def _hf_cached(name: str) -> bool:
    """Whether demucs's HuggingFace route (tried first by get_model) has ``name`` cached."""
    from demucs.hf import DEFAULT_NAMESPACE, hf_repo_name
    from huggingface_hub import try_to_load_from_cache

    repo_id = f"{DEFAULT_NAMESPACE}/{hf_repo_name(name)}"
    bag = try_to_load_from_cache(repo_id, f"{name}.yaml")
    if not isinstance(bag, str):
        return False
    return all(
        isinstance(try_to_load_from_cache(repo_id, f"{sig}.safetensors"), str)
        for sig in _signatures(Path(bag))
    )


def _how_to(name: str, where: Path) -> str:
    from huggingface_hub.constants import HF_HUB_CACHE

    # demucs 4.1 downloads to the HuggingFace cache first, torch.hub's only as a fallback.
    return (
        f"run `python -c \"from demucs.pretrained import get_model; get_model('{name}')\"` "
        f"once on a machine with internet and copy its cache ({HF_HUB_CACHE} or {where}) "
        "here, or pass --separator DIR:NAME with a local Demucs repo, or --separator none"
    )


def _local_has(directory: Path, sig: str) -> bool:
    # demucs's LocalRepo accepts SIG.th and checksummed SIG-xxxxxxxx.th alike.
    return (directory / f"{sig}.th").is_file() or any(directory.glob(f"{sig}-*.th"))


def _check_local(name: str, directory: Path) -> None:
    if not directory.is_dir():
        raise SeparationError(
            f"Demucs repo folder {directory} does not exist: create it with {name}.th "
            f"(or a {name}.yaml bag) inside, or pass a pretrained name or --separator none"
        )
    bag = directory / f"{name}.yaml"
    if bag.is_file():
        missing = [s for s in _signatures(bag) if not _local_has(directory, s)]
        if missing:
            raise SeparationError(
                f"Demucs bag {bag} names models missing from {directory}: "
                + ", ".join(f"{s}.th" for s in missing)
            )
    elif not _local_has(directory, name):
        raise SeparationError(
            f"Demucs repo folder {directory} has neither {name}.th nor {name}.yaml; "
            f"it holds: {', '.join(sorted(p.name for p in directory.iterdir())) or 'nothing'}"
        )


def check_available(spec: str) -> None:
    """Fail fast, on the driver before any work is scheduled, if ``spec`` cannot be loaded.

    A pretrained model missing from the caches is downloaded here, once, unless the run is
    declared offline (MIDIFORGE_OFFLINE=1 or HF_HUB_OFFLINE=1).
    """
    _, name, directory = parse_spec(spec)
    if name is None:  # 'none'
        return
    if directory is not None:
        _check_local(name, Path(directory))
        return
    ckpt = _checkpoint_dir()
    missing = [f for f in _needed_checkpoints(name) if not (ckpt / f).is_file()]
    if not missing or _hf_cached(name):
        return
    if _is_offline():
        raise SeparationError(
            f"Demucs weights for {name!r} are not cached in {ckpt} (missing: "
            f"{', '.join(missing)}) and this run is offline: {_how_to(name, ckpt)}"
        )
    log.info("downloading Demucs weights for %r into the local caches", name)
    try:
        _get_model(name, None)
    except Exception as exc:  # any download/parse failure gets the same how-to message
        raise SeparationError(
            f"could not fetch Demucs weights for {name!r} into {ckpt}: {_how_to(name, ckpt)}. "
            f"Error: {exc}"
        ) from exc


def _get_model(name: str, repo: Path | None) -> Any:
    from demucs.pretrained import get_model

    try:
        return get_model(name, repo=repo)
    except SystemExit as exc:  # demucs's fatal() exits instead of raising
        raise SeparationError(f"demucs could not load {name!r} from {repo}") from exc


def _load_cached_pretrained(name: str) -> Any:
    """Load ``name`` from torch.hub's cache through demucs's own repo classes.

    get_model(name) would first ask the HuggingFace hub over the network, which on an
    offline worker waits for timeouts before falling back to this same cache.
    """
    from demucs.repo import AnyModelRepo, BagOnlyRepo, LocalRepo

    checkpoints = LocalRepo(_checkpoint_dir())
    model = AnyModelRepo(checkpoints, BagOnlyRepo(_remote_root(), checkpoints)).get_model(name)
    return model.eval()


def load_model(spec: str) -> Any:
    """Return the Demucs model (HTDemucs or BagOfModels) named by ``spec``, in eval mode."""
    _, name, directory = parse_spec(spec)
    if name is None:
        raise SeparationError("separator 'none' has no model to load")
    try:
        if directory is not None:
            _check_local(name, Path(directory))
            model = _get_model(name, Path(directory))
        elif all((_checkpoint_dir() / f).is_file() for f in _needed_checkpoints(name)):
            model = _load_cached_pretrained(name)
        else:
            model = _get_model(name, None)
    except SeparationError:
        raise
    except Exception as exc:  # torch/yaml/pickle errors: report them with the spec
        raise SeparationError(f"could not load Demucs model {spec!r}: {exc}") from exc
    return model.eval()


def make_debug_repo(directory: str | Path, name: str = "debug", seed: int = 0) -> Path:
    """Write a tiny random HTDemucs as ``DIRECTORY/NAME.th``; the same seed, the same weights.

    Sized for speed, not quality: 5 s of stereo separate in about half a second on one core.
    """
    import torch
    from demucs.htdemucs import HTDemucs

    if not _NAME_RE.match(name):
        raise SeparationError(f"invalid debug model name {name!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = HTDemucs(sources=list(DEBUG_SOURCES), **_DEBUG_KWARGS)
    args, kwargs = model._init_args_kwargs  # recorded by demucs's capture_init
    package = {
        "klass": HTDemucs,
        "args": args,
        "kwargs": kwargs,
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
    }
    torch.save(package, directory / f"{name}.th")
    return directory


class DemucsSeparator:
    """Holds one loaded Demucs model and returns one stem of the audio it is called on."""

    def __init__(
        self,
        spec: str,
        stem: str = "other",
        device: str = "cpu",
        segment: float | None = None,
        shifts: int = 0,
    ) -> None:
        from demucs.htdemucs import HTDemucs

        self.spec = spec
        self.model = load_model(spec)
        self.sources: list[str] = list(self.model.sources)
        if stem not in self.sources:
            raise SeparationError(
                f"stem {stem!r} is not produced by {spec!r}; valid stems: {', '.join(self.sources)}"
            )
        # Transformer models cannot attend past the segment length they were trained on.
        single = float(self.model.segment) if isinstance(self.model, HTDemucs) else float("inf")
        limit = float(getattr(self.model, "max_allowed_segment", single))
        if segment is not None and not 0 < segment <= limit:
            raise SeparationError(
                f"segment must be in (0, {limit}] seconds for {spec!r}, got {segment}"
            )
        self.stem = stem
        self.stem_index = self.sources.index(stem)
        self.device = device
        self.segment = segment
        self.shifts = shifts
        self.samplerate = int(self.model.samplerate)
        self.audio_channels = int(self.model.audio_channels)
        self.model.to(device)

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        """``audio``: float (channels, samples) at ``samplerate``; returns the stem, same shape.

        Mono input is repeated to the model's channels and the stem averaged back to mono.
        """
        import torch
        from demucs.apply import apply_model

        if audio.ndim != 2 or audio.shape[0] not in (1, self.audio_channels):
            raise SeparationError(
                f"audio must be shaped (1 or {self.audio_channels}, samples), got {audio.shape}"
            )
        if audio.shape[1] == 0:
            return np.zeros(audio.shape, dtype=np.float32)
        wav = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
        if wav.shape[0] == 1:
            wav = wav.expand(self.audio_channels, -1)
        # The models were trained on standardised mixes; scale in and back out the way
        # demucs's own Separator does, so loud and quiet inputs get the same treatment.
        ref = wav.mean(0)
        mean, std = ref.mean(), ref.std() + 1e-8
        with torch.inference_mode():
            out = apply_model(
                self.model,
                ((wav - mean) / std)[None],
                shifts=self.shifts,
                split=True,  # segment by segment, so memory stays bounded on long files
                overlap=0.25,
                segment=self.segment,
                device=self.device,
                progress=False,
            )
        stem = out[0, self.stem_index] * std + mean
        if audio.shape[0] == 1:
            stem = stem.mean(0, keepdim=True)
        return stem.cpu().numpy().astype(np.float32, copy=False)
