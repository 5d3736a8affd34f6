"""A real 2-process DeepSpeed ZeRO-2 run of the tiny ``lora`` stage on CPU over gloo, through ``accelerate launch``."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from training_fixtures import write_colour_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_rank_zero2_lora_run_ends_with_finite_loss_and_identical_weights(tmp_path: Path):
    data = write_colour_dataset(tmp_path / "data", n=32)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "ACCELERATE_USE_CPU": "1",
        "TORCH_EXTENSIONS_DIR": os.environ.get(
            "TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions")
        ),
        "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}",
    }
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--use_deepspeed", "--deepspeed_config_file", str(REPO / "configuration" / "deepspeed" / "zero2.json"),
        "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        str(REPO / "tests" / "deepspeed_probe.py"),
        str(REPO / "configuration" / "recipes" / "tiny_cpu.yaml"), str(data), str(tmp_path),
    ]  # fmt: skip
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    if out.returncode != 0:
        pytest.fail(
            f"accelerate launch failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-6000:]}"
        )
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 for r in ranks)
    for r in ranks:
        assert r["losses"] and all(math.isfinite(x) for x in r["losses"])
    assert ranks[0]["digest"] == ranks[1]["digest"]
    assert ranks[0]["abs_sum"] > 0
    assert (tmp_path / "run" / "lora" / "adapter" / "adapter_model.safetensors").is_file()
