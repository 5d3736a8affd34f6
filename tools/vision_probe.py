"""Linear probe of a MedVQA model's vision features: is the answer in what the projector receives?

    python tools/vision_probe.py --model demo-out/runs/tiny_cpu/init \\
        --train demo-out/data/open/train.jsonl --test demo-out/data/open/test.jsonl [--field modality]

One example per distinct image, labelled by ``--field`` of its first record.  The features are what the projector
receives (the vision tower's output at ``vision_feature_layer``), averaged over the patch tokens and standardised with
the training images' mean and spread.  A multinomial logistic regression (L2, seeded, full-batch) is fitted on the
training images and scored on the test images, per label, beside the majority label of the training images.

When the probe sorts held-out images that the model's own answers get wrong, the information is in the image features
and the projector and language model are not reading it; this is how the demo's image-blind gap was diagnosed
(README, "Does the model use the image?").  A test image whose label never occurs in training counts as wrong.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from training.errors import MedVQAUserError  # noqa: E402

L2 = 1e-3
STEPS = 500


def image_labels(jsonl: Path, field: str) -> dict[Path, str]:
    """Each distinct image of ``jsonl`` (resolved against its folder) -> ``field`` of its first record."""
    from training.data.records import read_records, resolve_image

    labels: dict[Path, str] = {}
    for record in read_records(jsonl):
        if not isinstance(record.get(field), str):
            raise MedVQAUserError(jsonl, f"record {record.get('question_id')!r} has no text field {field!r}")
        labels.setdefault(resolve_image(record, jsonl), record[field])
    if not labels:
        raise MedVQAUserError(jsonl, "no records")
    return labels


def load(model_dir: Path):
    """The model (eval mode) and processor of a MedVQA folder, without weight-loading progress bars."""
    from transformers.utils import logging as hf_logging

    from modeling_medvqa import MedVQAForConditionalGeneration, MedVQAProcessor

    hf_logging.disable_progress_bar()
    model = MedVQAForConditionalGeneration.from_pretrained(model_dir, use_safetensors=True).eval()
    return model, MedVQAProcessor.from_pretrained(model_dir)


def mean_features(model, processor, images: list[Path], batch_size: int = 16):
    """(N, D): the vision tower's output for each image, averaged over its patch tokens."""
    import torch

    from training.images import load_medical_image

    rows = []
    for start in range(0, len(images), batch_size):
        loaded = [load_medical_image(p, keep_gray=True) for p in images[start : start + batch_size]]
        pixels = processor.image_processor(loaded, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            tokens = model.model.vision_tower(pixels.to(model.dtype)).last_hidden_state  # (B, N, D)
        rows.append(tokens.float().mean(dim=1))
    return torch.cat(rows)


def fit_probe(features, targets, n_classes: int, seed: int = 0):
    """Multinomial logistic regression with an L2 penalty; returns a function features -> predicted class."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    weight = (0.01 * torch.randn(features.shape[1], n_classes, generator=generator)).requires_grad_()
    bias = torch.zeros(n_classes, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=1e-2)
    for _ in range(STEPS):
        loss = torch.nn.functional.cross_entropy(features @ weight + bias, targets) + L2 * weight.pow(2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return lambda x: (x @ weight + bias).argmax(dim=1)


def probe(model_dir: Path, train: Path, test: Path, field: str = "modality") -> dict[str, Any]:
    """Fit on ``train``'s images, score on ``test``'s: per label [correct, n], overall, and the majority label."""
    import torch

    train_labels, test_labels = image_labels(train, field), image_labels(test, field)
    classes = sorted(set(train_labels.values()))
    model, processor = load(model_dir)
    train_x = mean_features(model, processor, list(train_labels))
    test_x = mean_features(model, processor, list(test_labels))
    mean, std = train_x.mean(dim=0), train_x.std(dim=0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    train_y = torch.tensor([classes.index(label) for label in train_labels.values()])
    predict = fit_probe(train_x, train_y, len(classes))
    predicted = [classes[i] for i in predict(test_x).tolist()]
    majority = Counter(train_labels.values()).most_common(1)[0][0]
    per_label: dict[str, list[int]] = {}
    for truth, guess in zip(test_labels.values(), predicted):
        counts = per_label.setdefault(truth, [0, 0])
        counts[0] += guess == truth
        counts[1] += 1
    n = len(test_labels)
    return {
        "field": field,
        "train_images": len(train_labels),
        "test_images": n,
        "train_accuracy": float((predict(train_x) == train_y).float().mean()),
        "per_label": per_label,
        "accuracy": sum(c for c, _ in per_label.values()) / n,
        "majority_label": majority,
        "majority_accuracy": sum(label == majority for label in test_labels.values()) / n,
        "unseen_labels": sorted(set(test_labels.values()) - set(classes)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", required=True, type=Path, help="a MedVQA model folder (init, a stage, merged)"
    )
    parser.add_argument("--train", required=True, type=Path, help="JSONL whose images the probe is fitted on")
    parser.add_argument("--test", required=True, type=Path, help="JSONL whose images it is scored on")
    parser.add_argument("--field", default="modality", help="the record field to predict (default: modality)")
    args = parser.parse_args(argv)
    if not (args.model / "config.json").is_file():
        print(f"{args.model}: not a model folder (no config.json)", file=sys.stderr)
        return 2
    try:
        result = probe(args.model, args.train, args.test, args.field)
    except MedVQAUserError as error:
        print(error, file=sys.stderr)
        return 2
    print(
        f"linear probe of {args.field} on mean vision features: {result['train_images']} training images "
        f"(fit {result['train_accuracy']:.1%}), {result['test_images']} test images"
    )
    for label, (correct, n) in sorted(result["per_label"].items()):
        print(f"  {label:28s} {correct:4d} / {n:<4d} {correct / n:6.1%}")
    print(
        f"  {'overall':28s} {result['accuracy']:.1%}; majority label ({result['majority_label']}) "
        f"{result['majority_accuracy']:.1%}"
    )
    if result["unseen_labels"]:
        print(f"  labels never seen in training (counted wrong): {', '.join(result['unseen_labels'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
