"""Training-loop helpers shared by the LM and transcription loops, on a real two-process
gloo group (what Ray Train's TorchTrainer sets up for DDP on CPUs)."""

from __future__ import annotations

import json
from pathlib import Path

import torch.multiprocessing as mp

from midiforge import raytrain

from .conftest import free_port


def _decide(rank: int, port: int, elapsed: list[float], max_minutes: float, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        state = {"elapsed": elapsed[rank], "epoch": 0, "step": 5}
        sched = {"max_minutes": max_minutes, "epochs": 3}
        alone = raytrain.budget_spent(state, sched, total_steps=100)
        agreed = raytrain.budget_spent_everywhere(state, sched, total_steps=100)
        Path(f"{out}.{rank}").write_text(json.dumps({"alone": alone, "agreed": agreed}))
    finally:
        dist.destroy_process_group()


def _run(tmp_path, elapsed: list[float], max_minutes: float) -> list[dict]:
    out = str(tmp_path / "decision")
    mp.spawn(_decide, args=(free_port(), elapsed, max_minutes, out), nprocs=2, join=True)
    return [json.loads(Path(f"{out}.{r}").read_text()) for r in (0, 1)]


def test_workers_stop_on_time_together(tmp_path):
    """Rank 0's clock is past max_minutes a moment before rank 1's: alone they disagree
    (rank 0 validating while rank 1 took another step hung a 2-worker `small` pretraining
    at its 40 minutes); agreed, both stop."""
    decisions = _run(tmp_path, elapsed=[60.5, 59.5], max_minutes=1.0)
    assert [d["alone"] for d in decisions] == [True, False]
    assert [d["agreed"] for d in decisions] == [True, True]
    decisions = _run(tmp_path, elapsed=[30.0, 29.0], max_minutes=1.0)
    assert [d["agreed"] for d in decisions] == [False, False]


def test_exact_batches_recut_short_batches_in_order():
    """Blocks of 8, 6, 8 and 2 rows with batches of 8 (Ray Data's short mid-stream
    batches): three batches of exactly 8, in order, as on every rank with 24 rows."""
    import numpy as np
    import torch

    for make in (np.arange, torch.arange):
        parts = [(0, 8), (8, 14), (14, 22), (22, 24)]
        batches = [{"data": make(a, b), "twice": 2 * make(a, b)} for a, b in parts]
        out = list(raytrain.exact_batches(batches, 8))
        assert [len(b["data"]) for b in out] == [8, 8, 8]
        got = [int(x) for b in out for x in b["data"]]
        assert got == list(range(24))
        assert all((b["twice"] == 2 * b["data"]).all() for b in out)
        # The rows that do not fill a batch are dropped, as drop_last does.
        assert len(list(raytrain.exact_batches(batches[:3], 8))) == 2
