"""Compare two or more scored prediction sets on the questions they share: ``compare.md``, ``compare.json`` and
``compare.png``.

``medvqa compare A B [C ...] --out DIR``: each input is a predictions JSONL (records with ``question_id``,
``prediction`` and ``answer``: eval's ``predictions.jsonl`` / ``predictions_image_blind.jsonl``, ``medvqa
score`` input, another model's answers) or an eval folder (its ``predictions.jsonl`` is read). Every input is
scored again with the current rules (``training.evaluation.scorers``; the headline rule of each answer type),
so the sets are judged alike whatever version wrote them. The first input is the reference: for every other
input, per group (overall, yes/no, open, per question type, modality and dataset) the table gives its accuracy
(Wilson 95% interval), the paired difference input - reference with a paired bootstrap 95% interval and the
exact McNemar p-value.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.cli_types import positive_int, random_seed
from training.errors import MedVQAUserError
from training.evaluation import stats
from training.evaluation.records_io import read_jsonl_lines
from training.evaluation.report import primary_flag
from training.evaluation.scorers import PRIMARY, flags

PREDICTION_FIELDS = ("question_id", "prediction", "answer")
GROUPS = {"by_question_type": "question_type", "by_modality": "modality", "by_dataset": "dataset"}
CHART = "compare.png"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``medvqa compare``."""
    parser.add_argument(
        "inputs", nargs="+", type=Path, metavar="PREDICTIONS",
        help="two or more predictions JSONL files or eval folders; the first is the reference",
    )  # fmt: skip
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument(
        "--names", nargs="+", default=None, help="a label per input (default: from the paths)"
    )
    parser.add_argument(
        "--resamples", type=positive_int, default=2000, help="bootstrap resamples (default 2000)"
    )
    parser.add_argument("--seed", type=random_seed, default=0, help="bootstrap seed (default 0)")


@dataclass
class _Input:
    name: str
    path: Path
    records: dict[str, Mapping[str, Any]]  # question_id -> record


def _read(path: Path) -> dict[str, Mapping[str, Any]]:
    if path.is_dir():
        path = path / "predictions.jsonl"
        if not path.is_file():
            raise MedVQAUserError(path.parent, "not an eval folder (no predictions.jsonl)")
    records: dict[str, Mapping[str, Any]] = {}
    for lineno, record in read_jsonl_lines(path, required=PREDICTION_FIELDS):
        qid = record["question_id"]
        if qid in records:
            raise MedVQAUserError(f"{path}:{lineno}", f"question_id {qid!r} appears twice")
        records[qid] = record
    return records


def _names(paths: Sequence[Path], names: Sequence[str] | None) -> list[str]:
    if names is not None:
        if len(names) != len(paths):
            raise MedVQAUserError("--names", f"{len(names)} names for {len(paths)} inputs")
        chosen = list(names)
    else:
        # an eval folder by its name; a file by its folder and stem (eval/predictions_image_blind)
        chosen = [
            p.name if p.is_dir() else f"{p.parent.name}/{p.stem}" if p.parent.name else p.stem for p in paths
        ]
    if len(set(chosen)) != len(chosen):
        raise MedVQAUserError("--names", f"labels must differ, got {', '.join(chosen)}")
    return chosen


def compare(
    paths: Sequence[str | Path], names: Sequence[str] | None = None, *, resamples: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """The comparison dict (``compare.json``) of the prediction sets at ``paths``, the first the reference.

    Raises:
        MedVQAUserError: fewer than two inputs, an unreadable input, a line without question_id / prediction /
            answer, a repeated question_id, no question shared by all inputs, bad names or resamples.
    """
    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise MedVQAUserError("compare", "give at least two prediction files or eval folders")
    if resamples < 100:
        raise MedVQAUserError("--resamples", f"must be at least 100, got {resamples}")
    labels = _names(paths, names)
    inputs = [_Input(name, path, _read(path)) for name, path in zip(labels, paths)]
    shared = [qid for qid in inputs[0].records if all(qid in inp.records for inp in inputs[1:])]
    if not shared:
        raise MedVQAUserError(paths[1], f"shares no question_id with {paths[0]}")
    correct = {
        inp.name: [primary_flag(inp.records[q], flags(inp.records[q])) for q in shared] for inp in inputs
    }
    questions = [inputs[0].records[q] for q in shared]
    reference = inputs[0].name

    def group(indices: Sequence[int]) -> dict[str, Any]:
        out: dict[str, Any] = {"n": len(indices), "accuracy": {}, "differences": {}}
        for name, values in correct.items():
            out["accuracy"][name] = stats.metric(values[i] for i in indices)
        ref = [correct[reference][i] for i in indices]
        for name in labels[1:]:
            this = [correct[name][i] for i in indices]
            diff = stats.paired_difference(this, ref, ("this", "reference"))
            low, high = stats.bootstrap_difference_interval(this, ref, resamples=resamples, seed=seed)
            out["differences"][name] = {
                "vs": reference,
                "difference": diff["difference"],
                "ci95": [round(low, 6), round(high, 6)],
                "mcnemar_p": diff["mcnemar_p"],
                "right_only_this": diff["this_only"],
                "right_only_reference": diff["reference_only"],
            }
        return out

    everyone = list(range(len(shared)))
    groups: dict[str, Any] = {
        "overall": group(everyone),
        "yes_no": group([i for i in everyone if stats.answer_type(questions[i]) == "yes_no"]),
        "open": group([i for i in everyone if stats.answer_type(questions[i]) == "open"]),
    }
    for key, field in GROUPS.items():
        members: dict[str, list[int]] = {}
        for i in everyone:
            members.setdefault(str(questions[i].get(field) or "unknown"), []).append(i)
        groups[key] = {name: group(members[name]) for name in sorted(members)}
    return {
        "inputs": [{"name": i.name, "path": str(i.path), "questions": len(i.records)} for i in inputs],
        "shared_questions": len(shared),
        "reference": reference,
        "primary": dict(PRIMARY),
        "ci_method": stats.CI_METHOD,
        "difference_ci_method": f"{stats.BOOTSTRAP_METHOD}, {resamples} resamples, seed {seed}",
        "test": stats.MCNEMAR_METHOD,
        "groups": groups,
    }


# --- writing ----------------------------------------------------------------------------------------------------


def _rows(result: Mapping[str, Any]):
    groups = result["groups"]
    yield "overall", groups["overall"]
    yield "yes/no", groups["yes_no"]
    yield "open", groups["open"]
    for key, label in (
        ("by_question_type", "question type"),
        ("by_modality", "modality"),
        ("by_dataset", "dataset"),
    ):
        for name, g in groups[key].items():
            yield f"{label}: {name}", g


def render_markdown(result: Mapping[str, Any]) -> str:
    """compare.md: accuracy of every input and each input's paired difference to the reference, per group."""
    names = [i["name"] for i in result["inputs"]]
    others = names[1:]
    head = ["", "n", *[f"{n} %" for n in names]]
    head += [f"{n} - {result['reference']} (points) [95% CI], p" for n in others]
    lines = [
        "# Comparison",
        "",
        f"{result['shared_questions']} questions shared by all inputs ("
        + ", ".join(f"`{i['name']}`: {i['path']}, {i['questions']} questions" for i in result["inputs"])
        + f"). Reference: `{result['reference']}`. Rule: `{result['primary']['yes_no']}` for yes/no questions, "
        f"`{result['primary']['open']}` for open ones. Accuracy intervals: {result['ci_method']}; differences: "
        f"{result['difference_ci_method']}; p: {result['test']}.",
        "",
        f"![accuracy per group]({CHART})",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for label, g in _rows(result):
        if not g["n"]:
            continue
        cells = [label, str(g["n"])]
        cells += [f"{100 * g['accuracy'][n]['accuracy']:.1f}" for n in names]
        for n in others:
            d = g["differences"][n]
            low, high = d["ci95"]
            cells.append(
                f"{100 * d['difference']:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}], p={d['mcnemar_p']:.3g}"
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_chart(result: Mapping[str, Any], path: Path) -> Path:
    """Grouped bars: each input's accuracy (Wilson whiskers) overall, per answer type and per question type."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    rows = [
        (label, g) for label, g in _rows(result) if g["n"] and not label.startswith(("modality", "dataset"))
    ]
    names = [i["name"] for i in result["inputs"]]
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(rows) + 2), 4.4), dpi=100)
    for k, name in enumerate(names):
        metrics = [g["accuracy"][name] for _, g in rows]
        acc = [100 * m["accuracy"] for m in metrics]
        err = [
            [a - 100 * m["ci95"][0] for a, m in zip(acc, metrics)],
            [100 * m["ci95"][1] - a for a, m in zip(acc, metrics)],
        ]
        xs = [x + (k - (len(names) - 1) / 2) * width for x in range(len(rows))]
        ax.bar(xs, acc, width, yerr=err, capsize=3, label=name, ecolor="black")
    ax.set_xticks(range(len(rows)), [f"{label.replace('question type: ', '')}\n(n={g['n']})" for label, g in rows],
                  rotation=20, ha="right", fontsize=8)  # fmt: skip
    ax.set_ylim(0, 125)
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{result['shared_questions']} shared questions; whiskers: Wilson 95%", fontsize=9)
    ax.legend(loc="upper center", fontsize=7, ncols=min(4, len(names)), frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_outputs(result: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """compare.json, compare.md and compare.png in ``out_dir`` (already prepared)."""
    json_path = out_dir / "compare.json"
    json_path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    md_path = out_dir / "compare.md"
    md_path.write_text(render_markdown(result), encoding="utf-8")
    return [json_path, md_path, write_chart(result, out_dir / CHART)]


def run(args: argparse.Namespace) -> int:
    """``medvqa compare``: read and compare (inputs checked before the output folder is touched), write, print."""
    from training.output_dir import prepare_output_dir

    result = compare(args.inputs, args.names, resamples=args.resamples, seed=args.seed)
    out = prepare_output_dir(args.out, "compare")
    write_outputs(result, out)
    overall = result["groups"]["overall"]
    parts = [f"{n} {100 * m['accuracy']:.1f}%" for n, m in overall["accuracy"].items()]
    print(f"{result['shared_questions']} shared questions: " + ", ".join(parts))
    for name, d in overall["differences"].items():
        low, high = d["ci95"]
        print(
            f"{name} - {d['vs']}: {100 * d['difference']:+.1f} points [{100 * low:+.1f}, {100 * high:+.1f}], "
            f"McNemar p = {d['mcnemar_p']:.3g}"
        )
    print(f"wrote {out}")
    return 0
