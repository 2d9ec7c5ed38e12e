"""Model registry over a local folder or any pyarrow filesystem URI (s3://, gs://, ...).

Layout under the root::

    NAME/manifest.json              the commit point: names the current version
    NAME/versions/VERSION/<files>   immutable once written

A push uploads a new version folder first and writes `NAME/manifest.json` last, through a
temporary object and a move. One object is the commit, so a reader sees the old model or
the new one, never half of either — on a folder and on object stores, which have no
atomic directory rename. Pull verifies the sha256 of every file and refuses a copy that
does not match.

`stock` is reserved: it always names basic-pitch's shipped `nmp.onnx`.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow.fs as pafs

from midiforge.errors import MidiforgeError

log = logging.getLogger(__name__)

STOCK = "stock"
MANIFEST = "manifest.json"
KINDS = (
    "transcriber",
    "separator",
    "lm",
    "lm-adapter",
    "drum-filter",
    "style-classifier",
    "other",
)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_CHUNK = 1 << 20
_KEEP_VERSIONS = 2  # the current one, and the one a slow reader may still be pulling


def cache_home() -> Path:
    """midiforge's local caches live under this folder (~/.cache/midiforge): registry
    model copies in models/, OpenVINO's compiled models in openvino/."""
    return Path.home() / ".cache" / "midiforge"


class RegistryError(MidiforgeError, RuntimeError):
    """A registry operation that cannot proceed; the message says why."""


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name) or ".." in name:
        raise RegistryError(
            f"invalid model name {name!r}: use 1-100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, with no '..' and no slashes"
        )
    return name


def validate_new_name(name: str) -> str:
    """A name a model can be pushed under: valid, and not `stock`. Commands check their
    output name with it before they train, not at the push after."""
    validate_name(name)
    if name == STOCK:
        raise RegistryError("'stock' is reserved for basic-pitch's shipped model")
    return name


def _safe_relpath(rel: str) -> str:
    """A file path inside a model folder; rejects anything that could escape it."""
    p = PurePosixPath(rel)
    if p.is_absolute() or not p.parts or any(part in ("", ".", "..") for part in p.parts):
        raise RegistryError(f"unsafe file path {rel!r} in model manifest")
    return p.as_posix()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def default_root() -> str:
    return os.environ.get("MIDIFORGE_MODELS") or str(Path.home() / ".midiforge" / "models")


def stock_model_path() -> Path:
    """basic-pitch's shipped ONNX model, found without importing the package (which
    probes for TensorFlow, CoreML and TFLite at import time)."""
    spec = importlib.util.find_spec("basic_pitch")
    if spec is None or not spec.submodule_search_locations:
        raise RegistryError(
            "basic-pitch is not installed, so the 'stock' model is unavailable "
            "(make install puts it in .venv)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "saved_models/icassp_2022/nmp.onnx"
    if not path.is_file():
        raise RegistryError(f"basic-pitch is installed but {path} is missing")
    return path


@dataclass
class Manifest:
    name: str
    kind: str
    version: str
    created: str
    files: dict[str, dict[str, Any]]
    parent: str | None = None
    training_data_hash: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str) -> Manifest:
        try:
            data = json.loads(text)
            m = cls(**data)
        except (ValueError, TypeError) as e:
            raise RegistryError(f"{where}: unreadable manifest ({e})") from None
        if not isinstance(m.files, dict) or not m.files:
            raise RegistryError(f"{where}: manifest lists no files")
        # The version names a folder, remote and in the local cache: it must stay inside.
        if not isinstance(m.version, str) or not _NAME_RE.match(m.version) or ".." in m.version:
            raise RegistryError(f"{where}: invalid version {m.version!r}")
        for rel, info in m.files.items():
            _safe_relpath(rel)
            if not isinstance(info, dict) or not re.fullmatch(
                r"[0-9a-f]{64}", str(info.get("sha256"))
            ):
                raise RegistryError(f"{where}: manifest entry for {rel!r} has no valid sha256")
        return m

    @property
    def size_bytes(self) -> int:
        return sum(int(f.get("bytes", 0)) for f in self.files.values())


def _open_root(root: str) -> tuple[pafs.FileSystem, str]:
    if "://" in root:
        try:
            return pafs.FileSystem.from_uri(root)
        except (ValueError, OSError) as e:  # ArrowInvalid is a ValueError
            raise RegistryError(f"cannot open registry root {root!r}: {e}") from None
    return pafs.LocalFileSystem(), str(Path(root).expanduser().resolve())


def _stock_manifest() -> Manifest:
    path = stock_model_path()
    version = importlib.metadata.version("basic-pitch")
    return Manifest(
        name=STOCK,
        kind="transcriber",
        version=f"basic-pitch-{version}",
        created="shipped",
        files={"model.onnx": {"sha256": sha256_file(path), "bytes": path.stat().st_size}},
        extra={"source": str(path), "description": "basic-pitch ICASSP 2022 model (nmp.onnx)"},
    )


class Registry:
    """Models by name under one root (a folder or a pyarrow filesystem URI)."""

    def __init__(self, root: str | None = None, cache_dir: str | Path | None = None) -> None:
        self.root = root or default_root()
        self.fs, self.base = _open_root(self.root)
        self.cache_dir = Path(
            cache_dir or os.environ.get("MIDIFORGE_CACHE") or cache_home() / "models"
        )

    # --- paths -----------------------------------------------------------------
    def _p(self, *parts: str) -> str:
        return "/".join([self.base.rstrip("/"), *parts])

    def _read_text(self, path: str) -> str:
        with self.fs.open_input_stream(path) as f:
            return f.read().decode()

    def _write_bytes(self, path: str, data: bytes) -> None:
        with self.fs.open_output_stream(path) as f:
            f.write(data)

    # --- queries -----------------------------------------------------------------
    def names(self) -> list[str]:
        info = self.fs.get_file_info(self.base)
        if info.type == pafs.FileType.NotFound:
            return [STOCK]
        found = []
        for entry in self.fs.get_file_info(pafs.FileSelector(self.base, recursive=False)):
            if entry.type == pafs.FileType.Directory and _NAME_RE.match(entry.base_name):
                manifest = self.fs.get_file_info(self._p(entry.base_name, MANIFEST))
                if manifest.type == pafs.FileType.File:
                    found.append(entry.base_name)
        return [STOCK, *sorted(n for n in found if n != STOCK)]

    def manifest(self, name: str) -> Manifest:
        validate_name(name)
        if name == STOCK:
            return _stock_manifest()
        path = self._p(name, MANIFEST)
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            raise RegistryError(f"no model named {name!r} in {self.root}")
        return Manifest.from_json(self._read_text(path), where=f"{name}/{MANIFEST}")

    def list(self) -> list[Manifest]:
        return [self.manifest(n) for n in self.names()]

    # --- push ----------------------------------------------------------------------
    def push(
        self,
        path: str | Path,
        name: str,
        *,
        kind: str | None = None,
        parent: str | None = None,
        training_data_hash: str | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> Manifest:
        """Upload a model folder (or a single .onnx file, stored as model.onnx)."""
        validate_new_name(name)
        src = Path(path)
        files = self._collect(src)
        local_manifest = self._local_json(src, MANIFEST, strict=True)
        kind = (
            kind or local_manifest.get("kind") or ("transcriber" if src.suffix == ".onnx" else None)
        )
        if kind not in KINDS:
            raise RegistryError(
                f"model kind {kind!r} is not one of {', '.join(KINDS)} (use --kind)"
            )
        if metrics is None:
            metrics = local_manifest.get("metrics") or self._local_json(
                src, "metrics.json", strict=False
            )
        # Microsecond UTC time first, so sorting version ids is sorting by push time.
        now = datetime.datetime.now(datetime.UTC)
        version = now.strftime("%Y%m%dT%H%M%S%fZ") + "-" + secrets.token_hex(3)
        manifest = Manifest(
            name=name,
            kind=kind,
            version=version,
            created=now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            files={rel: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for rel, p in files},
            parent=parent or local_manifest.get("parent"),
            training_data_hash=training_data_hash or local_manifest.get("training_data_hash"),
            metrics=metrics or {},
        )
        vdir = self._p(name, "versions", version)
        self.fs.create_dir(vdir, recursive=True)
        for rel, p in files:
            dst = f"{vdir}/{rel}"
            parent_dir = dst.rsplit("/", 1)[0]
            if parent_dir != vdir:
                self.fs.create_dir(parent_dir, recursive=True)
            with p.open("rb") as fin, self.fs.open_output_stream(dst) as fout:
                while chunk := fin.read(_CHUNK):
                    fout.write(chunk)
        # The commit: a finished manifest object appears in one step.
        tmp = self._p(name, f".{MANIFEST}.{version}.tmp")
        self._write_bytes(tmp, manifest.to_json().encode())
        self.fs.move(tmp, self._p(name, MANIFEST))
        self._prune(name, keep=version)
        log.debug("pushed %s version %s (%d files)", name, version, len(files))
        return manifest

    @staticmethod
    def _collect(src: Path) -> list[tuple[str, Path]]:
        if src.is_file():
            return [("model.onnx" if src.suffix == ".onnx" else src.name, src)]
        if not src.is_dir():
            raise RegistryError(f"{src} is neither a model folder nor a file")
        files = sorted(
            (p.relative_to(src).as_posix(), p)
            for p in src.rglob("*")
            if p.is_file() and p.name != MANIFEST
        )
        if not files:
            raise RegistryError(f"{src} holds no files to push")
        return files

    @staticmethod
    def _local_json(src: Path, name: str, strict: bool) -> dict[str, Any]:
        """A JSON object from the folder being pushed; {} if absent. A broken manifest is
        an error (it names the model's kind and lineage); broken metrics are skipped."""
        path = src / name if src.is_dir() else None
        if path is None or not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text())
        except ValueError as e:
            if strict:
                raise RegistryError(f"{path}: not valid JSON ({e})") from None
            return {}
        return data if isinstance(data, dict) else {}

    def _prune(self, name: str, keep: str) -> None:
        vroot = self._p(name, "versions")
        versions = sorted(
            e.base_name
            for e in self.fs.get_file_info(pafs.FileSelector(vroot, recursive=False))
            if e.type == pafs.FileType.Directory
        )
        # Version ids start with a UTC timestamp, so sorting is chronological.
        for old in [v for v in versions if v != keep][: max(0, len(versions) - _KEEP_VERSIONS)]:
            self.fs.delete_dir(f"{vroot}/{old}")

    # --- pull ----------------------------------------------------------------------
    def pull(self, name: str, to: str | Path) -> Path:
        """Copy a model into folder `to`, verifying every checksum; returns `to`. `to` may
        be new, empty or an earlier pull, which is replaced; a folder that holds anything
        else is refused, never emptied."""
        manifest = self.manifest(name)
        dest = Path(to).expanduser().absolute()
        earlier_pull = (dest / MANIFEST).is_file()
        if dest.exists() and not earlier_pull and (not dest.is_dir() or any(dest.iterdir())):
            raise RegistryError(
                f"refusing to pull {name!r} into {dest}: it holds files that are not a "
                "pulled model; pull into a new or empty folder"
            )
        staging = self._stage(manifest, dest)
        try:
            if dest.exists():
                shutil.rmtree(dest)
            staging.rename(dest)
        finally:
            if staging.exists():
                shutil.rmtree(staging)
        return dest

    def _stage(self, manifest: Manifest, dest: Path) -> Path:
        """A verified copy of the model in a new folder beside `dest`, manifest last."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = dest.with_name(f".{dest.name}.partial-{secrets.token_hex(3)}")
        staging.mkdir()
        try:
            for rel, info in manifest.files.items():
                out = staging / _safe_relpath(rel)
                out.parent.mkdir(parents=True, exist_ok=True)
                self._download(manifest, rel, out)
                got = sha256_file(out)
                if got != info["sha256"]:
                    raise RegistryError(
                        f"model {manifest.name!r} version {manifest.version}: file {rel} is "
                        f"corrupted (sha256 {got[:12]}..., manifest says "
                        f"{info['sha256'][:12]}...); refusing this copy — push the model again"
                    )
            (staging / MANIFEST).write_text(manifest.to_json())
        except BaseException:
            shutil.rmtree(staging)
            raise
        return staging

    def _download(self, manifest: Manifest, rel: str, out: Path) -> None:
        if manifest.name == STOCK:
            shutil.copyfile(stock_model_path(), out)
            return
        src = self._p(manifest.name, "versions", manifest.version, rel)
        if self.fs.get_file_info(src).type != pafs.FileType.File:
            raise RegistryError(
                f"model {manifest.name!r} version {manifest.version}: file {rel} is missing"
            )
        with self.fs.open_input_stream(src) as fin, out.open("wb") as fout:
            while chunk := fin.read(_CHUNK):
                fout.write(chunk)

    def fetch(self, name: str, version: str | None = None) -> Path:
        """A verified local folder for `name`, cached per version (what loaders use).
        With `version`, RegistryError if the registry's current version is another."""
        if name == STOCK and version is None:
            return stock_model_path().parent
        manifest = self.manifest(name)
        if version is not None and manifest.version != version:
            raise RegistryError(
                f"model {name!r} changed while the job ran: version {version} when it "
                f"started, {manifest.version} now; run the job again"
            )
        if name == STOCK:
            return stock_model_path().parent
        key = hashlib.sha256(self.root.encode()).hexdigest()[:12]
        local = self.cache_dir / key / name / manifest.version
        if not (local / MANIFEST).is_file():
            staging = self._stage(manifest, local)
            try:
                staging.rename(local)
            except OSError:
                # Another process (a replica on the same node) cached this version first.
                # Versions never change, so its verified copy is this one: keep it, never
                # delete a finished copy that someone may be loading.
                if not (local / MANIFEST).is_file():
                    raise
            finally:
                if staging.exists():
                    shutil.rmtree(staging)
        return local

    def model_file(
        self, name: str, filename: str = "model.onnx", version: str | None = None
    ) -> Path:
        """Path to one file of a model, e.g. the ONNX graph a runner loads (`version`: as
        for `fetch`)."""
        folder = self.fetch(name, version)
        if name == STOCK:
            return stock_model_path()
        path = folder / _safe_relpath(filename)
        if not path.is_file():
            raise RegistryError(f"model {name!r} has no file {filename}")
        return path


@dataclass(frozen=True)
class ModelRef:
    """A registry model as a worker on any node finds it: by root, name and the version the
    driver saw. A path the driver resolved names its own node's cache, which other nodes
    (other pods) do not have."""

    root: str
    name: str
    version: str

    def local_file(self, filename: str = "model.onnx") -> Path:
        """The file in this node's cache (fetched and verified on first use);
        RegistryError if the model was pushed again since the driver saw it."""
        return Registry(self.root).model_file(self.name, filename, self.version)
