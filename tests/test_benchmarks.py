"""The benchmark script keeps working: a one-repeat run on tiny shapes writes every key of the report.

No timed assertions: the figures depend on the machine; only their presence and sanity are checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.run", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_quick_smoke_run_writes_the_report_keys(tmp_path):
    out = tmp_path / "bench.json"
    proc = _run("--quick", "--smoke", "--no-save", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    for section, keys in {
        "train_step": ("ours_samples_per_s", "llava_samples_per_s", "ratio", "mfu"),
        "generation": ("ours_tokens_per_s", "llava_tokens_per_s", "ratio"),
        "image_reuse": ("k", "encode_once_s", "encode_each_s", "speedup"),
        "preprocess": ("ours_images_per_s", "open_clip_images_per_s", "ratio"),
        "planner": ("predicted_bytes", "measured_bytes", "error"),
    }.items():
        for key in keys:
            value = report[section][key]
            assert isinstance(value, (int, float)) and value > 0 or key == "error", (section, key, value)
    assert report["image_reuse"]["k"] == 4 and report["image_reuse"]["same_answers"]
    assert report["generation"]["new_tokens"] == 16
    assert (
        report["train_step"]["vision_blocks_run"]["ours"] + 1
        == report["train_step"]["vision_blocks_run"]["llava"]
    )
    assert report["dicom"]["ours_images_per_s"] > 0
    assert report["planner"]["paper_2x_a100_40gb"]["fits"] is True
    assert {"cpu", "host"} <= set(report["machine"]) and {"torch", "transformers", "trl"} <= set(
        report["versions"]
    )
    # Ratios are printed, not bare times.
    assert "ratio ours/LLaVA" in proc.stdout and "ratio" in proc.stdout


def test_paper_shape_on_cpu_refuses_without_shallow():
    proc = _run("--shape", "paper", "--device", "cpu", "--no-save", "--only", "train")
    assert proc.returncode == 2
    assert "--shallow" in proc.stderr and "Traceback" not in proc.stderr


def test_prefix_reuse_benchmark_runs_and_answers_match(tmp_path):
    """The prefix-reuse / 4-bit benchmark runs end to end on the tiny shape (figures are not asserted: no timings)."""
    import json

    from benchmarks.prefix_reuse import main

    out = tmp_path / "prefix.json"
    args = [
        "--shapes",
        "tiny",
        "--ks",
        "1,2",
        "--repeats",
        "1",
        "--max-new-tokens",
        "2",
        "--quant-shapes",
        "tiny",
    ]
    assert main([*args, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert all(row["identical_answers"] for row in result["prefix_reuse"]["tiny"].values())
    assert result["four_bit"]["tiny"]["answer_produced"]
