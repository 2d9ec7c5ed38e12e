"""The generator's sampler: only allowed tokens, the nucleus and nothing outside it, greedy
at temperature 0, and the same draws as numpy's own weighted choice for a seed."""

import numpy as np

from midiforge.lm.generate import sample

V = 64


def reference(logits, mask, temperature, top_p, rng) -> int:
    """The sampler as first written, drawing with rng.choice(p=...)."""
    allowed = np.flatnonzero(mask)
    z = logits[allowed].astype(np.float64)
    if temperature <= 0 or len(allowed) == 1:
        return int(allowed[int(np.argmax(z))])
    z = (z - z.max()) / temperature
    p = np.exp(z)
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    keep = order[: int(np.searchsorted(np.cumsum(p[order]), top_p)) + 1]
    return int(allowed[keep[rng.choice(len(keep), p=p[keep] / p[keep].sum())]])


def test_same_tokens_as_numpys_weighted_choice_for_a_seed():
    g = np.random.default_rng(0)
    mine, theirs = np.random.default_rng(7), np.random.default_rng(7)
    for _ in range(2000):
        mask = g.random(V) < g.uniform(0.05, 1)
        mask[g.integers(V)] = True
        logits = (g.standard_normal(V) * g.uniform(0.1, 5)).astype(np.float32)
        t, top_p = float(g.choice([0.7, 1.0, 1.3])), float(g.choice([0.8, 0.95, 1.0]))
        assert sample(logits, mask, t, top_p, mine) == reference(logits, mask, t, top_p, theirs)


def test_only_allowed_tokens_and_only_the_nucleus():
    logits = np.zeros(V, np.float32)
    logits[[3, 9, 20]] = [5.0, 4.0, 8.0]  # 20 is forbidden below
    mask = np.zeros(V, bool)
    mask[[3, 9, 40, 41]] = True
    rng = np.random.default_rng(1)
    draws = [sample(logits, mask, 1.0, 0.9, rng) for _ in range(500)]
    # softmax over the allowed: 3 -> 0.73, 9 -> 0.27, 40 and 41 -> 0.005 each; the 0.9
    # nucleus holds 3 and 9 only.
    assert set(draws) == {3, 9}
    assert 0.65 < draws.count(3) / len(draws) < 0.81
    assert {sample(logits, mask, 1.0, 1.0, rng) for _ in range(3000)} == {3, 9, 40, 41}


def test_greedy_and_single_choice():
    logits = np.arange(V, dtype=np.float32)
    mask = np.zeros(V, bool)
    mask[[5, 17, 30]] = True
    rng = np.random.default_rng(2)
    assert sample(logits, mask, 0.0, 0.95, rng) == 30
    only = np.zeros(V, bool)
    only[11] = True
    assert sample(logits, only, 1.0, 0.95, rng) == 11
