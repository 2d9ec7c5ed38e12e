"""Hyperparameter sweeps on Ray Tune, shared by the drum-hit filter and the style classifier.

A sweep is: a search space written as plain YAML (`{"lr": {"loguniform": [1e-4, 1e-2]},
"width": {"choice": [8, 16]}, "epochs": 6}`), a trial function that reports metrics once
per training iteration (an epoch, or a cross-validation fold), and ASHA, which stops the
trials that trail the others at each rung so the budget goes to the promising ones.
Every trial's metrics land in TensorBoard event files under `storage/NAME/` (Ray Tune's
TensorBoard logger) and in the Ray dashboard's job view. What a caller gets back is a
plain summary (every trial's config, last metrics and iterations; the best trial), which
is saved with the exported model.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from midiforge.config import ConfigError
from midiforge.errors import MidiforgeError

log = logging.getLogger(__name__)

REPORTED = ("val_", "train_", "cv_")  # metric prefixes a trial reports (the rest is Tune's)
SAMPLERS = ("choice", "uniform", "loguniform", "randint", "lograndint")


@dataclass
class SweepSettings:
    num_samples: int = 8  # trials drawn from the space
    metric: str = "val_f1"  # what ASHA compares and the best trial is chosen by
    mode: str = "max"
    max_t: int = 10  # iterations (epochs / folds) a trial may run at most
    grace_period: int = 1  # iterations every trial gets before ASHA may stop it
    reduction_factor: int = 2  # ASHA keeps the top 1/reduction_factor at each rung
    max_concurrent_trials: int = 2
    cpus_per_trial: float = 1.0
    storage: str = "out/sweeps"  # Tune results and TensorBoard logs
    address: str | None = None  # Ray address; None = the job's cluster or a local Ray
    seed: int = 0

    def validate_config(self) -> None:
        if self.num_samples < 1 or self.max_t < 1 or self.grace_period < 1:
            raise ConfigError("num_samples, max_t and grace_period must be >= 1")
        if self.grace_period > self.max_t:
            raise ConfigError("grace_period must not exceed max_t")
        if self.mode not in ("max", "min"):
            raise ConfigError("mode must be 'max' or 'min'")
        if self.reduction_factor < 2:
            raise ConfigError("reduction_factor must be >= 2")


def check_space(space: Mapping[str, Any], config_cls: type, budget: str, where: str) -> None:
    """Every swept key must be a field of `config_cls`; `budget` (epochs, folds) is ASHA's
    time axis, set once for all trials at `where`, never drawn."""
    import dataclasses

    unknown = sorted(set(space) - {f.name for f in dataclasses.fields(config_cls)})
    if unknown:
        raise ConfigError(f"space: unknown keys {unknown} (fields of {config_cls.__name__})")
    if budget in space:
        raise ConfigError(f"space: {budget} is ASHA's budget; set {where}")


def search_space(spec: Mapping[str, Any]) -> dict[str, Any]:
    """YAML-friendly space -> Ray Tune domains. A key maps to a fixed value, or to a
    one-key mapping {sampler: args} with sampler in SAMPLERS."""
    from ray import tune

    space: dict[str, Any] = {}
    for key, value in spec.items():
        if not (isinstance(value, Mapping) and len(value) == 1):
            space[key] = value
            continue
        ((sampler, args),) = value.items()
        if sampler not in SAMPLERS:
            raise ConfigError(f"space.{key}: unknown sampler {sampler!r} ({', '.join(SAMPLERS)})")
        if sampler == "choice":
            space[key] = tune.choice(list(args))
            continue
        try:  # YAML reads 1e-4 (no dot) as a string
            cast = int if sampler.endswith("randint") else float
            lo, hi = (cast(a) for a in args)
        except (TypeError, ValueError):
            raise ConfigError(f"space.{key}: {sampler} needs [low, high], got {args!r}") from None
        if not lo < hi:
            raise ConfigError(f"space.{key}: {sampler} needs low < high, got {list(args)}")
        space[key] = getattr(tune, sampler)(lo, hi)
    return space


def run_sweep(
    name: str,
    trial: Callable[[dict[str, Any], Any], None],
    data: Any,
    space: Mapping[str, Any],
    settings: SweepSettings,
) -> tuple[dict[str, Any], Any]:
    """Run `trial(config, data)` over `space` with ASHA; `data` goes to the object store
    once and every trial reads it from there. Returns the sweep summary and the best
    trial's `ray.tune.Result` (its checkpoint and per-iteration metrics)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from midiforge.pipeline.build import connect

    settings.validate_config()
    connect(settings.address, dashboard=True)
    # A new folder per sweep: an earlier sweep's trials never mix into this one's logs.
    run_name = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    storage = (
        str(Path(settings.storage).resolve()) if "://" not in settings.storage else settings.storage
    )
    scheduler = ASHAScheduler(
        time_attr="training_iteration",
        max_t=settings.max_t,
        grace_period=settings.grace_period,
        reduction_factor=settings.reduction_factor,
    )
    tuner = tune.Tuner(
        tune.with_resources(
            tune.with_parameters(trial, data=data), {"cpu": settings.cpus_per_trial}
        ),
        param_space=search_space(space),
        tune_config=tune.TuneConfig(
            metric=settings.metric,
            mode=settings.mode,
            scheduler=scheduler,
            num_samples=settings.num_samples,
            max_concurrent_trials=settings.max_concurrent_trials,
            search_alg=BasicVariantGenerator(random_state=settings.seed),
        ),
        run_config=tune.RunConfig(name=run_name, storage_path=storage, verbose=1),
    )
    grid = tuner.fit()
    summary = summarize(grid, settings)
    summary["logdir"] = f"{storage}/{run_name}"
    return summary, grid[summary["best"]["index"]]


def summarize(grid, settings: SweepSettings) -> dict[str, Any]:
    """Every trial (config, iterations, last metrics, error) and the best one by metric."""
    trials = []
    for index, result in enumerate(grid):
        metrics = dict(result.metrics or {})
        trials.append({
            "index": index,
            "trial_id": metrics.get("trial_id"),
            "config": _plain(result.config),
            "iterations": metrics.get("training_iteration", 0),
            "metrics": {k: v for k, v in metrics.items() if k.startswith(REPORTED)},
            "error": str(result.error) if result.error else None,
        })  # fmt: skip
    scored = [t for t in trials if _finite(t["metrics"].get(settings.metric))]
    if not scored:
        errors = "; ".join(t["error"] for t in trials if t["error"]) or "no trial reported"
        raise SweepError(f"no trial reported {settings.metric}: {errors}")
    # Only the trials that went furthest are compared: a trial ASHA stopped after two
    # folds (or epochs) reports a mean over fewer, noisier iterations.
    furthest = max(t["iterations"] for t in scored)
    sign = 1 if settings.mode == "max" else -1
    best = max(
        (t for t in scored if t["iterations"] == furthest),
        key=lambda t: sign * t["metrics"][settings.metric],
    )
    stopped_early = sum(1 for t in trials if 0 < t["iterations"] < settings.max_t)
    return {
        "metric": settings.metric,
        "mode": settings.mode,
        "num_samples": settings.num_samples,
        "max_t": settings.max_t,
        "stopped_early": stopped_early,
        "best": best,
        "trials": trials,
    }


class SweepError(MidiforgeError, RuntimeError):
    """No trial of a sweep produced the metric it is judged by."""


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def _plain(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in config.items()}
