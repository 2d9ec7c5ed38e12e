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
import time
from typing import Any

from midiforge import raytrain


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


def train_loop(cfg: dict[str, Any]) -> None:
    import ray.train
    import torch

    from midiforge.lm.data import labels_for

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    sched = cfg["schedule"]
    torch.set_num_threads(max(1, cfg["threads"]))
    torch.manual_seed(cfg["seed"] + rank)

    net = _model(cfg)
    total_steps = cfg["total_steps"]
    net, params, opt, lr_sched, state, best_weights, writer = raytrain.start(
        net, sched, total_steps, rank, cfg.get("tensorboard")
    )

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    pad = cfg["vocab"]["pad"]
    started = time.monotonic() - state["elapsed"]
    tokens_seen, window_t0, losses = 0, time.monotonic(), []
    stop = raytrain.finished(state, sched, total_steps)
    while not stop and state["epoch"] < sched["epochs"]:
        batches = train_shard.iter_torch_batches(
            batch_size=sched["batch_size"],
            dtypes=torch.long,
            drop_last=True,
            local_shuffle_buffer_size=max(64, 8 * sched["batch_size"]),
            local_shuffle_seed=cfg["seed"] + 1000 * state["epoch"] + rank,
        )
        for batch in raytrain.epoch_batches(state, batches, sched["batch_size"]):
            ids = batch["data"]
            labels = labels_for(ids, pad)
            loss = net(input_ids=ids, labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, sched["grad_clip"])
            opt.step()
            lr_sched.step()
            state["step"] += 1
            losses.append(loss.item())
            tokens_seen += int((labels != -100).sum())
            state["elapsed"] = time.monotonic() - started
            spent = raytrain.budget_spent_everywhere(state, sched, total_steps)
            if state["step"] % sched["eval_every"] == 0 or spent:
                part = _evaluate(net, val_shard, sched["batch_size"], pad)
                nll, count = raytrain.all_sum(list(part))
                val_loss = nll / max(1.0, count)
                best_weights, patience_out = raytrain.track_best(
                    state, val_loss, net, best_weights, sched["patience"]
                )
                stop = spent or patience_out
                metrics = {
                    **raytrain.step_metrics(state, losses, lr_sched, stop),
                    "val_loss": val_loss,
                    "val_perplexity": math.exp(min(50.0, val_loss)),
                    "tokens_per_s": tokens_seen / max(1e-9, time.monotonic() - window_t0),
                }
                scalars = ("train_loss", "val_loss", "val_perplexity", "lr", "tokens_per_s")
                raytrain.log_scalars(writer, metrics, scalars, state["step"])
                raytrain.report(metrics, rank, net, opt, lr_sched, state, best_weights)
                tokens_seen, window_t0, losses = 0, time.monotonic(), []
            if stop:
                break
    if writer:
        writer.close()
