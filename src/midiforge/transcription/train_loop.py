"""The Ray Train worker loop that fine-tunes a basic-pitch-shaped transcriber.

Each worker rebuilds the model from the weights the driver passed in (so workers on other
nodes need no file the driver has), freezes what the config does not train, wraps it in
DDP, and streams its shard of prepared windows from Ray Data. Windows are augmented here
(gain, noise, time shift of audio and targets together). Validation runs on the held-out
pieces' windows every `eval_every` steps (or once per epoch), and each report carries a
checkpoint with the full training state and the best weights (midiforge.raytrain).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from midiforge import raytrain
from midiforge.transcription import constants as bp
from midiforge.transcription import targets as tg

KEYS = ("contour", "note", "onset")


def build_model(init: dict[str, Any], trainable: list[str]):
    """BasicPitch from {'front': constants, 'state': arrays}; only `trainable` heads learn."""
    import torch

    from midiforge.transcription.torch_model import BasicPitch, FrontEndConstants

    net = BasicPitch(FrontEndConstants(**init["front"]))
    net.load_head_state({k: torch.as_tensor(v) for k, v in init["state"].items()})
    for name, p in net.named_parameters():
        # The front BatchNorm stays fixed: training it would need gradients through every
        # head's input, doubling the cost of the widest convolutions for two scalars.
        p.requires_grad_(name.split(".")[0] in trainable)
    return net


def decode_batch(batch: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Parquet rows -> audio (B, N) float32 and uint8 targets (B, T, bins)."""
    audio = np.stack([np.frombuffer(a, np.float32) for a in batch["audio"]])
    frames = {
        k: np.stack([tg.unpack(v, tg.SHAPES[k]) for v in batch[k]]).astype(np.float32) for k in KEYS
    }
    return audio, frames


def augment(audio: np.ndarray, frames: dict[str, np.ndarray], aug: dict[str, Any],
            rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:  # fmt: skip
    audio = audio.copy()
    frames = {k: v.copy() for k, v in frames.items()}
    for i in range(audio.shape[0]):
        audio[i] *= 10 ** (rng.uniform(-aug["gain_db"], aug["gain_db"]) / 20)
        if rng.random() < aug["noise_prob"]:
            rms = float(np.sqrt(np.mean(audio[i] ** 2))) or 1e-4
            snr = rng.uniform(*aug["noise_snr_db"])
            audio[i] += rng.standard_normal(audio.shape[1]).astype(np.float32) * (
                rms / 10 ** (snr / 20)
            )
        k = int(rng.integers(-aug["shift_frames"], aug["shift_frames"] + 1))
        if k:
            audio[i] = _shift(audio[i], k * bp.FFT_HOP)
            for name in KEYS:
                frames[name][i] = _shift(frames[name][i], k)
    return audio, frames


def _shift(x: np.ndarray, k: int) -> np.ndarray:
    """Move along axis 0 by k (later if k > 0), filling with zeros: no wrap-around, so no
    note is moved to the other end of the window."""
    out = np.zeros_like(x)
    if k > 0:
        out[k:] = x[:-k]
    else:
        out[:k] = x[-k:]
    return out


def loss_terms(logits: dict, frames: dict, loss: dict[str, Any]) -> dict:
    """Per-output losses (torch scalars) as basic-pitch defines them."""
    import torch
    from torch.nn import functional as nnf

    ls = loss["label_smoothing"]
    out = {}
    for k in KEYS:
        y = frames[k]
        soft = y * (1 - ls) + 0.5 * ls
        if k != "onset":
            out[k] = nnf.binary_cross_entropy_with_logits(logits[k], soft)
            continue
        per = nnf.binary_cross_entropy_with_logits(logits[k], soft, reduction="none")
        pos = y > 0.5
        w = loss["onset_positive_weight"]
        neg_term = per[~pos].mean() if bool((~pos).any()) else torch.zeros(())
        pos_term = per[pos].mean() if bool(pos.any()) else torch.zeros(())
        out[k] = (1 - w) * neg_term + w * pos_term
    return out


def total_loss(terms: dict, loss: dict[str, Any]):
    return sum(loss[k] * terms[k] for k in KEYS)


def _evaluate(net, shard, batch_size: int, loss: dict[str, Any]) -> list[float]:
    """[summed total loss, summed per-output losses..., windows] over this worker's shard."""
    import torch

    sums = np.zeros(len(KEYS) + 2)
    net.eval()
    with torch.no_grad():
        for batch in shard.iter_batches(batch_size=batch_size, batch_format="numpy"):
            audio, frames = decode_batch(batch)
            n = audio.shape[0]
            terms = loss_terms(
                raytrain.unwrap(net).logits(torch.from_numpy(audio)),
                {k: torch.from_numpy(v) for k, v in frames.items()},
                loss,
            )
            sums[0] += float(total_loss(terms, loss)) * n
            sums[1:-1] += [float(terms[k]) * n for k in KEYS]
            sums[-1] += n
    net.train()
    return sums.tolist()


def train_loop(cfg: dict[str, Any]) -> None:  # noqa: PLR0915 - one loop, top to bottom
    import ray.train
    import torch

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    sched, loss, aug = cfg["schedule"], cfg["loss"], cfg["augment"]
    torch.set_num_threads(max(1, cfg["threads"]))
    torch.manual_seed(cfg["seed"] + rank)
    rng = np.random.default_rng(cfg["seed"] + 7919 * rank)

    net = build_model(cfg["init"], cfg["trainable"])
    total_steps = cfg["total_steps"]
    net, params, opt, lr_sched, state, best_weights, writer = raytrain.start(
        net, sched, total_steps, rank, cfg.get("tensorboard")
    )
    if best_weights is None:
        best_weights = raytrain.snapshot(net)  # the base model is the first "best"

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    eval_every = sched["eval_every"] or cfg["steps_per_epoch"]
    started = time.monotonic() - state["elapsed"]
    seen, window_t0, losses = 0, time.monotonic(), []
    if state["step"] == 0:  # the base model's validation loss is the bar to beat
        state["base_val"] = _val_loss(net, val_shard, sched["batch_size"], loss)[0]
        state["best_val"] = state["base_val"]
    stop = raytrain.finished(state, sched, total_steps)
    while not stop and state["epoch"] < sched["epochs"]:
        batches = train_shard.iter_batches(
            batch_size=sched["batch_size"],
            batch_format="numpy",
            drop_last=True,
            local_shuffle_buffer_size=max(64, 8 * sched["batch_size"]),
            local_shuffle_seed=cfg["seed"] + 1000 * state["epoch"] + rank,
        )
        for batch in raytrain.epoch_batches(state, batches, sched["batch_size"]):
            audio, frames = augment(*decode_batch(batch), aug, rng)
            terms = loss_terms(
                net(torch.from_numpy(audio), logits=True),
                {k: torch.from_numpy(v) for k, v in frames.items()},
                loss,
            )
            value = total_loss(terms, loss)
            opt.zero_grad(set_to_none=True)
            value.backward()
            torch.nn.utils.clip_grad_norm_(params, sched["grad_clip"])
            opt.step()
            lr_sched.step()
            state["step"] += 1
            losses.append(float(value.detach()))
            seen += audio.shape[0]
            state["elapsed"] = time.monotonic() - started
            spent = raytrain.budget_spent_everywhere(state, sched, total_steps)
            if not (state["step"] % eval_every == 0 or spent):
                continue
            val, per_key = _val_loss(net, val_shard, sched["batch_size"], loss)
            best_weights, patience_out = raytrain.track_best(
                state, val, net, best_weights, sched["patience"]
            )
            stop = spent or patience_out
            metrics = {
                **raytrain.step_metrics(state, losses, lr_sched, stop),
                "val_loss": val,
                **{f"val_{k}_loss": v for k, v in per_key.items()},
                "base_val_loss": state["base_val"],
                "windows_per_s": seen / max(1e-9, time.monotonic() - window_t0),
            }
            scalars = [
                k for k in metrics if k.endswith(("loss", "_s")) or k in ("lr", "windows_per_s")
            ]
            raytrain.log_scalars(writer, metrics, scalars, state["step"])
            raytrain.report(metrics, rank, net, opt, lr_sched, state, best_weights)
            seen, window_t0, losses = 0, time.monotonic(), []
            if stop:
                break
    if writer:
        writer.close()


def _val_loss(net, shard, batch_size: int, loss: dict[str, Any]) -> tuple[float, dict]:
    sums = raytrain.all_sum(_evaluate(net, shard, batch_size, loss))
    n = max(1.0, sums[-1])
    return sums[0] / n, {k: s / n for k, s in zip(KEYS, sums[1:-1], strict=True)}
