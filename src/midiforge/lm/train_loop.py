"""The Ray Train worker loop shared by pretraining and LoRA fine-tuning.

Each Ray Train worker builds the model (fresh, or from a base model folder, with LoRA
adapters when asked), wraps it in DDP through `ray.train.torch.prepare_model`, and reads
its shard of the training windows from Ray Data. Every `eval_every` steps it computes the
validation loss over all workers' shards, writes TensorBoard scalars (rank 0), and
reports metrics plus a checkpoint to Ray Train. A checkpoint holds the full training state
(weights, optimizer, schedule, step, early-stopping state, elapsed time) and the best
weights so far, so re-running the same command after a kill resumes where it stopped and
the finished run can hand over its best model from the last checkpoint alone.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

STATE = "state.pt"
BEST = "best_model.pt"


def _model(cfg: dict[str, Any]):
    from midiforge.lm import model as lm_model
    from midiforge.lm.config import Architecture
    from midiforge.lm.vocab import LMVocab

    vocab = LMVocab(**cfg["vocab"])
    if cfg.get("init_from"):
        net = lm_model.load_hf(cfg["init_from"], vocab.size)
    else:
        net = lm_model.build(Architecture(**cfg["architecture"]), vocab, cfg["seed"])
    if cfg.get("lora"):
        net = apply_lora(net, cfg["lora"], cfg.get("trainable_token_ids") or [])
    return net


def apply_lora(net, lora: dict[str, Any], trainable_token_ids: list[int]):
    """peft LoRA on the attention projections; the base weights are frozen. New style
    tokens get their embedding rows trained too (peft's trainable_token_indices): a q/v
    adapter alone cannot give meaning to a token the base model never saw."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora["rank"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=list(lora["target_modules"]),
        task_type="CAUSAL_LM",
        trainable_token_indices=(
            {"embed_tokens": trainable_token_ids} if trainable_token_ids else None
        ),
    )
    return get_peft_model(net, config)


def _lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        if total <= warmup:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def _evaluate(net, shard, batch_size: int, pad: int) -> tuple[float, int]:
    """(summed token NLL, token count) over this worker's validation shard."""
    import torch

    from midiforge.lm.data import labels_for

    total, count = 0.0, 0
    net.eval()
    with torch.no_grad():
        for batch in shard.iter_torch_batches(batch_size=batch_size, dtypes=torch.long):
            ids = batch["data"]
            labels = labels_for(ids, pad)
            logits = net(input_ids=ids).logits[:, :-1]
            target = labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum"
            )
            total += float(loss)
            count += int((target != -100).sum())
    net.train()
    return total, count


def _all_sum(values: list[float]) -> list[float]:
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def _unwrap(net):
    return net.module if hasattr(net, "module") else net


def train_loop(cfg: dict[str, Any]) -> None:  # noqa: PLR0915 - one loop, read top to bottom
    import ray.train
    import ray.train.torch
    import torch

    from midiforge.lm.data import labels_for

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    sched = cfg["schedule"]
    torch.set_num_threads(max(1, cfg["threads"]))
    torch.manual_seed(cfg["seed"] + rank)

    net = _model(cfg)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=sched["lr"], weight_decay=sched["weight_decay"])
    total_steps = cfg["total_steps"]
    lr_sched = torch.optim.lr_scheduler.LambdaLR(
        opt, _lr_lambda(sched["warmup_steps"], total_steps)
    )
    state = {"step": 0, "epoch": 0, "best_val": float("inf"), "bad_evals": 0, "elapsed": 0.0}
    best_weights = None
    ckpt = ray.train.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            saved = torch.load(Path(d) / STATE, weights_only=False)
            net.load_state_dict(saved["model"])
            opt.load_state_dict(saved["optimizer"])
            lr_sched.load_state_dict(saved["scheduler"])
            state = saved["state"]
            state["resumed_from_step"] = state["step"]
            best_weights = torch.load(Path(d) / BEST, weights_only=False)
    net = ray.train.torch.prepare_model(net)
    writer = None
    if rank == 0 and cfg.get("tensorboard"):
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(cfg["tensorboard"], purge_step=state["step"] or None)

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    pad = cfg["vocab"]["pad"]
    started = time.monotonic() - state["elapsed"]
    tokens_seen, window_t0, losses = 0, time.monotonic(), []
    stop = False
    while not stop and state["epoch"] < sched["epochs"]:
        batches = train_shard.iter_torch_batches(
            batch_size=sched["batch_size"],
            dtypes=torch.long,
            drop_last=True,
            local_shuffle_buffer_size=max(64, 8 * sched["batch_size"]),
            local_shuffle_seed=cfg["seed"] + 1000 * state["epoch"] + rank,
        )
        for batch in batches:
            ids = batch["data"]
            labels = labels_for(ids, pad)
            loss = net(input_ids=ids, labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, sched["grad_clip"])
            opt.step()
            lr_sched.step()
            state["step"] += 1
            losses.append(float(loss))
            tokens_seen += int((labels != -100).sum())
            state["elapsed"] = time.monotonic() - started
            out_of_time = sched["max_minutes"] and state["elapsed"] > 60 * sched["max_minutes"]
            out_of_steps = state["step"] >= total_steps
            if state["step"] % sched["eval_every"] == 0 or out_of_time or out_of_steps:
                nll, count = _all_sum(list(_evaluate(net, val_shard, sched["batch_size"], pad)))
                val_loss = nll / max(1.0, count)
                improved = val_loss < state["best_val"]
                if improved:
                    state["best_val"], state["bad_evals"] = val_loss, 0
                    weights = _unwrap(net).state_dict().items()
                    best_weights = {k: v.detach().clone() for k, v in weights}
                else:
                    state["bad_evals"] += 1
                patience_out = sched["patience"] and state["bad_evals"] >= sched["patience"]
                stop = bool(out_of_time or out_of_steps or patience_out)
                metrics = {
                    "step": state["step"],
                    "epoch": state["epoch"],
                    "train_loss": sum(losses) / max(1, len(losses)),
                    "val_loss": val_loss,
                    "val_perplexity": math.exp(min(50.0, val_loss)),
                    "best_val_loss": state["best_val"],
                    "lr": lr_sched.get_last_lr()[0],
                    "tokens_per_s": tokens_seen / max(1e-9, time.monotonic() - window_t0),
                    "elapsed_s": state["elapsed"],
                    "stopped": stop,
                    "resumed_from_step": state.get("resumed_from_step", 0),
                }
                if writer:
                    for k in ("train_loss", "val_loss", "val_perplexity", "lr", "tokens_per_s"):
                        writer.add_scalar(k, metrics[k], state["step"])
                    writer.flush()
                _report(metrics, rank, net, opt, lr_sched, state, best_weights)
                tokens_seen, window_t0, losses = 0, time.monotonic(), []
            if stop:
                break
        else:
            state["epoch"] += 1
    if writer:
        writer.close()


def _report(metrics, rank, net, opt, lr_sched, state, best_weights) -> None:  # noqa: PLR0917
    import ray.train
    import torch

    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        torch.save(
            {
                "model": _unwrap(net).state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": lr_sched.state_dict(),
                "state": dict(state),
            },
            Path(d) / STATE,
        )
        torch.save(best_weights, Path(d) / BEST)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
