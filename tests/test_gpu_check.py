"""benchmarks/gpu_check.sh --dry-run: every section of the prepared GPU check runs on a CPU at tiny shapes.

No timed assertions: only that each section produced its figures (positive, finite) or says explicitly that the
code it needs is not available.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_dry_run_writes_one_json_with_every_section(tmp_path: Path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(out)],
        cwd=tmp_path,  # the script finds the repository itself
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] is True and report["device"] == "cpu" and report["shape"] == "tiny"
    train = report["train_step"]
    for key in ("ours_samples_per_s", "llava_samples_per_s", "ratio", "mfu"):
        assert _positive(train[key]), key
    assert train["vision_blocks_run"]["ours"] + 1 == train["vision_blocks_run"]["llava"]
    peak = report["memory_peak"]
    assert _positive(peak["predicted_bytes"]) and _positive(peak["measured_bytes"])
    assert abs(peak["error"]) < 0.2  # the planner against the measured CPU peak
    assert _positive(report["generation"]["ratio"]) and report["generation"]["new_tokens"] == 16
    assert report["image_reuse"]["same_answers"] is True
    for section in ("quantized_4bit", "prefix_reuse"):
        result = report[section]
        if result.get("status") == "not available":
            assert result["reason"]  # said explicitly, no figure
        elif section == "quantized_4bit":
            assert 0 < result["ratio"] < 1 and 0 < result["full_depth"]["ratio"] < 1
        else:
            assert _positive(result["speedup"]) and result["same_answers"] is True
    assert "ratio ours/LLaVA" in proc.stdout
