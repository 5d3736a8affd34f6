"""report.md: the paper's table (overall, yes/no, open, per modality, per question type, per dataset) with n,
Wilson 95% intervals, the majority baseline beside each accuracy and every scorer side by side."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from training.evaluation.report import iter_slices
from training.evaluation.scorers import SCORERS

_SECTIONS = (
    ("summary", "Overall"),
    ("modality", "By modality"),
    ("question type", "By question type"),
    ("dataset", "By dataset (each benchmark with its own closed / open split)"),
)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _ci(m: Mapping[str, Any]) -> str:
    low, high = m["ci95"]
    return f"[{_pct(low)}, {_pct(high)}]" if m["n"] else "—"


def _acc(m: Mapping[str, Any], n_slice: int | None = None) -> str:
    """Accuracy in %, with the scorer's n when it differs from the slice's (a rule applies to fewer rows)."""
    if not m["n"]:
        return "—"
    text = _pct(m["accuracy"])
    return text if n_slice is None or m["n"] == n_slice else f"{text} (n={m['n']})"


def _table(rows: Sequence[tuple[str, Mapping[str, Any]]], scorer_names: Sequence[str]) -> list[str]:
    head = ["", "n", "accuracy %", "95% CI", "majority baseline %", *scorer_names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, m in rows:
        cells = [label, str(m["n"]), _acc(m), _ci(m), _pct(m["majority_baseline"]) if m["n"] else "—"]
        cells += [_acc(m["scorers"][name], m["n"]) for name in scorer_names]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


_BASELINE_LABELS = {
    "majority_answer": "most frequent answer of the answer type",
    "majority_by_question_type": "most frequent answer of the question type (and answer type)",
    "majority_by_modality": "most frequent answer of the image's modality (and answer type): it knows the "
    "modality label, so it is what recognising the modality and nothing else gives; on Modality Recognition "
    "questions it is close to the ceiling, not a blind guess",
}


def _baseline_lines(report: Mapping[str, Any]) -> list[str]:
    """Majority baselines side by side, overall and per question type."""
    baselines = report.get("baselines", {})
    names = [name for name in _BASELINE_LABELS if name in baselines]
    lines = ["## Majority baselines", "", "| | " + " | ".join(f"`{n}` %" for n in names) + " |"]
    lines.append("|---|" + "---|" * len(names))
    lines.append("| overall | " + " | ".join(_acc(baselines[n]) for n in names) + " |")
    for qtype in report.get("by_question_type", {}):
        cells = [_acc(baselines[n].get("by_question_type", {}).get(qtype, {"n": 0})) for n in names]
        lines.append(f"| {qtype} | " + " | ".join(cells) + " |")
    lines += ["", "; ".join(f"`{n}`: {_BASELINE_LABELS[n]}" for n in names) + ".", ""]
    return lines


def _image_blind_lines(section: Mapping[str, Any]) -> list[str]:
    """The image-blind table: real vs blind accuracy and their paired difference, per slice."""
    diff = section["paired_difference"]
    lines = [
        "## Image-blind baseline",
        "",
        f"The same questions answered with the image removed ({section['method']}: {section['description']}). "
        f"Difference: {section['ci_method']}; p: {section['test']}.",
        "",
        "| | n | with image % | image-blind % | difference (points) | 95% CI | McNemar p |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = [("overall", diff["overall"]), ("yes/no", diff["yes_no"]), ("open", diff["open"])]
    rows += [(f"question type: {k}", v) for k, v in diff["by_question_type"].items()]
    rows += [(f"modality: {k}", v) for k, v in diff["by_modality"].items()]
    for label, d in rows:
        if not d["n"]:
            continue
        low, high = d["ci95"]
        lines.append(
            f"| {label} | {d['n']} | {_pct(d['real'])} | {_pct(d['blind'])} | {100 * d['difference']:+.1f} "
            f"| [{100 * low:+.1f}, {100 * high:+.1f}] | {d['mcnemar_p']:.3g} |"
        )
    return [*lines, ""]


def _model_line(model: Mapping[str, Any]) -> str:
    gen = model.get("generation", {})
    revision = f" @ `{model['revision']}`" if model.get("revision") else ""
    return (
        f"Model: `{model.get('id')}`{revision} ({model.get('family')}, {model.get('model_class')}, "
        f"{model.get('dtype')}); prompt `{model.get('prompt')}`"
        + (f", adapter `{model['adapter']}`" if model.get("adapter") else "")
        + f"; greedy, {gen.get('max_new_tokens')} new tokens at most, batch size {gen.get('batch_size')}."
    )


def render_markdown(report: Mapping[str, Any], charts: Sequence[str] = ()) -> str:
    """The report as Markdown; ``charts``: PNG file names (in the same folder) to show."""
    # A scorer that applied to no question at all (mc_prefix_score in `score`) gets no column, but a line below.
    scorer_names = [name for name in SCORERS if report["scorers"][name]["n"]]
    primary = report["primary"]
    lines = [
        "# Evaluation report",
        "",
        f"{report['n']} questions. Headline accuracy: rule `{primary['yes_no']}` for yes/no questions, "
        f"`{primary['open']}` for open ones. Intervals: {report.get('ci_method', 'Wilson score interval, 95%')}.",
        f"Majority-answer baseline: the most frequent answer of each answer type in the "
        f"{report.get('baseline_source', 'evaluated set')} ("
        + ", ".join(f"{k} -> `{v}`" for k, v in sorted(report.get("baseline_answers", {}).items()))
        + "), scored with the same rule.",
        "",
    ]
    if "model" in report:  # eval only: what was run, so that the numbers can be reproduced
        lines += [_model_line(report["model"]), ""]
    for warning in report.get("warnings", []):
        lines.append(f"> **Warning:** {warning}")
    if report.get("warnings"):
        lines.append("")
    lines += [
        "All numbers are percentages; a scorer column shows its own n when it applies to fewer questions.",
        "",
    ]
    rows = list(iter_slices(report))
    for section, title in _SECTIONS:
        section_rows = [(label, m) for sec, label, m in rows if sec == section]
        if not section_rows:
            continue
        lines += [f"## {title}", "", *_table(section_rows, scorer_names), ""]

    lines += [
        "## Every scorer",
        "",
        "| scorer | n | accuracy % | 95% CI | mean score | rule |",
        "|---|---|---|---|---|---|",
    ]
    for name, scorer in SCORERS.items():
        m = report["scorers"][name]
        mean = f"{m['mean']:.3f}" if "mean" in m and m["n"] else ""
        rule = report.get("rules", {}).get(name, scorer.rule)
        if not m["n"]:
            why = "needs the model (`medvqa eval`)" if scorer.needs_model else "applies to no question here"
            rule = f"{rule}. *Not computed: {why}.*"
        lines.append(f"| `{name}` | {m['n']} | {_acc(m)} | {_ci(m)} | {mean} | {rule} |")
    lines.append("")
    for name, reasons in report.get("not_scorable", {}).items():
        counts = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in sorted(reasons.items()))
        lines.append(f"`{name}` could not score {sum(reasons.values())} question(s) meant for it: {counts}.")
    inputs = report.get("mc_qa_inputs")
    if inputs and sum(inputs.values()):
        lines.append(
            f"`mc_qa_score` (and `mc_prefix_score`, where eval ranked the options) ran on the release's raw option "
            f"strings for {inputs['raw']} question(s) and on cleaned options for {inputs['cleaned']} (records "
            "without `options_raw`)."
        )
    lines += ["", *_baseline_lines(report)]
    if "image_blind" in report:
        lines += _image_blind_lines(report["image_blind"])

    lines += ["## Question templates seen in training vs novel", ""]
    if report.get("templates_available"):
        lines += [
            "A template is the question with its content words masked (answer and option words, numbers, "
            "modality names).",
            "",
            "| templates | n | accuracy % | 95% CI |",
            "|---|---|---|---|",
        ]
        for kind in ("seen", "novel"):
            m = report["templates"][kind]
            lines.append(f"| {kind} | {m['n']} | {_acc(m)} | {_ci(m)} |")
    else:
        lines.append("Not computed: give the training file with `--train JSONL`.")
    lines.append("")

    diag = report["diagnostics"]
    lines += [
        "## Prediction diagnostics (mode collapse)",
        "",
        "| | predictions | reference answers |",
        "|---|---|---|",
        f"| share of the most common | {_pct(diag['top_prediction_share'])}% (`{diag.get('top_prediction', '')}`) "
        f"| {_pct(diag.get('reference_top_answer_share', 0.0))}% |",
        f"| distinct | {diag['distinct_predictions']} | {diag.get('reference_distinct_answers', '')} |",
        f"| entropy (bits) | {diag['answer_entropy_bits']:.3f} | {diag.get('reference_entropy_bits', 0.0):.3f} |",
        "",
        f"Mode collapse: **{'yes' if diag['mode_collapse'] else 'no'}** ({diag.get('rule', '')}).",
        "",
    ]
    if "throughput" in report:
        tp = report["throughput"]
        extra = "; ".join(f"{k}: {v}" for k, v in tp.items() if k not in ("questions_per_s", "batch_size"))
        lines += [
            "## Throughput",
            "",
            f"{tp['questions_per_s']:.2f} questions/s at batch size {tp['batch_size']}"
            + (f" ({extra})" if extra else ""),
            "",
        ]
    if charts:
        lines += ["## Charts", ""]
        lines += [f"![{name}]({name})" for name in charts]
        lines.append("")
    return "\n".join(lines)
