"""Score an existing predictions file (no model): writes scored.jsonl, report.json, report.md and charts.

Each line of ``--predictions`` is a record (DESIGN.md §4) plus ``"prediction"``; ``--train`` (the training
JSONL) gives the majority-answer baseline and the seen/novel template split.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from training.evaluation.records_io import read_jsonl
from training.output_dir import prepare_output_dir

PREDICTION_FIELDS = ("prediction", "answer")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``medvqa score``."""
    parser.add_argument("--predictions", required=True, type=Path, help="JSONL: records with a 'prediction'")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument(
        "--train", type=Path, default=None, help="training JSONL: majority baseline and seen/novel templates"
    )


def run(args: argparse.Namespace) -> int:
    """Score ``args.predictions`` into ``args.out``; prints the headline numbers."""
    from training.evaluation.report import score_records, write_outputs

    records = read_jsonl(args.predictions, required=PREDICTION_FIELDS)
    train = read_jsonl(args.train, required=("answer",)) if args.train else None
    result = score_records(records, train)
    write_outputs(result, prepare_output_dir(args.out, "score"))
    print_summary(result.report, args.out)
    return 0


def print_summary(report: dict, out_dir: Path) -> None:
    """Two or three lines on stdout: the headline accuracies with intervals, warnings, where the files are."""
    parts = []
    for key, label in (("overall", "overall"), ("yes_no", "yes/no"), ("open", "open")):
        m = report[key]
        if m["n"]:
            low, high = m["ci95"]
            parts.append(f"{label} {m['accuracy']:.1%} [{low:.1%}, {high:.1%}] (n={m['n']})")
    base = report["baselines"]["majority_answer"]
    print("; ".join(parts) + f"; majority baseline {base['accuracy']:.1%}")
    for warning in report.get("warnings", []):
        print(f"warning: {warning}")
    print(f"wrote {out_dir}")
