"""The dataset job: list inputs, run the per-input stages on Ray Data, then split,
augment and write the dataset with its rejects, tokenizer, config and report."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from midiforge import config as cfgmod
from midiforge.pipeline import report, schema, stages, work
from midiforge.pipeline.config import DatasetConfig, StageCompute
from midiforge.pipeline.inputs import Input, _filesystem, linked_pieces, list_inputs
from midiforge.pipeline.split import SPLITS, Expand, assign_splits
from midiforge.symbolic import validate
from midiforge.transcription.notes import model_decoding

if TYPE_CHECKING:
    from midiforge.registry import ModelRef
    from midiforge.transcription.notes import NoteDecoding

log = logging.getLogger(__name__)


def connect(address: str | None, dashboard: bool = False) -> None:
    """Join Ray: an explicit address, the job's cluster, or a new local Ray on 127.0.0.1
    (with its dashboard on 127.0.0.1 when asked: training runs report metrics there)."""
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address)
    elif os.environ.get("RAY_ADDRESS"):  # set by `ray job submit` and on cluster nodes
        ray.init()
    else:
        # A local cluster advertises 127.0.0.1, never the machine's external address.
        ray.init(
            address="local",
            _node_ip_address="127.0.0.1",
            include_dashboard=dashboard,
            dashboard_host="127.0.0.1",
        )


def _map(ds, fn, c: StageCompute, **kw):
    """One map_batches call sized by config: a task pool for functions (at most max_tasks
    at once), an actor pool for classes (autoscaling up to max_actors when that is larger
    than actors)."""
    import ray

    args: dict[str, Any] = {"batch_size": c.batch_size, "num_cpus": c.num_cpus}
    if c.num_gpus:
        args["num_gpus"] = c.num_gpus
    if isinstance(fn, type):
        args["compute"] = ray.data.ActorPoolStrategy(min_size=c.actors, max_size=c.pool_size)
    else:
        size = c.max_tasks or max(2, int(ray.cluster_resources().get("CPU", 0)))
        args["compute"] = ray.data.TaskPoolStrategy(size=size)
    return ds.map_batches(fn, **args, **kw)


def _threads(c: StageCompute) -> int:
    return c.threads or max(1, int(c.num_cpus))


def _input_rows(inputs: list[Input]) -> list[dict[str, Any]]:
    return [
        {
            "piece_id": i.piece_id,
            "source_uri": i.source_uri,
            "source_stamp": i.stamp,
            "kind": i.kind,
            "tier": i.tier,
            "style": i.style,
            "reference_uri": i.reference_uri,
            "status": "ok",
            "stage": "",
            "reason": "",
            "detail": "",
        }
        for i in inputs
    ]


class StartChecks(NamedTuple):
    sep_format: tuple[int, int] | None  # Demucs' (sample rate, channels); None unseparated
    model: ModelRef  # the transcriber, at the version this run uses
    notes: NoteDecoding  # thresholds the config leaves unset are the model's decoding.yaml


def _start_checks(cfg: DatasetConfig) -> StartChecks:
    """Everything that can fail before any work is scheduled fails here, fast."""
    from midiforge import registry

    sep_format = None
    if cfg.separator != "none":
        from midiforge import separation

        separation.check_available(cfg.separator)
        model = separation.load_model(cfg.separator)
        sep_format = (int(model.samplerate), int(model.audio_channels))
        if cfg.stem not in model.sources:
            raise separation.SeparationError(
                f"stem {cfg.stem!r} is not one of {', '.join(model.sources)}"
            )
    reg = registry.Registry(cfg.models_root)
    manifest = reg.manifest(cfg.transcriber)
    if manifest.kind != "transcriber":
        raise registry.RegistryError(
            f"model {cfg.transcriber!r} is a {manifest.kind}, not a transcriber"
        )
    ref = registry.ModelRef(reg.root, cfg.transcriber, manifest.version)
    # Fetched and verified here first: a bad model fails the job now.
    notes = cfg.notes.resolve(model_decoding(ref.local_file()))
    return StartChecks(sep_format, ref, notes)


def work_settings(cfg: DatasetConfig, checks: StartChecks) -> dict[str, Any]:
    """What work rows are made under: the config's WORK_FIELDS with the thresholds as
    resolved, plus the transcriber's version. A name re-pushed with new weights, or a new
    decoding.yaml, is a new version: its rows must not join the old ones'."""
    settings = cfg.work_settings()
    settings["notes"] = cfgmod.to_dict(checks.notes)
    settings["transcriber_version"] = checks.model.version
    return settings


def balanced_blocks(n: int, pool: int, batch_size: int) -> int:
    """How many blocks to cut n inputs into when each block is one batch of the fused
    transcription actors: at most `batch_size` inputs each (Ray Data splits them evenly,
    so sizes differ by one at most) and a multiple of the pool's size, so with inputs of
    similar length every actor ends its last batch at about the same time. Batches of
    exactly `batch_size` leave a last wave that only some actors work on: 120 inputs in
    batches of 8 on 2 actors is 15 batches, and one actor sat idle for its whole last
    batch, 3.5 s of a 28 s run; 6 inputs made one batch for one actor."""
    pool, batch_size = max(1, pool), max(1, batch_size)
    waves = -(-n // (pool * batch_size))  # ceiling division
    return max(1, min(n, pool * waves))


def plan_inputs(cfg: DatasetConfig, todo: list[Input], checks: StartChecks):
    """The per-input stages over `todo` as a Ray Data dataset (nothing runs yet)."""
    import ray

    sep_format, model, notes_cfg = checks
    c = cfg.compute
    fused = c.fuse_cpu_stages and not c.transcribe.num_gpus
    decode, transcribe = c.decode, c.transcribe
    blocks = max(1, len(todo) // 2)
    if fused and not sep_format:
        # The transcription actors' resources and pool size: Ray Data then runs decoding
        # in those actors (see Compute.fuse_cpu_stages).
        pool = c.transcribe.pool_size
        batch_size = c.decode.batch_size
        if c.transcribe.batch_size:
            # Each actor then takes whole blocks (see balanced_blocks).
            blocks = balanced_blocks(len(todo), pool, c.transcribe.batch_size)
            batch_size = None
            transcribe = dataclasses.replace(transcribe, batch_size=None)
        decode = dataclasses.replace(
            c.decode, num_cpus=c.transcribe.num_cpus, max_tasks=pool, batch_size=batch_size
        )
    ds = ray.data.from_items(_input_rows(todo), override_num_blocks=blocks)
    ds = _map(
        ds,
        stages.load_inputs,
        decode,
        fn_kwargs={
            "limits": cfg.limits,
            "separator_format": sep_format,
            "max_bytes": cfg.max_input_bytes,
        },
    )
    if sep_format:
        ds = _map(
            ds,
            stages.Separate,
            c.separate,
            fn_constructor_args=(
                cfg.separator,
                cfg.stem,
                cfg.device,
                cfg.segment_s,
                _threads(c.separate),
            ),
        )
    models = stages.models_json(cfg.separator, cfg.stem, cfg.transcriber, model.version)
    transcribe_args = (model, cfg.device, cfg.batch_windows, _threads(c.transcribe))
    # music21's key profiles, read here once rather than in every actor (see validate).
    key_profiles = validate.music21_key_profiles()
    postprocess_args = (notes_cfg, cfg.validate, cfg.tokenizer, models, key_profiles)
    if fused:
        ds = _map(
            ds,
            stages.TranscribeAndPostprocess,
            transcribe,
            fn_constructor_args=(transcribe_args, postprocess_args),
        )
    else:
        ds = _map(ds, stages.Transcribe, c.transcribe, fn_constructor_args=transcribe_args)
        ds = _map(ds, stages.Postprocess, c.postprocess, fn_constructor_args=postprocess_args)
    # Ray Data hands out batches as soon as the first actor of a pool is up, two per
    # actor: that one would take the share of actors still starting (on another node,
    # say). Waiting for the pools' first actors spreads the first batches over all.
    ds.context.wait_for_min_actors_s = c.wait_for_actors_s
    return ds


def process_inputs(cfg: DatasetConfig, todo: list[Input], checks: StartChecks) -> None:
    """Run the per-input stages over `todo`, writing results under OUT/_work/."""
    import ray

    ds = plan_inputs(cfg, todo, checks)
    # The driver writes the finished rows (a few KB per input) as they stream out: a
    # writer actor or task would be one more worker process to start.
    try:
        for batch in ds.iter_batches(batch_size=None):
            work.write_work(batch, cfg.out)
    except ray.exceptions.GetTimeoutError as e:
        c = cfg.compute
        pools = [("transcribe", c.transcribe)]
        if cfg.separator != "none":
            pools.append(("separate", c.separate))
        sizes = ", ".join(
            f"{name} {s.actors} x ({s.num_cpus:g} CPU, {s.num_gpus:g} GPU)" for name, s in pools
        )
        have = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
        raise cfgmod.ConfigError(
            f"the model actors did not all start within compute.wait_for_actors_s="
            f"{c.wait_for_actors_s} s; asked for {sizes}; the cluster has {have}. Lower "
            "the actors or their CPUs/GPUs, or wait longer for nodes to join"
        ) from e


def _current_rows(table: pa.Table, wanted: dict[str, str]) -> pa.Table:
    """The accepted work rows the final phase uses: for each piece of `wanted` ({piece_id:
    name of its winning work file}), its row in that file; work files also hold rows of
    inputs since removed, and second rows of pieces processed twice."""
    names = [work.file_name(p) for p in table.column("path").to_pylist()]
    ids = table.column("piece_id").to_pylist()
    status = table.column("status").to_pylist()
    keep = [s == "ok" and wanted.get(i) == n for i, s, n in zip(ids, status, names, strict=True)]
    return table.filter(pa.array(keep, pa.bool_())).drop_columns(["path", "status"])


def _write_dataset(cfg: DatasetConfig, splits: dict[str, str], files: dict[str, str]) -> None:
    """The final phase: each accepted piece of `splits` read from its winning work file
    (`files`: {piece_id: path}), augmented, tokenized, written by split."""
    import ray

    fs, base = _filesystem(cfg.out)
    target = f"{base}/dataset"
    if not splits:
        _delete_dataset(fs, target)
        for split in SPLITS:
            fs.create_dir(f"{target}/split={split}", recursive=True)
            empty = schema.DATASET.empty_table().drop(["split"])
            pq.write_table(empty, f"{target}/split={split}/part-0.parquet", filesystem=fs)
        return
    wanted = {i: work.file_name(files[i]) for i in splits}
    keep = [n for n in schema.WORK.names if n in schema.DATASET.names or n == "status"]
    ds = ray.data.read_parquet(
        sorted({files[i] for i in splits}),
        filesystem=fs,
        columns=keep,
        include_paths=True,
    )
    ds = ds.map_batches(
        _current_rows, batch_format="pyarrow", batch_size=None, fn_kwargs={"wanted": wanted}
    )
    ds = _map(
        ds,
        Expand,
        cfg.compute.augment,
        fn_constructor_args=(
            splits,
            cfg.augment_splits,
            cfg.augment,
            cfg.tokenizer,
            cfg.seed,
            validate.music21_key_profiles(),
        ),
        batch_format="pyarrow",
    )
    # Deleted only now, with the plan built: what fails before this point (an unreadable
    # work file, music21's key profiles) leaves the last run's dataset in place. An
    # atomic swap would need a folder move, which pyarrow's S3 filesystem lacks.
    _delete_dataset(fs, target)
    ds.write_parquet(target, filesystem=fs, partition_cols=["split"])


def _delete_dataset(fs: pafs.FileSystem, target: str) -> None:
    if fs.get_file_info(target).type != pafs.FileType.NotFound:
        fs.delete_dir(target)  # a re-run writes the final dataset afresh


def _warn_local_paths(cfg: DatasetConfig) -> bool:
    """Workers on any node read the inputs and the work files: on a cluster of several
    machines a local path works only on a filesystem they all mount. Whether it warned."""
    import ray

    local = [p for p in (*cfg.audio, *cfg.midi, cfg.out) if "://" not in p]
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    if not (local and nodes > 1):
        return False
    log.warning(
        "local paths (%s) on a cluster of %d nodes: every node must see them (a shared "
        "filesystem); otherwise give s3:// or gs:// URIs",
        ", ".join(local[:3]) + (", ..." if len(local) > 3 else ""), nodes,
    )  # fmt: skip
    return True


def build_dataset(cfg: DatasetConfig, address: str | None = None) -> dict[str, Any]:
    """Run the whole job; returns report.json's content."""
    from midiforge.symbolic.tokenize import make_tokenizer, save_tokenizer

    started = time.perf_counter()
    checks = _start_checks(cfg)
    inputs = list_inputs(
        cfg.audio,
        cfg.midi,
        style=cfg.style,
        style_from_folder=cfg.style_from_folder,
        tier_midi=cfg.tier_midi,
        reference_midi=cfg.reference_midi,
    )
    fs, base = _filesystem(cfg.out)
    fs.create_dir(base, recursive=True)
    work.check_settings(cfg.out, work_settings(cfg, checks))
    redo = work.stale_pieces(cfg.out, {i.piece_id: (i.kind, i.stamp) for i in inputs})
    work.drop_rows(cfg.out, redo)
    done = set(work.read_work(cfg.out, columns=["piece_id"]).column("piece_id").to_pylist())
    todo = [i for i in inputs if i.piece_id not in done]
    if redo:
        log.info(
            "%d inputs redone: changed since, listed as another kind, or a retryable failure",
            len(redo),
        )
    log.info(
        "%d inputs, %d already done, %d to process", len(inputs), len(inputs) - len(todo), len(todo)
    )
    connect(address)
    warned = _warn_local_paths(cfg)
    if todo:
        process_inputs(cfg, todo, checks)
        if not warned:  # nodes that joined during the run (an autoscaling cluster)
            _warn_local_paths(cfg)
    ids = {i.piece_id for i in inputs}
    meta_cols = [n for n in schema.WORK.names if n not in ("midi", "tokens")]
    meta = work.read_work(cfg.out, columns=meta_cols, with_file=True)
    meta = meta.filter(pa.array([p in ids for p in meta.column("piece_id").to_pylist()]))
    ok = meta.filter(pa.compute.equal(meta.column("status"), "ok"))
    files = dict(
        zip(ok.column("piece_id").to_pylist(), ok.column("work_file").to_pylist(), strict=True)
    )
    meta = meta.drop_columns(["work_file"])
    strata = zip(
        ok.column("piece_id").to_pylist(),
        ok.column("tier").to_pylist(),
        ok.column("style").to_pylist(),
        strict=True,
    )
    groups = linked_pieces(inputs)
    if groups:
        log.info("%d inputs are %d songs in two or more files; each song keeps one split",
                 len(groups), len(set(groups.values())))  # fmt: skip
    splits = assign_splits(list(strata), tuple(cfg.split), cfg.seed, groups)
    _write_dataset(cfg, splits, files)
    rejected = meta.filter(pa.compute.equal(meta.column("status"), "rejected"))
    pq.write_table(
        rejected.select(schema.REJECTS.names).cast(schema.REJECTS),
        f"{base}/rejects.parquet",
        filesystem=fs,
    )
    with fs.open_output_stream(f"{base}/config.yaml") as f:
        f.write(_yaml(cfg).encode())
    with tempfile.TemporaryDirectory() as tmp:  # MidiTok saves to a local path only
        save_tokenizer(make_tokenizer(cfg.tokenizer), Path(tmp) / "tokenizer.json")
        with fs.open_output_stream(f"{base}/tokenizer.json") as f:
            f.write((Path(tmp) / "tokenizer.json").read_bytes())
    rep = report.build_report(cfg, len(inputs), meta, time.perf_counter() - started)
    with fs.open_output_stream(f"{base}/report.json") as f:
        f.write(json.dumps(rep, indent=2).encode())
    with fs.open_output_stream(f"{base}/report.md") as f:
        f.write(report.markdown(rep).encode())
    return rep


def _yaml(cfg: DatasetConfig) -> str:
    import yaml

    return yaml.safe_dump(cfgmod.to_dict(cfg), sort_keys=False)
