"""What every midiforge training job does the same way on Ray Train.

The drivers (language model, transcriber) build a config dict and datasets, call `fit`,
and take the best weights from the finished run's last checkpoint. Worker loops use
`restore` / `report` so that a checkpoint always holds the full training state plus the
best weights so far: re-running a command after a kill resumes where it stopped, and the
finished run hands over its best model from the last checkpoint alone.
"""

from __future__ import annotations

import itertools
import json
import math
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs

STATE = "state.pt"
BEST = "best_model.pt"
_END = object()


@dataclass
class Resources:
    """Ray Train scaling: N DDP workers, CPU or GPU."""

    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    threads: int = 0  # torch threads per worker; 0 = cpus_per_worker

    def validate_config(self) -> None:
        from midiforge.config import ConfigError

        if self.num_workers < 1 or not self.cpus_per_worker > 0 or self.threads < 0:
            raise ConfigError(
                "resources: num_workers must be >= 1, cpus_per_worker > 0 and threads >= 0 "
                f"(got {self.num_workers}, {self.cpus_per_worker}, {self.threads})"
            )


def check_schedule(s: Any, min_eval_every: int) -> None:
    """The schedule fields every training loop shares, refused when the config is read
    rather than as a division by zero or a run that stops at once."""
    from midiforge.config import ConfigError

    if s.epochs < 1 or s.batch_size < 1:
        raise ConfigError(
            f"schedule: epochs and batch_size must be >= 1 ({s.epochs}, {s.batch_size})"
        )
    for key in ("max_steps", "patience", "warmup_steps"):
        if getattr(s, key) < 0:
            raise ConfigError(f"schedule.{key} must be >= 0, not {getattr(s, key)}")
    if not (math.isfinite(s.max_minutes) and s.max_minutes >= 0):
        raise ConfigError(f"schedule.max_minutes must be >= 0 (0 = no limit), not {s.max_minutes}")
    if s.eval_every < min_eval_every:
        raise ConfigError(f"schedule.eval_every must be >= {min_eval_every}, not {s.eval_every}")
    if not (math.isfinite(s.lr) and s.lr > 0):
        raise ConfigError(f"schedule.lr must be a positive number, not {s.lr}")


def threads(res: Resources) -> int:
    return res.threads or max(1, int(res.cpus_per_worker))


def connect() -> None:
    """A local Ray (or the job's cluster) with its dashboard: Ray Train needs the dashboard's
    agent to keep a long run's placement group alive, and users watch runs there."""
    from midiforge.pipeline.build import connect as _connect

    _connect(None, dashboard=True)


# Schedule fields that bound a run rather than define it: a run started again with a
# larger budget goes on from its checkpoint.
BUDGET_FIELDS = ("epochs", "max_steps", "max_minutes", "patience", "eval_every")
# Loop settings that follow from the budget or the machine, not from what is trained.
_NOT_IDENTITY = ("total_steps", "steps_per_epoch", "threads", "tensorboard")


def run_identity(loop_cfg: dict[str, Any], **more: Any) -> dict[str, Any]:
    """What defines a run: its loop settings without budget and machine fields, plus
    `more` (the training data's hash, the base model), as plain JSON."""
    ident = {k: v for k, v in loop_cfg.items() if k not in _NOT_IDENTITY}
    if isinstance(ident.get("schedule"), dict):
        ident["schedule"] = {k: v for k, v in ident["schedule"].items() if k not in BUDGET_FIELDS}
    return json.loads(json.dumps({**ident, **more}, sort_keys=True, default=str))


def check_identity(storage: str, name: str, identity: dict[str, Any]) -> None:
    """Ray Train resumes a run from its storage by name alone. So the settings a run was
    started with are kept beside it (`NAME.midiforge-run.json`), and starting the name
    again with other settings (another dataset, base model, learning rate, ...) is refused
    naming each change, where it used to resume or return the old run silently."""
    from midiforge.config import ConfigError, setting_changes
    from midiforge.pipeline.inputs import _filesystem

    fs, base = _filesystem(storage)
    path = f"{base}/{name}.midiforge-run.json"
    run_exists = fs.get_file_info(f"{base}/{name}").type != pafs.FileType.NotFound
    if run_exists and fs.get_file_info(path).type == pafs.FileType.File:
        with fs.open_input_stream(path) as f:
            changes = setting_changes(json.loads(f.read()), identity)
        if changes:
            raise ConfigError(
                f"training run {name!r} in {storage} was started with other settings, and "
                f"starting it again resumes it ({'; '.join(changes)}). Give another output name or "
                f"storage, or delete {base}/{name} to start over."
            )
        return
    fs.create_dir(base, recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(json.dumps(identity, indent=2, sort_keys=True).encode())


def fit(  # noqa: PLR0917 - one call site per driver, each argument named there
    name: str, loop: Callable[[dict], None], loop_cfg: dict[str, Any], datasets,
    res: Resources, storage: str, identity: dict[str, Any] | None = None,
):  # fmt: skip
    """Run `loop` on a TorchTrainer named `name` under `storage`; same name, same storage:
    Ray Train resumes the earlier run from its last checkpoint, if `identity` (see
    `run_identity`) is the one the run was started with."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    storage_path = str(Path(storage).resolve()) if "://" not in storage else storage
    if identity is not None:
        check_identity(storage_path, name, identity)
    trainer = TorchTrainer(
        loop,
        train_loop_config=loop_cfg,
        scaling_config=ScalingConfig(
            num_workers=res.num_workers,
            use_gpu=res.use_gpu,
            resources_per_worker={"CPU": res.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            # Each checkpoint carries the best weights too, so only the newest is kept.
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            failure_config=FailureConfig(max_failures=1),
        ),
        datasets=datasets,
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training run {name} ended without a checkpoint: {result.error}")
    return result


def tensorboard_dir(storage: str, name: str) -> str | None:
    return str(Path(storage).resolve() / name / "tensorboard") if "://" not in storage else None


def best_state(result):
    import torch

    with result.checkpoint.as_directory() as d:
        return torch.load(Path(d) / BEST, weights_only=False)


def history(result) -> list[dict[str, Any]]:
    try:
        df = result.metrics_dataframe
        return [] if df is None else json.loads(df.to_json(orient="records"))
    except Exception:  # the history is a convenience; the model does not depend on it
        return []


def lr_lambda(warmup: int, total: int):
    """Linear warm-up, then cosine decay to 10% of the peak."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        if total <= warmup:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def all_sum(values: list[float]) -> list[float]:
    """Sum across DDP workers (identity with one worker)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def unwrap(net):
    return net.module if hasattr(net, "module") else net


def restore(net, opt, lr_sched, state: dict[str, Any]):
    """Load the run's last checkpoint into net/opt/lr_sched; returns (state, best weights)."""
    import ray.train
    import torch

    ckpt = ray.train.get_checkpoint()
    if not ckpt:
        return state, None
    with ckpt.as_directory() as d:
        saved = torch.load(Path(d) / STATE, weights_only=False)
        net.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        lr_sched.load_state_dict(saved["scheduler"])
        state = saved["state"]
        state["resumed_from_step"] = state["step"]
        return state, torch.load(Path(d) / BEST, weights_only=False)


def report(metrics, rank, net, opt, lr_sched, state, best_weights) -> None:  # noqa: PLR0917
    """Metrics from every worker; the checkpoint (full state + best weights) from rank 0."""
    import ray.train
    import torch

    if rank != 0:
        ray.train.report(metrics)
        return
    # Saved with the state: the same command run again restores a finished run, which
    # must not take another step (see `finished`).
    state["stopped"] = bool(metrics.get("stopped", False))
    with tempfile.TemporaryDirectory() as d:
        torch.save(
            {
                "model": unwrap(net).state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": lr_sched.state_dict(),
                "state": dict(state),
            },
            Path(d) / STATE,
        )
        torch.save(best_weights, Path(d) / BEST)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def snapshot(net) -> dict[str, Any]:
    """A detached copy of the (unwrapped) weights, kept as the best so far."""
    return {k: v.detach().clone() for k, v in unwrap(net).state_dict().items()}


def finished(state: dict[str, Any], sched: dict[str, Any], total_steps: int) -> bool:
    """Whether a restored run had stopped and the schedule gives it nothing more: the
    same command again trains no further, while a larger budget or patience goes on."""
    if not state.get("stopped"):
        return False
    patience_out = bool(sched["patience"] and state["bad_evals"] >= sched["patience"])
    return budget_spent(state, sched, total_steps) or patience_out


def budget_spent(state: dict[str, Any], sched: dict[str, Any], total_steps: int) -> bool:
    """Out of steps or epochs, or past the schedule's wall-clock budget (`max_minutes`, 0 =
    none)."""
    out_of_time = sched["max_minutes"] and state["elapsed"] > 60 * sched["max_minutes"]
    out_of_epochs = state["epoch"] >= sched["epochs"]
    return bool(out_of_time or out_of_epochs or state["step"] >= total_steps)


def budget_spent_everywhere(state: dict[str, Any], sched: dict[str, Any], total_steps: int) -> bool:
    """budget_spent, the same on every DDP worker. Steps and epochs agree by construction,
    but each worker reads its own clock: one past max_minutes would validate (an
    all-reduce of the val loss) while another took one more step (the gradients'
    all-reduce), and both would wait forever. Any worker out of time stops them all."""
    spent = budget_spent(state, sched, total_steps)
    if not sched["max_minutes"]:
        return spent
    return any_worker(spent)


def any_worker(flag: bool) -> bool:
    """True on every worker when it is True on any (itself without DDP)."""
    return all_sum([1.0 if flag else 0.0])[0] > 0


def exact_batches(batches: Iterable[dict[str, Any]], batch_size: int) -> Iterator[dict[str, Any]]:
    """Batches (dicts of numpy arrays or torch tensors) of exactly `batch_size` rows, in
    order, the remainder dropped. With a local shuffle buffer, Ray Data yields short
    batches mid-stream at block boundaries that drop_last keeps (ray-project/ray#66085),
    so an epoch's batch count follows how the blocks arrived and can differ between DDP
    ranks: one rank validates while another still trains, and both wait forever. Cut
    again here, each rank takes (its rows // batch_size) steps, the same on all."""
    pending: list[dict[str, Any]] = []
    have = 0
    for batch in batches:
        pending.append(batch)
        have += len(next(iter(batch.values())))
        while have >= batch_size:
            joined = pending[0] if len(pending) == 1 else _concat(pending)
            yield {k: v[:batch_size] for k, v in joined.items()}
            have -= batch_size
            pending = [{k: v[batch_size:] for k, v in joined.items()}] if have else []


def _concat(parts: list[dict[str, Any]]) -> dict[str, Any]:
    first = next(iter(parts[0].values()))
    if type(first).__module__.startswith("torch"):
        import torch

        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def epoch_batches(
    state: dict[str, Any], batches: Iterable[dict[str, Any]], batch_size: int
) -> Iterator[dict[str, Any]]:
    """The batches of the current epoch the run has not taken yet, each of exactly
    `batch_size` rows (exact_batches: counting batches only means something when they
    are whole).

    Each batch is counted as taken (`state["epoch_batches"]`) as it is handed out, and the
    epoch as done (`state["epoch"]`) with its last one, so that a report in the loop's body
    saves where the run is and the final epoch's last step counts as the end of the budget.
    A run resumed mid-epoch skips as many batches as it took before its checkpoint: the
    epoch keeps its length. (Ray Data need not repeat its order on a resume, so the windows
    skipped are not always the ones taken.)"""
    whole = exact_batches(batches, batch_size)
    it = itertools.islice(whole, state.get("epoch_batches", 0), None)
    batch = next(it, _END)
    if batch is _END:  # nothing left of this epoch
        state["epoch"], state["epoch_batches"] = state["epoch"] + 1, 0
    while batch is not _END:
        following = next(it, _END)
        state["epoch_batches"] = state.get("epoch_batches", 0) + 1
        if following is _END:
            state["epoch"], state["epoch_batches"] = state["epoch"] + 1, 0
        yield batch
        batch = following


def track_best(state: dict[str, Any], val: float, net, best, patience: int):
    """Early-stopping bookkeeping after a validation: (best weights, patience run out)."""
    if val < state["best_val"]:
        state["best_val"], state["bad_evals"] = val, 0
        best = snapshot(net)
    else:
        state["bad_evals"] += 1
    return best, bool(patience and state["bad_evals"] >= patience)


def log_scalars(writer, metrics: dict[str, Any], keys, step: int) -> None:
    """TensorBoard scalars for `keys` of `metrics`; a no-op without a writer (rank > 0)."""
    if writer is None:
        return
    for k in keys:
        writer.add_scalar(k, metrics[k], step)
    writer.flush()


def step_metrics(state: dict[str, Any], losses: list[float], lr_sched, stop: bool) -> dict:
    """The metrics every training loop reports, besides its own."""
    return {
        "step": state["step"],
        "epoch": state["epoch"],
        "train_loss": sum(losses) / max(1, len(losses)),
        "best_val_loss": state["best_val"],
        "lr": lr_sched.get_last_lr()[0],
        "elapsed_s": state["elapsed"],
        "stopped": stop,
        "resumed_from_step": state.get("resumed_from_step", 0),
    }


def start(net, sched: dict[str, Any], total_steps: int, rank: int, tensorboard: str | None):
    """A worker's training state: AdamW over the trainable parameters, warm-up + cosine
    schedule, the last checkpoint restored, DDP, and rank 0's TensorBoard writer.
    Returns (net, params, opt, lr_sched, state, best weights or None, writer or None)."""
    import ray.train.torch
    import torch

    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=sched["lr"], weight_decay=sched["weight_decay"])
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(sched["warmup_steps"], total_steps))
    state = {"step": 0, "epoch": 0, "epoch_batches": 0, "best_val": float("inf"),
             "bad_evals": 0, "elapsed": 0.0}  # fmt: skip
    state, best = restore(net, opt, lr_sched, state)
    net = ray.train.torch.prepare_model(net)
    writer = None
    if rank == 0 and tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(tensorboard, purge_step=state["step"] or None)
    return net, params, opt, lr_sched, state, best, writer
