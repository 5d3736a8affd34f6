"""The image-blind baseline of ``medvqa eval --ablate-image blank|shuffle``: does the model use the image?

The same questions are answered a second time with the image replaced, and the report gets ``image_blind``:

* ``blank``: every question sees the same black 224 x 224 image, so the answer can depend on the text only;
* ``shuffle``: each image is replaced by another test image from a different ``source`` (the file it was cut
  from), chosen with a fixed seed, the same replacement for every question about that image; the model then
  sees a real medical image, so a model that merely reacts to "some image" is not favoured.

``image_blind`` has the report's slices (``overall``, ``yes_no``, ``open``, ``by_modality``,
``by_question_type``, ``by_dataset``, ``scorers``) for the blind answers, its ``method``, and
``paired_difference``: real - blind on the same questions with Newcombe's 95% interval and the exact McNemar
p-value (``stats.paired_difference``), overall, per answer type, per question type and per modality.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from training.errors import MedVQAUserError
from training.evaluation import stats
from training.evaluation.records_io import write_jsonl
from training.evaluation.report import ScoreResult, primary_flag, score_records

METHODS = ("blank", "shuffle")
BLANK_SIZE = 224
SIGNIFICANCE = 0.05  # below this McNemar p-value the report says the image helps
DESCRIPTIONS = {
    "blank": f"every image replaced by one black {BLANK_SIZE}x{BLANK_SIZE} image",
    "shuffle": "every image replaced by another evaluated image from a different source (seeded)",
}
BLIND_PREDICTIONS = "predictions_image_blind.jsonl"
BLIND_SCORED = "scored_image_blind.jsonl"


class BlindImages:
    """A drop-in for eval's image loader that returns the ablated image of a record (see the module docstring).

    Args:
        loader: eval's ``ImageLoader`` (``loader(record)`` -> image; ``loader.path(record)`` -> its path).
        records: the evaluated records (``shuffle`` draws replacements among their images).
        method: ``"blank"`` or ``"shuffle"``.
        seed: the seed of the shuffle.

    Raises:
        MedVQAUserError: an unknown method, or ``shuffle`` with images of fewer than two sources.
    """

    def __init__(
        self,
        loader: Callable[[Mapping[str, Any]], Any],
        records: Sequence[Mapping[str, Any]],
        method: str,
        seed: int = 0,
    ) -> None:
        if method not in METHODS:
            raise MedVQAUserError("--ablate-image", f"must be one of {', '.join(METHODS)}, got {method!r}")
        self.loader, self.method = loader, method
        self.replacement: dict[str, Mapping[str, Any]] = {}  # image path -> a record holding its replacement
        if method == "shuffle":
            self.replacement = _shuffle_plan(loader, records, seed)

    def __call__(self, record: Mapping[str, Any]):
        if self.method == "blank":
            from PIL import Image

            return Image.new("RGB", (BLANK_SIZE, BLANK_SIZE))
        return self.loader(self.replacement[str(self.loader.path(record))])

    def group_key(self, record: Mapping[str, Any]) -> str:
        """Records with equal keys see the same image (eval shares one image prefix among their questions)."""
        return "blank" if self.method == "blank" else str(self.loader.path(record))

    def describe(self, record: Mapping[str, Any]) -> str:
        """What the model saw instead of the record's image (written into the blind predictions)."""
        if self.method == "blank":
            return "blank"
        return str(self.replacement[str(self.loader.path(record))]["image"])


def _shuffle_plan(loader, records: Sequence[Mapping[str, Any]], seed: int) -> dict[str, Mapping[str, Any]]:
    by_image: dict[str, Mapping[str, Any]] = {}
    for record in records:
        by_image.setdefault(str(loader.path(record)), record)
    sources = {str(r.get("source") or path) for path, r in by_image.items()}
    if len(sources) < 2:
        raise MedVQAUserError("--ablate-image", "shuffle needs images from at least two sources; use blank")
    rng = random.Random(seed)
    plan: dict[str, Mapping[str, Any]] = {}
    for path in sorted(by_image):
        own = str(by_image[path].get("source") or path)
        others = [p for p in sorted(by_image) if str(by_image[p].get("source") or p) != own]
        plan[path] = by_image[rng.choice(others)]
    return plan


def _flags(result: ScoreResult) -> list[bool]:
    return [primary_flag(record, record["correct"]) for record in result.scored]


def image_blind_section(real: ScoreResult, blind: ScoreResult, method: str) -> dict[str, Any]:
    """``report["image_blind"]``: the blind run's slices, and real - blind per slice (paired, same questions)."""
    real_flags, blind_flags = _flags(real), _flags(blind)
    records = real.scored

    def paired(indices: Sequence[int]) -> dict[str, Any]:
        return stats.paired_difference(
            [real_flags[i] for i in indices], [blind_flags[i] for i in indices], ("real", "blind")
        )

    def grouped(field: str) -> dict[str, Any]:
        groups: dict[str, list[int]] = {}
        for i, record in enumerate(records):
            groups.setdefault(str(record.get(field) or "unknown"), []).append(i)
        return {name: paired(groups[name]) for name in sorted(groups)}

    everyone = range(len(records))
    section = {key: blind.report[key] for key in
               ("overall", "yes_no", "open", "by_modality", "by_question_type", "by_dataset", "scorers")}  # fmt: skip
    section["method"] = method
    section["description"] = DESCRIPTIONS[method]
    section["paired_difference"] = {
        "overall": paired(everyone),
        "yes_no": paired([i for i in everyone if stats.answer_type(records[i]) == "yes_no"]),
        "open": paired([i for i in everyone if stats.answer_type(records[i]) == "open"]),
        "by_question_type": grouped("question_type"),
        "by_modality": grouped("modality"),
    }
    section["ci_method"] = stats.PAIRED_CI_METHOD
    section["test"] = stats.MCNEMAR_METHOD
    return section


def add_image_blind(
    real: ScoreResult,
    blind_predictions: Sequence[Mapping[str, Any]],
    method: str,
    out_dir: str | Path,
    train_records: Sequence[Mapping[str, Any]] | None = None,
) -> ScoreResult:
    """Score the blind answers, write them (``predictions_image_blind.jsonl``, ``scored_image_blind.jsonl``)
    and put ``image_blind`` (and a warning when the image does not help) into ``real.report``."""
    blind = score_records(blind_predictions, train_records)
    out = Path(out_dir)
    write_jsonl(out / BLIND_PREDICTIONS, blind_predictions)
    write_jsonl(out / BLIND_SCORED, blind.scored)
    section = image_blind_section(real, blind, method)
    real.report["image_blind"] = section
    overall = section["paired_difference"]["overall"]
    if overall["n"] and not (overall["difference"] > 0 and overall["mcnemar_p"] < SIGNIFICANCE):
        real.report.setdefault("warnings", []).append(
            f"the image does not measurably help: {overall['real']:.1%} with the image vs {overall['blind']:.1%} "
            f"image-blind ({method}), McNemar p = {overall['mcnemar_p']:.3g}"
        )
    return blind
