"""report.json and report.md: counts, yield per tier and style, reasons, transcription quality.

Invariant, checked here on every run: accepted + rejected == inputs.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads

from midiforge.pipeline.inputs import _filesystem


def _dataset_counts(out: str) -> list[dict[str, Any]]:
    fs, base = _filesystem(out)
    ds = pads.dataset(f"{base}/dataset", filesystem=fs, format="parquet", partitioning="hive")
    return ds.to_table(columns=["split", "tier", "style", "piece_id"]).to_pylist()


def build_report(cfg, n_inputs: int, meta: pa.Table, seconds: float) -> dict[str, Any]:
    rows = meta.to_pylist()
    accepted = [r for r in rows if r["status"] == "ok"]
    rejected = [r for r in rows if r["status"] == "rejected"]
    if len(accepted) + len(rejected) != n_inputs:
        raise RuntimeError(
            f"conservation broken: {len(accepted)} accepted + {len(rejected)} rejected "
            f"!= {n_inputs} inputs"
        )
    data = _dataset_counts(cfg.out)

    def group(key: str) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for r in rows:
            g = out.setdefault(str(r[key]), {"inputs": 0, "accepted": 0, "rows": 0})
            g["inputs"] += 1
            g["accepted"] += r["status"] == "ok"
        for d in data:
            out.setdefault(str(d[key]), {"inputs": 0, "accepted": 0, "rows": 0})["rows"] += 1
        return dict(sorted(out.items()))

    by_split: dict[str, dict[str, int]] = {}
    for d in data:
        s = by_split.setdefault(d["split"], {"rows": 0, "pieces": 0})
        s["rows"] += 1
    for split, counts in by_split.items():
        counts["pieces"] = len({d["piece_id"] for d in data if d["split"] == split})
    transcription: dict[str, dict[str, float]] = {}
    for style in sorted({r["style"] for r in rows}):
        scored = [r for r in rows if r["style"] == style and not math.isnan(r["ref_f1"])]
        if scored:
            transcription[style] = {
                k: round(sum(r[f"ref_{k}"] for r in scored) / len(scored), 4)
                for k in ("precision", "recall", "f1", "f1_offset")
            }
            transcription[style]["pieces"] = len(scored)
    audio_s = sum(r["audio_seconds"] for r in rows)
    report: dict[str, Any] = {
        "inputs": n_inputs,
        "accepted": len(accepted),
        "rejected": len(rejected),
        "rows": len(data),
        "by_split": dict(sorted(by_split.items())),
        "by_tier": group("tier"),
        "by_style": group("style"),
        "rejects_by_reason": dict(
            Counter(f"{r['stage']}/{r['reason']}" for r in rejected).most_common()
        ),
        "audio_seconds": round(audio_s, 2),
        "elapsed_seconds": round(seconds, 2),
        "models": accepted[0]["models"] if accepted else None,
    }
    if transcription:
        report["transcription"] = transcription
    return report


def markdown(rep: dict[str, Any]) -> str:
    lines = [
        "# Dataset report",
        "",
        f"- inputs: **{rep['inputs']}** — accepted {rep['accepted']}, rejected {rep['rejected']}",
        f"- dataset rows (with augmentation): **{rep['rows']}**",
        # Not a throughput: a resumed run reuses earlier runs' work, counted in the audio.
        f"- audio in the inputs: {rep['audio_seconds']} s; this run took "
        f"{rep['elapsed_seconds']} s",
        "",
        "## Splits",
        "",
        "| split | pieces | rows |",
        "|---|---:|---:|",
    ]
    lines += [f"| {k} | {v['pieces']} | {v['rows']} |" for k, v in rep["by_split"].items()]
    for title, key in (("Yield by tier", "by_tier"), ("Yield by style", "by_style")):
        lines += [
            "",
            f"## {title}",
            "",
            "| | inputs | accepted | yield | rows |",
            "|---|---:|---:|---:|---:|",
        ]
        for k, v in rep[key].items():
            y = f"{v['accepted'] / v['inputs']:.0%}" if v["inputs"] else "-"
            lines.append(f"| {k} | {v['inputs']} | {v['accepted']} | {y} | {v['rows']} |")
    lines += ["", "## Rejects by reason", ""]
    lines += [f"- {k}: {v}" for k, v in rep["rejects_by_reason"].items()] or ["- none"]
    if "transcription" in rep:
        lines += [
            "",
            "## Transcription quality (mir_eval, onset tolerance 50 ms)",
            "",
            "| style | pieces | precision | recall | F1 (onset) | F1 (onset+offset) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for s, m in rep["transcription"].items():
            lines.append(
                f"| {s} | {m['pieces']} | {m['precision']:.3f} | {m['recall']:.3f} | "
                f"{m['f1']:.3f} | {m['f1_offset']:.3f} |"
            )
    return "\n".join(lines) + "\n"
