"""Small synthetic training data for the training tests: the image's colour tells the modality."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from PIL import Image

COLOURS = {"CT": (220, 30, 30), "MRI": (30, 30, 220), "X-Ray": (30, 200, 30)}


def write_colour_dataset(folder: Path, n: int = 48, seed: int = 0) -> Path:
    """``n`` records in the DESIGN.md §4 schema, images as PNG next to ``train.jsonl``; returns the JSONL."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        modality = list(COLOURS)[i % len(COLOURS)]
        colour = tuple(max(0, min(255, c + rng.randint(-20, 20))) for c in COLOURS[modality])
        Image.new("RGB", (64, 64), colour).save(folder / f"{i}.png")
        lines.append(
            {
                "question_id": str(i),
                "dataset": "synthetic",
                "image": f"{i}.png",
                "question": "What imaging modality is used?",
                "answer": modality,
                "answer_type": "open",
                "modality": modality,
                "modality_raw": modality,
                "question_type": "Modality Recognition",
                "options": list(COLOURS),
                "source": "synthetic",
                "split": "train",
            }
        )
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def deepspeed_launch_env(repo: Path) -> dict[str, str]:
    """Environment for ``accelerate launch`` of tests/deepspeed_probe.py: offline, one thread per rank, the shared
    compiled-op cache, this checkout first on the path."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "TORCH_EXTENSIONS_DIR": os.environ.get(
            "TORCH_EXTENSIONS_DIR", str(repo / ".cache" / "torch_extensions")
        ),
        "PYTHONPATH": f"{repo}{os.pathsep}{repo / 'tests'}",
    }
    env.pop("ACCELERATE_USE_CPU", None)  # accelerate would then run plain DDP instead of DeepSpeed's engine
    return env
