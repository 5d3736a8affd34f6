"""Real 2-process DeepSpeed runs of the tiny stages on CPU over gloo, through ``accelerate launch``.

ZeRO-3 on one machine: the ``clip`` -> ``lora`` -> ``joint`` chain (the clip model gathered to be saved; the joint
stage trains the vision tower's last blocks, partitioned like everything else), then a resume from a ZeRO-3 checkpoint that must end where the
uninterrupted run ended.  (tests/test_multinode.py covers two machines, ZeRO-2 and ZeRO-3.)
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from training_fixtures import deepspeed_launch_env, write_colour_dataset

REPO = Path(__file__).resolve().parents[1]


def _launch(data: Path, out: Path, *probe_args: str) -> list[dict]:
    env = deepspeed_launch_env(REPO)
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--use_deepspeed", "--deepspeed_config_file", str(REPO / "configuration" / "deepspeed" / "zero3.json"),
        "--zero3_init_flag", "true",
        "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        str(REPO / "tests" / "deepspeed_probe.py"),
        str(REPO / "configuration" / "recipes" / "tiny_cpu.yaml"), str(data), str(out), *probe_args,
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:
        pytest.fail(
            f"accelerate launch failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
def test_zero3_three_stages_train_vision_blocks_and_resume_to_the_same_weights(tmp_path: Path):
    import torch
    from safetensors.torch import load_file

    data = write_colour_dataset(tmp_path / "data", n=32)
    out = tmp_path / "run1"
    ranks = _launch(data, out, "--stage", "all", "--steps", "2", "--save-steps", "1", "--batch", "2")
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["digest"] == ranks[1]["digest"]
    for r in ranks:
        assert r["losses"] and all(math.isfinite(x) for x in r["losses"])
    finished = load_file(str(out / "rank0.safetensors"))  # the joint stage's trainable weights, gathered

    # clip: the tuned open_clip model and the MedVQA checkpoint with its trunk were written whole.
    clip = out / "run" / "clip"
    clip_weights = load_file(str(clip / "open_clip" / "open_clip_model.safetensors"))
    assert clip_weights and all(v.numel() > 0 for v in clip_weights.values())
    assert (clip / "model" / "model.safetensors").is_file()

    # joint: the adapter holds the whole vision-tower copy (frozen blocks too), full-shaped although partitioned;
    # only the last `vision_trainable_blocks` blocks trained.
    joint = out / "run" / "joint"
    adapter = load_file(str(joint / "adapter" / "adapter_model.safetensors"))
    tower = [k for k in adapter if ".vision_tower." in k]
    assert tower and all(adapter[k].numel() > 0 for k in tower)
    built = {int(k.split(".trunk.blocks.")[1].split(".")[0]) for k in tower if ".trunk.blocks." in k}
    trained = {int(k.split(".trunk.blocks.")[1].split(".")[0]) for k in finished if ".trunk.blocks." in k}
    n = 2  # tiny_cpu.yaml: stages.joint.vision_trainable_blocks
    assert built == set(range(len(built))) and trained == set(range(len(built) - n, len(built)))
    assert (joint / "merged" / "model.safetensors").is_file()

    # Resume the joint stage (`medvqa train --stage joint --resume`): drop its last checkpoint and outputs, relaunch;
    # it continues from checkpoint-1 (ZeRO-3 shards) and must end with the uninterrupted run's weights.
    assert (joint / "checkpoint-1" / "medvqa_complete.json").is_file()
    shutil.rmtree(joint / "checkpoint-2")
    for name in ("adapter", "merged"):
        shutil.rmtree(joint / name)
    for r in (0, 1):
        (out / f"rank{r}.safetensors").unlink()
    resumed = _launch(
        data,
        out,
        "--stage",
        "all",
        "--steps",
        "2",
        "--save-steps",
        "1",
        "--batch",
        "2",
        "--resume",
        "--last-only",
    )
    assert resumed[0]["digest"] == resumed[1]["digest"] and resumed[0]["global_step"] == 2
    again = load_file(str(out / "rank0.safetensors"))
    assert again.keys() == finished.keys()
    for name, value in again.items():
        torch.testing.assert_close(value, finished[name], rtol=1e-5, atol=1e-6, msg=name)
