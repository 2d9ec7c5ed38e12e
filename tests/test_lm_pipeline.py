"""The language model end to end on a local Ray: corpus MIDI -> dataset job -> debug
pretrain (Ray Train) -> LoRA fine-tune -> ONNX export -> generate -> evaluate."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from midiforge import config as cfgmod
from midiforge import midi_io

BIN = Path(sys.executable).parent
DEBUG = ["--schedule.max_steps=10", "--schedule.eval_every=5"]


@pytest.fixture(scope="module")
def lm_dataset(ray_local, tmp_path_factory):
    """12 fiddle tunes (the fine-tuning style) and 4 folk + 4 chorale pieces, 30 s each,
    through the real dataset job; one augmented copy per train piece keeps it quick."""
    from midiforge.corpus_render import RenderConfig, render_corpus
    from midiforge.pipeline.build import build_dataset
    from midiforge.pipeline.config import DatasetConfig

    root = tmp_path_factory.mktemp("lm")
    for styles, n in ((["fiddle"], 12), (["folk", "chorale"], 4)):
        render_corpus(RenderConfig(styles=styles, per_style=n, seconds=30.0, midi_only=True,
                                   out=str(root / f"corpus-{n}")))  # fmt: skip
    cfg = cfgmod.load(
        DatasetConfig,
        None,
        ["--augment.transpose_all_keys=false", "--augment.octave_shift=true"],
        midi=[str(root / "corpus-12" / "midi"), str(root / "corpus-4" / "midi")],
        style_from_folder=True,
        out=str(root / "dataset"),
    )
    build_dataset(cfg)
    return root


@pytest.fixture(scope="module")
def trained(lm_dataset):
    """(registry root, base name, LoRA name, base weights) after pretrain + finetune."""
    from midiforge.lm.command import run_finetune, run_pretrain
    from midiforge.lm.train import _load_base

    models = str(lm_dataset / "models")
    storage = str(lm_dataset / "runs")
    common = {
        "dataset": str(lm_dataset / "dataset"),
        "models_root": models,
        "storage": storage,
        "config": None,
        "seed": 0,
        "workers": None,
        "gpu": False,
    }
    args = _ns(**common, out="base", preset="debug", exclude_style=None, init_from=None)
    assert run_pretrain(args, DEBUG) == 0
    hf_dir, _, _ = _load_base("base", models)
    base_weights = _state(hf_dir)
    args = _ns(**common, out="lora", base="base", style="fiddle")
    assert run_finetune(args, [*DEBUG, "--schedule.seq_len=96", "--schedule.batch_size=4"]) == 0
    return models, storage, base_weights


def _ns(**kw):
    import argparse

    return argparse.Namespace(**kw)


def _state(hf_dir) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(Path(hf_dir) / "model.safetensors"))


def test_pretraining_leaves_the_target_style_out_and_registers_the_model(trained):
    from midiforge import registry

    models, _, _ = trained
    m = registry.Registry(models).manifest("base")
    assert m.kind == "lm"
    assert "fiddle" not in m.metrics["styles"] and {"folk", "chorale"} <= set(m.metrics["styles"])
    assert m.metrics["steps"] == 10 and math.isfinite(m.metrics["best_val_loss"])
    vocab = json.loads((registry.Registry(models).fetch("base") / "vocab.json").read_text())
    assert "fiddle" not in vocab["styles"]


def test_lora_changes_only_adapter_weights(trained):
    """The merged model differs from the base only in the q/v projections (LoRA) and in the
    new style token's embedding row; every other tensor is bit-identical."""
    from midiforge import registry
    from midiforge.lm.vocab import LMVocab

    models, _, base = trained
    folder = registry.Registry(models).fetch("lora")
    merged = _state(folder / "hf")
    vocab = LMVocab.load(folder / "vocab.json")
    fiddle = vocab.style_id("fiddle")
    assert set(merged) == set(base)
    changed = {k for k in base if not np.array_equal(base[k], merged[k])}
    assert changed, "fine-tuning changed nothing"
    for k in changed:
        assert k.endswith(("q_proj.weight", "v_proj.weight", "embed_tokens.weight")), k
    emb = next(k for k in base if k.endswith("embed_tokens.weight"))
    rows = np.flatnonzero(np.any(base[emb] != merged[emb], axis=1))
    assert rows.tolist() == [fiddle]
    assert (folder / "adapter" / "adapter_config.json").is_file()
    metrics = json.loads((folder / "metrics.json").read_text())
    assert 0 < metrics["trainable_share"] < 0.5 and metrics["new_style_token"] is True


@pytest.fixture(scope="module")
def exported(trained):
    from midiforge import registry
    from midiforge.cli import main
    from midiforge.lm.publish import export_registered

    models, _, _ = trained
    info = export_registered("lora", int8=True, models_root=models)
    assert info["int8_bytes"] < info["onnx_bytes"]
    assert info["graph"] == "gqa"  # what "auto" picks for the presets' Llama
    # The base through the CLI and the traced graph, so evaluate and generate below run
    # both graph kinds.
    assert main(["lm", "export", "base", "--graph", "traced", "--models-root", models]) == 0
    folder = registry.Registry(models).fetch("base")
    assert json.loads((folder / "export.json").read_text())["graph"] == "traced"
    return models


@pytest.mark.parametrize(
    ("override", "message"),
    [("--schedule.seq_len=1024", "seq_len 1024 > the model's 512 positions"),
     ("--schedule.batch_size=4096", "fewer than one batch (4096 per worker")],
)  # fmt: skip
def test_finetune_refuses_runs_that_could_only_fail_later(trained, lm_dataset, override, message):
    from midiforge.errors import MidiforgeError
    from midiforge.lm.command import run_finetune

    models, storage, _ = trained
    args = _ns(dataset=str(lm_dataset / "dataset"), models_root=models, storage=storage,
               config=None, seed=0, workers=None, gpu=False, out="never", base="base",
               style="fiddle")  # fmt: skip
    with pytest.raises(MidiforgeError, match=message.replace("(", r"\(")):
        run_finetune(args, [*DEBUG, override])
    from midiforge import registry

    assert "never" not in registry.Registry(models).names()
    assert {"base", "lora"} <= set(registry.Registry(models).names())


def test_rerunning_a_finished_pretraining_trains_no_further(lm_dataset, tmp_path):
    """The same command again (after a failed registry push, say) finds the finished run
    in its storage: it must give the same model, not train past the run's budget."""
    from midiforge import registry
    from midiforge.lm.command import run_pretrain

    models = str(tmp_path / "models")
    args = _ns(dataset=str(lm_dataset / "dataset"), models_root=models,
               storage=str(tmp_path / "runs"), config=None, seed=0, workers=None, gpu=False,
               out="twice", preset="debug", exclude_style=None, init_from=None)  # fmt: skip
    runs = []
    for _ in range(2):
        assert run_pretrain(args, DEBUG) == 0
        folder = registry.Registry(models).fetch("twice")
        metrics = registry.Registry(models).manifest("twice").metrics
        runs.append((_state(folder / "hf"), metrics["steps"], metrics["best_val_loss"]))
    (w1, steps1, val1), (w2, steps2, val2) = runs
    assert steps1 == steps2 == 10
    assert val1 == val2
    assert w1.keys() == w2.keys() and all(np.array_equal(w1[k], w2[k]) for k in w1)
    # A larger budget, though, goes on from where the run stopped (still inside the epoch:
    # the fixture's 63 train windows make 15 whole batches of 4 on the one debug worker).
    assert run_pretrain(args, [*DEBUG, "--schedule.max_steps=12"]) == 0
    metrics = registry.Registry(models).manifest("twice").metrics
    assert metrics["steps"] == 12 and metrics["resumed_from_step"] == 10
    # Without a step limit the one epoch decides: the run, stopped mid-epoch, takes only
    # the batches its epoch has left (each worker's windows in whole batches), validates
    # and checkpoints at the epoch's end, and a re-run then trains no further.
    reg = registry.Registry(models)
    for resumed_from in (12, None):
        assert run_pretrain(args, [*DEBUG, "--schedule.max_steps=0"]) == 0
        metrics = reg.manifest("twice").metrics
        cfg = yaml.safe_load((reg.fetch("twice") / "lm_config.yaml").read_text())
        per_batch = cfg["schedule"]["batch_size"] * cfg["resources"]["num_workers"]
        assert metrics["steps"] == metrics["train_windows"] // per_batch > 12
        assert resumed_from is None or metrics["resumed_from_step"] == resumed_from
    # Other settings under the same name are refused, naming the change: starting a name
    # again resumes its run, which used to go on (or hand back the old model) silently.
    from midiforge.config import ConfigError

    with pytest.raises(ConfigError, match=r"schedule\.lr: 0\.003 then, 0\.01 now"):
        run_pretrain(args, [*DEBUG, "--schedule.lr=0.01"])
    assert reg.manifest("twice").metrics["steps"] == metrics["steps"]


def test_onnx_export_matches_torch(exported):
    import torch

    from midiforge import registry
    from midiforge.lm.model import load_hf
    from midiforge.lm.onnx_lm import OnnxCausalLM

    folder = registry.Registry(exported).fetch("lora")
    net = load_hf(folder / "hf").eval()
    lm = OnnxCausalLM(folder / "model.onnx")
    ids = np.random.default_rng(0).integers(3, lm.vocab_size, size=(1, 40))
    with torch.no_grad():
        ref = net(input_ids=torch.from_numpy(ids)).logits.numpy()
    assert np.abs(lm.logits(ids) - ref).max() < 1e-4


@pytest.mark.parametrize("model", ["rules", "lora"])
def test_generate_gives_exactly_the_bars_asked_and_repeats_per_seed(exported, tmp_path, model):
    from midiforge.cli import main

    outs = []
    for i, (bars, seed) in enumerate(((4, 1), (4, 1), (7, 2))):
        out = tmp_path / f"{i}.mid"
        argv = ["generate", "--model", model, "--style", "fiddle", "--key", "Am", "--bpm", "140",
                "--bars", str(bars), "--seed", str(seed), "--out", str(out),
                "--models-root", exported]  # fmt: skip
        assert main(argv) == 0
        pm = midi_io.load_midi(out.read_bytes())
        bar_s = 4 * 60 / 140
        assert pm.get_end_time() == pytest.approx(bars * bar_s, abs=0.02)
        assert all(n.start < bars * bar_s for i_ in pm.instruments for n in i_.notes)
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]  # same seed, same MIDI
    assert outs[0] != outs[2]


def test_generate_rejects_an_unknown_style_clearly(exported, tmp_path, capsys):
    from midiforge.cli import main

    argv = ["generate", "--model", "lora", "--style", "techno", "--out", str(tmp_path / "x.mid"),
            "--models-root", exported]  # fmt: skip
    assert main(argv) == 2
    assert "techno" in capsys.readouterr().err


def test_perplexity_scores_each_token_once_behind_the_prefix(exported):
    """Generator.perplexity against torch: every token of a piece longer than the training
    length scored once, each window behind the conditioning prefix, which is not scored."""
    import torch

    from midiforge import registry
    from midiforge.lm.generate import Generator
    from midiforge.lm.model import load_hf

    gen = Generator.load("lora", models_root=exported)
    net = load_hf(registry.Registry(exported).fetch("lora") / "hf").eval()
    body = gen.seq_len - 3
    toks = np.random.default_rng(5).integers(4, gen.vocab.base_size, 2 * body + 7).tolist()
    prefix = gen.vocab.prefix("fiddle", "G major")
    seq = [*toks, gen.vocab.eos]
    total, count = 0.0, 0
    for s in range(0, len(seq), body):
        ids = torch.tensor([prefix + seq[s : s + body]])
        with torch.no_grad():
            logp = torch.log_softmax(net(input_ids=ids).logits[0].double(), dim=-1)
        for j in range(len(prefix), ids.shape[1]):  # position j-1 predicts token j
            total -= float(logp[j - 1, ids[0, j]])
            count += 1
    assert count == len(seq)
    ref = math.exp(total / count)
    assert gen.perplexity([toks], "fiddle", ["G major"]) == pytest.approx(ref, rel=1e-4)


def test_evaluate_writes_results_for_every_config(exported, lm_dataset, tmp_path):
    from midiforge.lm.evaluate import evaluate

    res = evaluate(["rules", "base", "lora"], str(lm_dataset / "dataset"), "fiddle", n=6,
                   bars=8, out=str(tmp_path), models_root=exported)  # fmt: skip
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["style"] == "fiddle" and data["n"] == 6
    assert set(data["configs"]) == {"rules", "base", "lora"}
    assert data["configs"]["rules"]["perplexity"] is None
    # Debug models are too briefly trained to order; the value itself is checked against
    # torch in test_perplexity_scores_each_token_once_behind_the_prefix.
    for name in ("base", "lora"):
        assert data["configs"][name]["perplexity"] > 1
    assert data["conditioning"] == {"rules": "fiddle", "base": "folk", "lora": "fiddle"}
    assert {"rules_vs_base", "rules_vs_lora", "base_vs_lora"} <= set(data["wilcoxon"])
    assert (tmp_path / "results.md").is_file() and (tmp_path / "results.png").is_file()
    assert res["configs"]["lora"]["pch_kl"] == data["configs"]["lora"]["pch_kl"]
    assert (data["split"], data["temperature"], data["top_p"]) == ("test", 1.0, 0.95)


def test_evaluate_on_val_with_other_sampling(exported, lm_dataset, tmp_path):
    """--split val scores against the val pieces (for choosing settings without touching
    test); the sampling settings reach the neural models, not the rule-based one."""
    from midiforge.lm.evaluate import evaluate, reference_rows

    ds = str(lm_dataset / "dataset")
    kw = {"n": 4, "bars": 4, "models_root": exported, "split": "val"}
    plain = evaluate(["rules", "lora"], ds, "fiddle", out=str(tmp_path / "a"), **kw)
    cool = evaluate(["rules", "lora"], ds, "fiddle", out=str(tmp_path / "b"), temperature=0.5,
                    top_p=0.8, **kw)  # fmt: skip
    val = reference_rows(ds, "fiddle", "val")
    assert plain["reference_pieces"] == len(val)
    assert {r["piece_id"] for r in val}.isdisjoint(
        r["piece_id"] for r in reference_rows(ds, "fiddle", "test")
    )
    assert "val split" in (tmp_path / "b" / "results.md").read_text()
    assert "temperature 0.5, top-p 0.8" in (tmp_path / "b" / "results.md").read_text()
    assert plain["per_piece"]["rules"] == cool["per_piece"]["rules"]
    assert plain["per_piece"]["lora"] != cool["per_piece"]["lora"]
    # perplexity is the model's on the split's tokens, whatever the sampling
    assert plain["configs"]["lora"]["perplexity"] == cool["configs"]["lora"]["perplexity"]


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def test_pretraining_killed_midway_resumes_from_its_checkpoint(lm_dataset, tmp_path):
    """A run killed after its first checkpoint, started again with the same command, goes on
    from that checkpoint (not from step 0) and finishes at the step budget."""
    storage = tmp_path / "runs"
    cmd = [str(BIN / "midiforge"), "lm", "pretrain", "--dataset", str(lm_dataset / "dataset"),
           "--preset", "debug", "--out", "killed", "--storage", str(storage),
           "--models-root", str(tmp_path / "models"), "--schedule.epochs=1000",
           "--schedule.max_steps=400", "--schedule.eval_every=5"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)  # fmt: skip
    run_dir = storage / "pretrain-killed"
    deadline = time.monotonic() + 240
    while not list(run_dir.glob("checkpoint_*")):
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.5)
    time.sleep(1.0)
    _kill_group(proc)
    again = [*cmd[:-2], "--schedule.max_steps=40", "--schedule.eval_every=5"]
    done = subprocess.run(again, check=False, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    from midiforge import registry

    m = registry.Registry(str(tmp_path / "models")).manifest("killed").metrics
    assert m["steps"] == 40
    assert m["resumed_from_step"] >= 5
