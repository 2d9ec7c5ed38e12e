"""`midiforge lm pretrain` and `midiforge lm finetune`: Ray Train drivers.

Both read the dataset job's Parquet output, cut it into windows (lm.data), run
lm.train_loop on a TorchTrainer, then turn the last checkpoint's best weights into a model
folder (lm.model) and push it to the model registry. Re-running the same command after a
kill resumes from the last checkpoint: Ray Train restores a run by (storage, name).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

import yaml

from midiforge import config as cfgmod
from midiforge import raytrain
from midiforge.lm import data as lm_data
from midiforge.lm.config import FinetuneConfig, PretrainConfig, Schedule
from midiforge.lm.vocab import LMVocab

log = logging.getLogger(__name__)


def _windows_ds(pieces, vocab: LMVocab, seq_len: int, bar_id: int, what: str):
    import ray

    w = lm_data.windows(pieces, vocab, seq_len, bar_id)
    if len(w) == 0:
        raise lm_data.DataError(f"no {what} windows: the selection has no usable pieces")
    return ray.data.from_numpy(w), len(w)


def _check_fits(sched: Schedule, n_windows: int, workers: int, max_positions: int) -> None:
    """Refuse, before any training, a run that could only fail later: windows longer than
    the model's positions (generation would fail once its cache passed them), or fewer
    windows than one batch per worker (batches drop their remainder: no step, no checkpoint)."""
    if sched.seq_len > max_positions:
        raise cfgmod.ConfigError(
            f"schedule.seq_len {sched.seq_len} > the model's {max_positions} positions: "
            "lower seq_len or raise architecture.max_positions"
        )
    if n_windows < sched.batch_size * workers:
        raise lm_data.DataError(
            f"{n_windows} training windows, fewer than one batch ({sched.batch_size} per "
            f"worker x {workers} workers): lower schedule.batch_size or add pieces"
        )


def _max_positions(hf_dir: Path) -> int:
    """A Hugging Face config's context length (Llama-style or GPT-2-style field)."""
    hf = json.loads((hf_dir / "config.json").read_text())
    return int(hf.get("max_position_embeddings") or hf.get("n_positions") or 0) or 1 << 30


def _total_steps(sched: Schedule, n_windows: int, workers: int) -> int:
    per_epoch = max(1, n_windows // (sched.batch_size * workers))
    total = per_epoch * sched.epochs
    return min(total, sched.max_steps) if sched.max_steps else total


def _loop(cfg: dict[str, Any]) -> None:
    from midiforge.lm.train_loop import train_loop

    train_loop(cfg)


def _write_folder(  # noqa: PLR0917 - the parts of one model folder
    folder: Path, hf_model, vocab: LMVocab, tok_src: Path, cfg, metrics: dict[str, Any]
) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "hf").mkdir(parents=True)
    hf_model.save_pretrained(folder / "hf")
    vocab.save(folder / "vocab.json")
    shutil.copyfile(tok_src, folder / "tokenizer.json")
    (folder / "lm_config.yaml").write_text(yaml.safe_dump(cfgmod.to_dict(cfg), sort_keys=False))
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))


def _dataset_hash(dataset: str) -> str | None:
    import hashlib

    from midiforge.pipeline.inputs import _filesystem

    fs, base = _filesystem(dataset)
    try:
        with fs.open_input_stream(f"{base}/report.json") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except (FileNotFoundError, OSError):
        return None


def _loop_cfg(cfg, vocab: LMVocab, sched: Schedule, total: int, name: str) -> dict[str, Any]:
    return {
        "vocab": dataclasses.asdict(vocab),
        "schedule": dataclasses.asdict(sched),
        "total_steps": total,
        "seed": cfg.seed,
        "threads": raytrain.threads(cfg.resources),
        "tensorboard": raytrain.tensorboard_dir(cfg.storage, name),
    }


def pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    """Train a base model from scratch (or from `init_from`); returns its metrics."""
    from midiforge import registry
    from midiforge.lm import model as lm_model

    work = Path(cfg.storage) / f"{cfg.out}-model"
    tokenizer = lm_data.load_tokenizer(cfg.dataset, work.parent / f"{cfg.out}-tokenizer")
    bar_id = tokenizer.vocab["Bar_None"]
    train = lm_data.read_pieces(cfg.dataset, "train", cfg.styles, cfg.exclude_styles)
    val = lm_data.read_pieces(cfg.dataset, "val", cfg.styles, cfg.exclude_styles)
    styles = sorted({p.style for p in train})
    if not styles:
        raise lm_data.DataError(
            f"{cfg.dataset}: no training pieces (styles {cfg.styles or 'all'}, "
            f"excluding {cfg.exclude_styles})"
        )
    vocab = LMVocab.for_tokenizer(tokenizer, styles)
    vocab.programs = lm_data.style_programs(train, tokenizer)
    sched, arch = cfg.schedule, cfg.architecture
    raytrain.connect()
    train_ds, n_train = _windows_ds(train, vocab, sched.seq_len, bar_id, "training")
    val_ds, n_val = _windows_ds(val or train[:4], vocab, sched.seq_len, bar_id, "validation")
    positions = _max_positions(Path(cfg.init_from)) if cfg.init_from else arch.max_positions
    _check_fits(sched, n_train, cfg.resources.num_workers, positions)
    total = _total_steps(sched, n_train, cfg.resources.num_workers)
    log.info(
        "pretraining on %d windows (%d val), styles %s, %d steps", n_train, n_val, styles, total
    )
    loop = _loop_cfg(cfg, vocab, sched, total, f"pretrain-{cfg.out}")
    loop["architecture"] = dataclasses.asdict(arch)
    loop["init_from"] = cfg.init_from
    data_hash = _dataset_hash(cfg.dataset)
    ident = raytrain.run_identity(loop, dataset=data_hash or cfg.dataset)
    result = raytrain.fit(f"pretrain-{cfg.out}", _loop, loop, {"train": train_ds, "val": val_ds},
                  cfg.resources, cfg.storage, ident)  # fmt: skip
    net = lm_model.load_hf(cfg.init_from, vocab.size) if cfg.init_from else None
    net = net or lm_model.build(arch, vocab, cfg.seed)
    net.load_state_dict(raytrain.best_state(result))
    _, total_params = lm_model.count_parameters(net)
    metrics = _summary(result, n_train, n_val, styles, total_params)
    _write_folder(work, net, vocab, work.parent / f"{cfg.out}-tokenizer" / "tokenizer.json",
                  cfg, metrics)  # fmt: skip
    reg = registry.Registry(cfg.models_root)
    reg.push(work, cfg.out, kind="lm", training_data_hash=data_hash,
             metrics=metrics)  # fmt: skip
    return metrics


def _summary(result, n_train, n_val, styles, total_params) -> dict[str, Any]:
    last = result.metrics or {}
    best = float(last.get("best_val_loss", float("nan")))
    return {
        "parameters": total_params,
        "train_windows": n_train,
        "val_windows": n_val,
        "styles": styles,
        "steps": last.get("step"),
        "elapsed_s": last.get("elapsed_s"),
        "resumed_from_step": last.get("resumed_from_step", 0),
        "best_val_loss": best,
        "best_val_perplexity": math.exp(min(50.0, best)) if math.isfinite(best) else None,
        "history": raytrain.history(result),
    }


def _load_base(base: str, models_root: str | None) -> tuple[Path, LMVocab | None, Path | None]:
    """(HF folder, its vocab if it is a midiforge model, its tokenizer.json) for a registry
    name or a local Hugging Face folder."""
    from midiforge import registry

    local = Path(base)
    if (local / "config.json").is_file():  # a plain Hugging Face checkpoint
        return local, None, None
    if (local / "hf" / "config.json").is_file():  # a midiforge model folder
        folder = local
    else:
        folder = registry.Registry(models_root).fetch(base)
    return folder / "hf", LMVocab.load(folder / "vocab.json"), folder / "tokenizer.json"


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """LoRA-fine-tune a base model on one style; saves adapter + merged model; returns metrics."""
    from midiforge import registry
    from midiforge.lm import model as lm_model
    from midiforge.lm.train_loop import apply_lora

    work = Path(cfg.storage) / f"{cfg.out}-model"
    hf_dir, vocab, base_tok = _load_base(cfg.base, cfg.models_root)
    tok_dir = work.parent / f"{cfg.out}-tokenizer"
    tokenizer = lm_data.load_tokenizer(cfg.dataset, tok_dir)
    if base_tok and base_tok.read_bytes() != (tok_dir / "tokenizer.json").read_bytes():
        raise lm_data.DataError(
            f"{cfg.dataset} was tokenized differently from base model {cfg.base}: "
            "build the fine-tuning dataset with the base model's tokenizer settings"
        )
    vocab = vocab or LMVocab.for_tokenizer(tokenizer, [])
    new_style = cfg.style not in vocab.styles
    style_id = vocab.add_style(cfg.style)
    train = lm_data.read_pieces(cfg.dataset, "train", [cfg.style])
    val = lm_data.read_pieces(cfg.dataset, "val", [cfg.style])
    if not train or not val:
        raise lm_data.DataError(
            f"{cfg.dataset}: style {cfg.style!r} needs train and val pieces "
            f"(found {len(train)} train, {len(val)} val)"
        )
    vocab.programs[cfg.style] = lm_data.style_programs(train, tokenizer)[cfg.style]
    bar_id = tokenizer.vocab["Bar_None"]
    sched = cfg.schedule
    raytrain.connect()
    train_ds, n_train = _windows_ds(train, vocab, sched.seq_len, bar_id, "training")
    val_ds, n_val = _windows_ds(val, vocab, sched.seq_len, bar_id, "validation")
    _check_fits(sched, n_train, cfg.resources.num_workers, _max_positions(hf_dir))
    total = _total_steps(sched, n_train, cfg.resources.num_workers)
    loop = _loop_cfg(cfg, vocab, sched, total, f"finetune-{cfg.out}")
    loop.update(
        init_from=str(hf_dir),
        lora=dataclasses.asdict(cfg.lora),
        trainable_token_ids=[style_id] if new_style else [],
        seed=cfg.seed,
    )
    net = apply_lora(
        lm_model.load_hf(hf_dir, vocab.size), loop["lora"], loop["trainable_token_ids"]
    )
    trainable, total_params = lm_model.count_parameters(net)
    pct = 100 * trainable / total_params
    share = f"{trainable:,} of {total_params:,} parameters trainable ({pct:.2f}%)"
    print(share, flush=True)
    data_hash = _dataset_hash(cfg.dataset)
    ident = raytrain.run_identity(loop, dataset=data_hash or cfg.dataset)
    result = raytrain.fit(f"finetune-{cfg.out}", _loop, loop, {"train": train_ds, "val": val_ds},
                  cfg.resources, cfg.storage, ident)  # fmt: skip
    net.load_state_dict(raytrain.best_state(result))
    metrics = _summary(result, n_train, n_val, [cfg.style], total_params)
    metrics.update(trainable_parameters=trainable, trainable_share=trainable / total_params,
                   base=cfg.base, style=cfg.style, new_style_token=new_style)  # fmt: skip
    adapter_dir = work.parent / f"{cfg.out}-adapter"
    if adapter_dir.exists():
        shutil.rmtree(adapter_dir)
    net.save_pretrained(adapter_dir)
    merged = net.merge_and_unload()
    _write_folder(work, merged, vocab, tok_dir / "tokenizer.json", cfg, metrics)
    shutil.copytree(adapter_dir, work / "adapter")
    reg = registry.Registry(cfg.models_root)
    reg.push(work, cfg.out, kind="lm", parent=cfg.base,
             training_data_hash=data_hash, metrics=metrics)  # fmt: skip
    metrics["trainable_summary"] = share
    return metrics
