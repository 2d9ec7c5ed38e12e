"""The model registry on a folder and on a real S3-compatible server (moto) on loopback."""

from __future__ import annotations

import json
import uuid

import boto3
import pyarrow.fs as pafs
import pytest

from midiforge import registry
from midiforge.registry import Registry, RegistryError


def make_model(folder, payload: bytes = b"weights-v1", metrics=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(payload)
    (folder / "config.yaml").write_text("hidden: 8\n")
    (folder / "sub").mkdir(exist_ok=True)
    (folder / "sub" / "extra.bin").write_bytes(payload[::-1])
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


@pytest.fixture
def s3_root(s3_env):
    bucket = f"models-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=f"http://{s3_env}").create_bucket(Bucket=bucket)
    return bucket, f"s3://{bucket}/registry?endpoint_override={s3_env}&scheme=http&region=us-east-1"


@pytest.fixture(params=["folder", "s3"])
def reg(request, tmp_path):
    if request.param == "folder":
        return Registry(str(tmp_path / "root"))
    _, uri = request.getfixturevalue("s3_root")
    return Registry(uri)


def test_push_pull_round_trip(reg, tmp_path):
    src = make_model(tmp_path / "m", metrics={"f1": 0.9})
    m = reg.push(src, "fiddle-v1", kind="transcriber", parent="stock")
    assert set(m.files) == {"model.onnx", "config.yaml", "metrics.json", "sub/extra.bin"}
    assert m.metrics == {"f1": 0.9}
    assert reg.names() == ["stock", "fiddle-v1"]
    out = reg.pull("fiddle-v1", tmp_path / "out")
    for rel in m.files:
        assert (out / rel).read_bytes() == (src / rel).read_bytes()
    pulled = json.loads((out / "manifest.json").read_text())
    assert pulled["parent"] == "stock"
    assert pulled["files"]["model.onnx"]["sha256"] == registry.sha256_file(src / "model.onnx")


def test_push_replaces_version_and_prunes_old_ones(reg, tmp_path):
    versions = []
    for i in range(4):
        versions.append(
            reg.push(make_model(tmp_path / f"m{i}", f"w{i}".encode()), "x", kind="lm").version
        )
    assert len(set(versions)) == 4
    assert reg.manifest("x").version == versions[-1]
    assert (reg.pull("x", tmp_path / "out") / "model.onnx").read_bytes() == b"w3"
    kept = reg.fs.get_file_info(pafs.FileSelector(reg._p("x", "versions")))
    assert sorted(e.base_name for e in kept) == sorted(versions[-2:])


def test_corrupted_object_is_refused(reg, tmp_path):
    m = reg.push(make_model(tmp_path / "m"), "victim", kind="transcriber")
    target = reg._p("victim", "versions", m.version, "model.onnx")
    with reg.fs.open_output_stream(target) as f:
        f.write(b"weights-v2")  # same size, different bytes
    dest = tmp_path / "out"
    with pytest.raises(RegistryError, match=r"model\.onnx is corrupted"):
        reg.pull("victim", dest)
    assert not dest.exists()
    assert not list(tmp_path.glob(".out.partial-*"))  # no half-written copy left behind


def test_missing_object_is_refused(reg, tmp_path):
    m = reg.push(make_model(tmp_path / "m"), "gone", kind="transcriber")
    reg.fs.delete_file(reg._p("gone", "versions", m.version, "sub/extra.bin"))
    with pytest.raises(RegistryError, match=r"sub/extra\.bin is missing"):
        reg.pull("gone", tmp_path / "out")


@pytest.mark.parametrize(
    "name", ["../evil", "a/b", "..", "x..y", "", ".hidden", "a b", "x" * 101, "ä"]
)
def test_bad_names_are_refused(reg, tmp_path, name):
    src = make_model(tmp_path / "m")
    with pytest.raises(RegistryError, match="invalid model name"):
        reg.push(src, name, kind="lm")
    with pytest.raises(RegistryError, match="invalid model name"):
        reg.pull(name, tmp_path / "out")


def test_manifest_with_traversal_path_is_refused(tmp_path):
    reg = Registry(str(tmp_path / "root"))
    reg.push(make_model(tmp_path / "m"), "ok", kind="lm")
    path = tmp_path / "root" / "ok" / "manifest.json"
    data = json.loads(path.read_text())
    data["files"]["../../escape"] = data["files"].pop("model.onnx")
    path.write_text(json.dumps(data))
    with pytest.raises(RegistryError, match="unsafe file path"):
        reg.pull("ok", tmp_path / "out")
    assert not (tmp_path / "escape").exists()


def test_stock_resolves_without_push(tmp_path):
    reg = Registry(str(tmp_path / "empty"))
    assert reg.names() == ["stock"]
    m = reg.manifest("stock")
    assert m.kind == "transcriber"
    assert reg.model_file("stock").name == "nmp.onnx"
    out = reg.pull("stock", tmp_path / "stock")
    assert registry.sha256_file(out / "model.onnx") == m.files["model.onnx"]["sha256"]
    with pytest.raises(RegistryError, match="reserved"):
        reg.push(out, "stock")


def test_interrupted_push_leaves_previous_version_intact(tmp_path, monkeypatch):
    """A push that dies before its commit must not change what readers see."""
    reg = Registry(str(tmp_path / "root"))
    reg.push(make_model(tmp_path / "a", b"old"), "m", kind="lm")

    def crash(self, path, data):
        raise OSError("connection lost")

    monkeypatch.setattr(Registry, "_write_bytes", crash)
    with pytest.raises(OSError, match="connection lost"):
        reg.push(make_model(tmp_path / "b", b"new"), "m", kind="lm")
    monkeypatch.undo()
    assert (reg.pull("m", tmp_path / "out") / "model.onnx").read_bytes() == b"old"
    # and a first push that dies leaves no model at all
    monkeypatch.setattr(Registry, "_write_bytes", crash)
    with pytest.raises(OSError, match="connection lost"):
        reg.push(make_model(tmp_path / "c"), "fresh", kind="lm")
    monkeypatch.undo()
    assert "fresh" not in reg.names()


def test_fetch_caches_by_version(tmp_path):
    reg = Registry(str(tmp_path / "root"), cache_dir=tmp_path / "cache")
    reg.push(make_model(tmp_path / "a", b"one"), "m", kind="lm")
    first = reg.fetch("m")
    assert reg.fetch("m") == first
    reg.push(make_model(tmp_path / "b", b"two"), "m", kind="lm")
    second = reg.model_file("m")
    assert second.read_bytes() == b"two"
    assert second.parent != first


def test_pull_never_empties_a_folder_of_other_files(tmp_path, monkeypatch):
    """`models pull --to DIR` replaces an earlier pull, fills a new or empty folder, and
    refuses a folder of anything else (it used to delete it); `--to .` works."""
    reg = Registry(str(tmp_path / "root"))
    reg.push(make_model(tmp_path / "m", b"one"), "m", kind="lm")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "thesis.txt").write_text("years of work")
    with pytest.raises(RegistryError, match="not a pulled model"):
        reg.pull("m", docs)
    assert [p.name for p in docs.iterdir()] == ["thesis.txt"]
    out = reg.pull("m", tmp_path / "out")
    reg.push(make_model(tmp_path / "m2", b"two"), "m", kind="lm")
    assert (reg.pull("m", out) / "model.onnx").read_bytes() == b"two"  # an earlier pull
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert reg.pull("m", ".") == here and (here / "model.onnx").read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_concurrent_fetches_of_one_version_all_succeed(tmp_path):
    """Replicas on one node fetching the same model on a cold cache: every caller gets the
    verified folder; none deletes another's finished copy or fails on its rename."""
    from concurrent.futures import ThreadPoolExecutor

    Registry(str(tmp_path / "root")).push(make_model(tmp_path / "m"), "m", kind="lm")
    for round_ in range(10):
        cache = tmp_path / f"cache{round_}"
        regs = [Registry(str(tmp_path / "root"), cache_dir=cache) for _ in range(6)]
        with ThreadPoolExecutor(6) as pool:
            paths = list(pool.map(lambda r: r.model_file("m"), regs))
        assert len(set(paths)) == 1 and paths[0].read_bytes() == b"weights-v1"
        assert not [p for p in paths[0].parent.iterdir() if ".partial-" in p.name]


def test_a_manifest_version_that_leaves_the_cache_is_refused(tmp_path):
    reg = Registry(str(tmp_path / "root"), cache_dir=tmp_path / "cache")
    reg.push(make_model(tmp_path / "m"), "m", kind="lm")
    path = tmp_path / "root" / "m" / "manifest.json"
    data = json.loads(path.read_text())
    data["version"] = "../../../outside"
    path.write_text(json.dumps(data))
    with pytest.raises(RegistryError, match="invalid version"):
        reg.fetch("m")


def test_unknown_kind_and_missing_model(tmp_path):
    reg = Registry(str(tmp_path / "root"))
    with pytest.raises(RegistryError, match="kind"):
        reg.push(make_model(tmp_path / "m"), "m", kind="weights")
    with pytest.raises(RegistryError, match="no model named 'nope'"):
        reg.manifest("nope")


def test_default_root_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MIDIFORGE_MODELS", str(tmp_path / "env-root"))
    Registry().push(make_model(tmp_path / "m"), "m", kind="lm")
    assert (tmp_path / "env-root" / "m" / "manifest.json").is_file()


def test_a_model_ref_is_fetched_into_each_nodes_own_cache(tmp_path, monkeypatch):
    """The dataset job hands its transcription actors a ModelRef, not the driver's cache
    path (which other nodes do not have): each node fetches into its own cache, and a
    model pushed again mid-job is refused rather than mixed."""
    import pickle

    reg = Registry(str(tmp_path / "root"))
    reg.push(make_model(tmp_path / "m", b"one"), "m", kind="transcriber")
    ref = registry.ModelRef(reg.root, "m", reg.manifest("m").version)
    ref = pickle.loads(pickle.dumps(ref))  # noqa: S301 - our own bytes
    for node in ("a", "b"):  # two machines: their own cache
        monkeypatch.setenv("MIDIFORGE_CACHE", str(tmp_path / node))
        path = ref.local_file()
        assert path.is_relative_to(tmp_path / node) and path.read_bytes() == b"one"
    reg.push(make_model(tmp_path / "m2", b"two"), "m", kind="transcriber")
    with pytest.raises(RegistryError, match="changed while the job ran"):
        ref.local_file()
