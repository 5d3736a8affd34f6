"""Fixtures for the data tests: a tiny OmniMedVQA release with the release's quirks, and helpers.

Every row of the quirky release is written next to the bucket (and reason) it must end in, so the tests check
the converter against expectations stated here by hand, not computed by the code under test.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

from PIL import Image

MR = "MR (Mag-netic Resonance Imaging)"
CT = "CT(Computed Tomography)"


def _png(path: Path, colour: tuple[int, int, int], size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)


def _row(qid: Any, dataset: str, image: str, question: str, answer: Any, options: list[str], *,
         modality: str = MR, qtype: str = "Anatomy Identification", key: str = "modality_type") -> dict[str, Any]:  # fmt: skip
    row: dict[str, Any] = {"question_id": qid, "dataset": dataset, "question_type": qtype, key: modality,
                           "question": question, "gt_answer": answer}  # fmt: skip
    for letter, opt in zip("ABCD", options):
        row[f"option_{letter}"] = opt
    row["image_path"] = image
    return row


def write_quirky_release(root: Path) -> dict[str, Any]:
    """Write the release; return the expected ``{"buckets": Counter, "reasons": Counter, "rows": [...]}``."""
    files: dict[str, list[tuple[Any, str, str | None]]] = {}  # qa file -> [(row, bucket, reason)]
    colour = iter((i * 37 % 256, i * 91 % 256, i * 53 % 256) for i in range(1, 200))

    def img(dataset: str, name: str) -> str:
        rel = f"Images/{dataset}/{name}"
        _png(root / rel, next(colour))
        return rel

    # Dermoscopy: trailing dots, duplicate options, a rewrite, a statement question, a duplicate id, bad rows.
    d = "DermaSet"
    a, b, c = img(d, "a.png"), img(d, "b.png"), img(d, "c.png")
    (root / f"Images/{d}/b_copy.png").write_bytes((root / b).read_bytes())  # same bytes, other path
    derm = "Dermoscopy"
    files["Open-access/DermaSet.json"] = [
        (_row("d0", d, a, "What imaging modality is used?", "Dermoscopy.", ["Dermoscopy", "CT", "Dermoscopy", "X-Ray"],
              modality=derm, qtype="Modality Recognition"), "converted", None),
        (_row("d1", d, a, "Is there a melanoma in the image?", "Yes.", ["yes", "no"], modality=derm), "converted", None),
        (_row("d2", d, b, "Which of the following diseases is shown in the image?", "Melanoma",
              ["Melanoma", "Nevus", "Keratosis"], modality=derm, qtype="Disease Diagnosis"), "converted", None),
        (_row("d3", d, c, "Which of the following statements is true?", "The lesion is benign",
              ["The lesion is benign", "The lesion is malignant"], modality=derm), "needs_review", "statement_choice"),
        (_row("d3", d, c, "What is the lesion?", "Nevus", ["Nevus", "Melanoma"], modality=derm),
         "rejected", "duplicate_question_id"),
        ("not a row", "rejected", "malformed_row"),
        ({"question_id": "d6", "dataset": d, "modality_type": derm, "question": "What is it?", "image_path": c},
         "rejected", "malformed_row"),
        (_row("d7", d, f"Images/{d}/b_copy.png", "What is the lesion?", "Nevus", ["Nevus", "Melanoma"], modality=derm),
         "converted", None),
        (_row("d8", d, a, "What is the diagnosis?", "A", ["Melanoma", "Nevus"], modality=derm, qtype="Disease Diagnosis"),
         "converted", None),  # letter answer -> option text (A2)
    ]  # fmt: skip
    # X-ray with the `modality` key, an answer x_ray. (A5), an answer that is not an option.
    x = "ChestXray"
    xs = [img(x, f"x{i}.png") for i in range(8)]
    files["Open-access/ChestXray.json"] = [
        (_row("x0", x, xs[0], "Is this image normal?", "no", ["yes", "no"], modality="X-Ray", key="modality"),
         "converted", None),
        (_row("x1", x, xs[1], "What modality is this?", "x_ray.", ["x_ray", "CT", "MRI", "Ultrasound"], modality="X-Ray",
              key="modality", qtype="Modality Recognition"), "converted", None),
        (_row("x2", x, xs[2], "What is the finding?", "Pneumonia", ["Normal", "Effusion"], modality="X-Ray", key="modality"),
         "needs_review", "answer_not_in_options"),
    ] + [
        (_row(f"x{i}", x, xs[i], "Is there pneumonia in the image?", "Yes" if i % 2 else "No", ["Yes", "No"],
              modality="X-Ray", key="modality", qtype="Disease Diagnosis"), "converted", None)
        for i in range(3, 8)
    ]  # fmt: skip
    # MRI with the typo'd modality string, one unknown modality, and a numeric question id.
    m = "BrainMR"
    ms = [img(m, f"m{i}.png") for i in range(6)]
    files["Open-access/BrainMR.json"] = [
        (_row(i, m, ms[i], "Which organ is shown in this image?", "Brain", ["Brain", "Liver", "Knee", "Heart"]),
         "converted", None)
        for i in range(5)
    ] + [(_row(5, m, ms[5], "Which organ is shown?", "Brain", ["Brain", "Lung"], modality="PET scan"),
          "needs_review", "unknown_modality")]  # fmt: skip
    c_ = "HeadCT"
    cs = [img(c_, f"c{i}.png") for i in range(6)]
    files["Open-access/HeadCT.json"] = [
        (_row(f"c{i}", c_, cs[i], "Is there a hemorrhage?", "yes" if i % 2 else "no", ["yes", "no"], modality=CT,
              qtype="Disease Diagnosis"), "converted", None)
        for i in range(6)
    ] + [(_row("c9", c_, cs[0], "Which of the following is NOT visible?", "Liver", ["Liver", "Brain"], modality=CT),
          "needs_review", "negated_choice")]  # fmt: skip
    o = "EyeOCT"
    os_ = [img(o, f"o{i}.png") for i in range(3)]
    files["Open-access/EyeOCT.json"] = [
        (_row(f"o{i}", o, os_[i], "What is the imaging modality?", "OCT", ["OCT", "CT", "MRI"],
              modality="OCT (Optical Coherence Tomography", qtype="Modality Recognition"), "converted", None)
        for i in range(3)
    ]  # fmt: skip
    # Restricted access: images absent, as in the real release, and a path escaping the root.
    h = "HiddenFundus"
    files["Restricted-access/HiddenFundus.json"] = [
        (_row("h0", h, f"Images/{h}/h0.png", "Is this a fundus image?", "yes", ["yes", "no"],
              modality="Fundus Photography"), "rejected", "missing_image"),
        (_row("h1", h, f"Images/{h}/h1.png", "Is this a fundus image?", "no", ["yes", "no"],
              modality="Fundus Photography"), "rejected", "missing_image"),
        (_row("h2", h, "../outside.png", "Is this a fundus image?", "no", ["yes", "no"], modality="Fundus Photography"),
         "rejected", "malformed_row"),
    ]  # fmt: skip
    buckets: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for rel, rows in files.items():
        path = root / "QA_information" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps([r for r, _, _ in rows], indent=1))
        for _, bucket, reason in rows:
            buckets[bucket] += 1
            if reason:
                reasons[reason] += 1
    return {"buckets": buckets, "reasons": reasons, "input_rows": sum(buckets.values())}


def png_bomb(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width x height`` pixels (no image data is needed to trip the guard)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path
