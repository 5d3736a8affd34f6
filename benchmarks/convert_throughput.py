"""Throughput of ``medvqa data convert`` on synthetic OmniMedVQA rows (records only, no images).

    python benchmarks/convert_throughput.py [--rows 100000] [--repeat 3]

Writes a synthetic release (42 datasets like the open-access part, RadImageNet-sized skew, release modality
spellings, 2-4 options, duplicate options, "Which of the following" questions, ~8 % shared images) and runs
``convert_release(..., image_check="none")``: every stage (reading the JSON, cleaning, rewriting, classifying,
grouping and splitting, the audit, writing JSONL / manifest / splits.json) is timed except image I/O, because
the images do not exist.  Reports rows/s of the best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.data.convert import convert_release  # noqa: E402

MODALITIES = ["CT(Computed Tomography)", "MR (Mag-netic Resonance Imaging)", "X-Ray", "Ultrasound",
              "Microscopy Images", "Fundus Photography", "OCT (Optical Coherence Tomography", "Dermoscopy"]  # fmt: skip
ANSWERS = ["Brain", "Liver", "Kidney", "Lung", "Pneumonia", "Normal", "Glioma", "Melanoma", "Cataract", "Nevus",
           "Heart", "Spleen", "Knee", "Spine", "Effusion", "Tumor"]  # fmt: skip
TEMPLATES = [
    ("Anatomy Identification", "Which organ is shown in this {v} image?"),
    ("Anatomy Identification", "Which of the following organs is shown in the {v} image?"),
    ("Disease Diagnosis", "What is the diagnosis of this {v} image?"),
    ("Disease Diagnosis", "Which of the following diseases is most likely in this {v} image?"),
    ("Disease Diagnosis", "Is there {x} in this {v} image?"),
    ("Modality Recognition", "What imaging modality is used in this {v} image?"),
    ("Other Biological Attributes", "Which of the following statements about the {v} image is true?"),
    ("Lesion Grading", "What is the grade of the lesion in this {v} picture?"),
]


def write_synthetic_release(root: Path, n_rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    datasets = ["RadImageNet"] + [f"Dataset{i:02d}" for i in range(41)]
    weights = [60] + [40 / 41] * 41
    per: dict[str, list[dict]] = {d: [] for d in datasets}
    image_id = 0
    for i in range(n_rows):
        d = rng.choices(datasets, weights)[0]
        if rng.random() > 0.08:  # ~8 % of questions reuse the previous image of the dataset
            image_id += 1
        qtype, template = rng.choice(TEMPLATES)
        q = template.format(
            v=rng.choice(["axial", "coronal", "sagittal", "clinical", "scan"]), x=rng.choice(ANSWERS)
        )
        if q.startswith("Is there"):
            options, answer = ["yes", "no"], rng.choice(["Yes.", "no"])
        else:
            k = rng.randint(2, 4)
            options = rng.sample(ANSWERS, k)
            answer = rng.choice(options) + rng.choice(["", ".", ""])
            if rng.random() < 0.05:
                options[-1] = options[0]  # duplicate options, as in the release
        row = {"question_id": f"{d}_{i:07d}", "dataset": d, "question_type": qtype,
               "modality_type" if d != "Dataset07" else "modality": MODALITIES[datasets.index(d) % len(MODALITIES)],
               "question": q, "gt_answer": answer}  # fmt: skip
        for letter, opt in zip("ABCD", options):
            row[f"option_{letter}"] = opt
        row["image_path"] = f"Images/{d}/{image_id:07d}.png"
        per[d].append(row)
    for d, rows in per.items():
        access = "Restricted-access" if d.endswith("9") else "Open-access"
        path = root / "QA_information" / access / f"{d}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "release"
        write_synthetic_release(root, args.rows)
        best = float("inf")
        for r in range(args.repeat):
            t0 = time.perf_counter()
            m = convert_release(root, Path(tmp) / f"out{r}", image_check="none")
            best = min(best, time.perf_counter() - t0)
        assert m["input_rows"] == args.rows == m["converted"] + m["needs_review"] + m["rejected"]
        print(
            f"convert (records only): {args.rows} rows in {best:.2f} s = {args.rows / best:,.0f} rows/s "
            f"(converted {m['converted']}, needs_review {m['needs_review']}, rejected {m['rejected']}; "
            f"reasons {m['reasons']}; splits {m['splits']})"
        )


if __name__ == "__main__":
    main()
