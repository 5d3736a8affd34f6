"""tools/vision_probe.py: a linear probe of the vision features, fitted on one JSONL's images, scored on another's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from training_fixtures import write_colour_dataset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

from vision_probe import probe  # noqa: E402


def _relabel(jsonl: Path, label_of) -> Path:
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    for i, row in enumerate(rows):
        row["modality"] = label_of(i, row["modality"])
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return jsonl


def test_probe_sorts_held_out_images_by_what_they_show(tiny_model_dir: Path, tmp_path: Path):
    train = write_colour_dataset(tmp_path / "train", n=24, seed=0)
    test = write_colour_dataset(tmp_path / "test", n=12, seed=1)  # other shades of the same colours
    result = probe(tiny_model_dir, train, test)
    assert result["train_images"] == 24 and result["test_images"] == 12
    assert result["accuracy"] == 1.0, result["per_label"]
    assert sum(n for _, n in result["per_label"].values()) == 12
    assert result["majority_accuracy"] < 1.0

    # A label the training images never had cannot be predicted: counted wrong and named.
    _relabel(test, lambda i, label: "Endoscopy" if i == 0 else label)
    result = probe(tiny_model_dir, train, test)
    assert result["unseen_labels"] == ["Endoscopy"]
    assert result["per_label"]["Endoscopy"] == [0, 1]
    assert result["accuracy"] == 11 / 12


def test_probe_cli_prints_per_label_and_refuses_a_folder_without_a_model(
    tiny_model_dir: Path, tmp_path: Path
):
    train = write_colour_dataset(tmp_path / "train", n=16, seed=0)
    test = write_colour_dataset(tmp_path / "test", n=8, seed=1)
    cmd = [
        sys.executable,
        str(REPO / "tools" / "vision_probe.py"),
        "--train",
        str(train),
        "--test",
        str(test),
    ]
    ok = subprocess.run([*cmd, "--model", str(tiny_model_dir)], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "overall" in ok.stdout and "majority label" in ok.stdout
    bad = subprocess.run([*cmd, "--model", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and str(tmp_path) in bad.stderr
    missing_field = subprocess.run(
        [*cmd, "--model", str(tiny_model_dir), "--field", "no_such_field"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert missing_field.returncode == 2 and "no_such_field" in missing_field.stderr
    assert missing_field.stderr.strip().count("\n") == 0
