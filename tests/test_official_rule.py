"""``mc_qa_score`` on converted records equals OmniMedVQA's official rule computed on the release's raw strings.

A raw release with messy options (the release's typo'd modality names, duplicates, trailing dots, ``x_ray.``,
case variants, "cat") goes through ``medvqa data convert``; every converted record, given a prediction, is
scored by ``mc_qa_score`` and by the hand transcription of the official code (``omnimedvqa_reference``) on the
raw row, item by item.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from omnimedvqa_reference import omni_item, ref_is_correct
from PIL import Image

from training.data.convert import convert_release
from training.evaluation.scorers import flags, unscorable

# Option spellings as they occur in the release, plus the messes convert cleans away.
MESSY_OPTIONS = [
    "CT(Computed Tomography)", "MR (Mag-netic Resonance Imaging)", "MR", "MRI", "x_ray.", "X-ray", "X-Ray",
    "Ultrasound", "Ultrasound.", "ultrasound", "cat", "CT", "Fundus Photography", "Microscopy Images",
    "Dermoscopy.", "Mag-netic Resonance Imaging",
]  # fmt: skip
PREDICTIONS = [
    "magnetic resonance imaging", "MR", "mri", "CT", "ct scan", "x-ray", "X-ray image", "The image is an "
    "ultrasound.", "cat", "", "Ultrasound", "fundus", "microscopy", "Dermoscopy", "MR (Magnetic Resonance)",
    "computed tomography", "radiograph", "a photo of the retina",
]  # fmt: skip
HAND_PICKED = [  # (options, gt_answer, prediction): the cases of issue 12
    (["CT(Computed Tomography)", "MR (Mag-netic Resonance Imaging)", "X-Ray", "Ultrasound"],
     "MR (Mag-netic Resonance Imaging)", "magnetic resonance imaging"),
    (["MR", "x_ray.", "X-ray", "MRI"], "x_ray.", "x-ray"),
    (["MR", "x_ray.", "X-ray", "MRI"], "MRI", "MR"),
    (["cat", "Ultrasound", "MRI", "X-Ray"], "cat", "cat"),
    (["Ultrasound.", "CT", "MRI", "X-Ray"], "Ultrasound.", "ultrasound"),
]  # fmt: skip


def _write_release(root: Path, n_random: int = 240) -> dict[str, tuple[dict, str]]:
    """Write the release; return ``{question_id: (raw row, prediction)}``."""
    rng = random.Random(12)
    items = list(HAND_PICKED)
    for _ in range(n_random):
        options = rng.sample(MESSY_OPTIONS, rng.randint(2, 4))
        if rng.random() < 0.2:  # a duplicated option, as some release files have
            options[-1] = options[0]
        items.append((options, rng.choice(options), rng.choice(PREDICTIONS)))
    rows, truth = [], {}
    for i, (options, gt, prediction) in enumerate(items):
        image = f"Images/Messy/{i % 12}.png"
        if not (root / image).exists():
            (root / image).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (i * 20 % 256, 40, 90)).save(root / image)
        row = {
            "question_id": f"q{i}", "dataset": "Messy", "question_type": "Modality Recognition",
            "modality_type": "MR (Mag-netic Resonance Imaging)", "question": "What modality is used?",
            "gt_answer": gt, "image_path": image,
            **{f"option_{letter}": option for letter, option in zip("ABCD", options)},
        }  # fmt: skip
        rows.append(row)
        truth[row["question_id"]] = (row, prediction)
    qa = root / "QA_information" / "Open-access"
    qa.mkdir(parents=True)
    (qa / "Messy.json").write_text(json.dumps(rows), encoding="utf-8")
    return truth


def test_mc_qa_score_on_converted_records_equals_the_official_rule_on_raw_strings(tmp_path):
    truth = _write_release(tmp_path / "release")
    convert_release(tmp_path / "release", tmp_path / "open", val_ratio=0.2, test_ratio=0.2)
    records = [
        json.loads(line)
        for split in ("train", "val", "test")
        for line in (tmp_path / "open" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert len(records) > 200  # the messes are converted, not sent to review

    mismatches, cleaned_flips, not_scorable = [], 0, 0
    for record in records:
        row, prediction = truth[record["question_id"]]
        scored = {**record, "prediction": prediction}
        official = ref_is_correct({**row, "model_pred": prediction})
        ours = flags(scored).get("mc_qa_score")
        raw_options = [row[k] for k in ("option_A", "option_B", "option_C", "option_D") if k in row]
        assert record["options_raw"] == raw_options and record["answer_raw"] == row["gt_answer"]
        if ours is None:  # never silently: the report counts it with its reason
            not_scorable += 1
            assert unscorable(scored) == {"mc_qa_score": "no_gold_option"}
            assert official is False  # the official code can never count such an item right either
        elif ours is not official:
            mismatches.append((raw_options, row["gt_answer"], prediction, official, ours))
        # the same record scored on the cleaned options, as before issue 12
        cleaned = {k: v for k, v in scored.items() if k not in ("options_raw", "answer_raw")}
        cleaned_flips += flags(cleaned).get("mc_qa_score") is not official
    assert mismatches == []
    # the test means something: convert's cleaning does change the verdict on these items ...
    assert cleaned_flips >= 10
    # ... and every gt_answer of the release is one of its options, so all are scorable
    assert not_scorable == 0
    by_id = {r["question_id"]: r for r in records}
    mr = {**by_id["q0"], "prediction": "magnetic resonance imaging"}
    assert by_id["q0"]["options"] == ["CT", "MRI", "X-Ray", "Ultrasound"]  # what convert makes of them
    assert flags(mr)["mc_qa_score"] is True and ref_is_correct(omni_item(*HAND_PICKED[0])) is True
    assert len(by_id["q1"]["options"]) == 2  # [MR, x_ray., X-ray, MRI] collapses to [MRI, X-Ray]
