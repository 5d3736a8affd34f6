"""Scoring a set of predictions and writing its report: the one path shared by ``medvqa score`` and ``eval``.

``score_records`` turns records with a ``"prediction"`` into scored records and the report dict of DESIGN.md §7;
``write_outputs`` writes scored.jsonl, report.json, report.md and the PNG charts.

Report layout (§7 keys, plus extras):
- every slice metric M = ``{"accuracy", "n", "ci95"}`` uses the primary rule of its record's answer type
  (``PRIMARY``: yes_no for yes/no questions, normalized_exact for open ones), with a Wilson 95% interval; extras
  in each slice M: ``majority_baseline`` (the baseline's accuracy on that slice) and ``scorers`` (every rule on
  that slice); ``by_dataset`` entries also carry nested ``yes_no`` / ``open`` (closed/open split per benchmark);
- ``scorers``: each rule over the records it applies to (``mean`` too for token_recall / token_f1);
- ``baselines.majority_answer``: predict the most frequent normalized answer of the question's answer type,
  taken from ``--train`` when given, else from the evaluated set (``baseline_source`` says which); an M
  with the same slices nested inside (``yes_no``, ``open``, ``by_modality``, ..., ``templates``);
  ``baselines.majority_by_question_type`` / ``majority_by_modality``: the same, but the most frequent answer
  of the question's (question type, answer type) / (modality, answer type), falling back to the answer type's
  (the per-modality one knows each image's modality label: a "recognises the modality only" reference, not a
  blind guess; on Modality Recognition questions it nearly is the answer);
- ``benchmark_answer_type``: closed / open by the benchmark's own label (``answer_type_raw``: SLAKE, VQA-RAD
  ``CLOSED`` / ``OPEN``), overall and inside each ``by_dataset`` entry that has it;
- ``not_scorable``: per rule, how many records it was meant for but could not score, by reason
  (``no_gold_option``, ``ambiguous_gold_option``); ``mc_qa_inputs``: how many records mc_qa_score scored on
  the release's raw strings and how many on cleaned options (records without ``options_raw``);
- ``templates``: seen / novel question templates (``stats.question_template``), only with ``--train``;
- ``diagnostics``: mode collapse (``stats.diagnostics``); ``throughput``: eval only.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.evaluation import stats
from training.evaluation.records_io import write_jsonl
from training.evaluation.scorers import (
    PRIMARY,
    SCORERS,
    flags,
    mc_inputs,
    normalized_exact,
    scores,
    unscorable,
    yes_no,
)

UNKNOWN = "unknown"


@dataclass
class ScoreResult:
    """``scored``: the input records each with ``"correct"`` (and ``"scores"``); ``report``: the §7 dict."""

    scored: list[dict[str, Any]]
    report: dict[str, Any]


def primary_flag(record: Mapping[str, Any], correct: Mapping[str, bool]) -> bool:
    """The headline flag: the yes_no rule for yes/no questions, normalized_exact for open ones.

    A question typed yes_no whose answer is not yes/no (the yes_no rule does not apply) falls back to
    normalized_exact.
    """
    if stats.answer_type(record) == "yes_no" and "yes_no" in correct:
        return correct["yes_no"]
    return correct["normalized_exact"]


def _guess_flag(record: Mapping[str, Any], guess: str) -> bool:
    """A baseline's guess scored with the headline rule of the record's answer type."""
    answer = str(record["answer"])
    if stats.answer_type(record) == "yes_no":
        verdict = yes_no(guess, answer)
        if verdict is not None:
            return verdict
    return normalized_exact(guess, answer)


def _baseline_flag(record: Mapping[str, Any], majority: Mapping[str, str]) -> bool:
    kind = stats.answer_type(record)
    guess = majority.get(kind)
    if guess is None:  # the reference set has no question of this type: guess its overall majority
        guess = next(iter(majority.values()), "")
    return _guess_flag(record, guess)


# baseline name -> the record field whose value (with the answer type) picks the majority answer
GROUPED_BASELINES = {"majority_by_question_type": "question_type", "majority_by_modality": "modality"}


def _grouped_guess(
    record: Mapping[str, Any], field: str, grouped: Mapping[str, str], majority: Mapping[str, str]
):
    key = stats.group_key(record, field)
    guess = grouped.get(key)
    if guess is None:  # a group the reference set lacks: the answer type's majority
        guess = majority.get(stats.answer_type(record), next(iter(majority.values()), ""))
    return guess


def score_records(
    records: Sequence[Mapping[str, Any]],
    train_records: Sequence[Mapping[str, Any]] | None = None,
    *,
    throughput: Mapping[str, Any] | None = None,
) -> ScoreResult:
    """Score ``records`` (each with ``"prediction"`` and ``"answer"``) with every rule and build the report.

    Args:
        records: §4 records plus ``"prediction"`` (and ``"mc_prefix_choice"`` when eval computed it).
        train_records: the training file, for the majority baseline and seen/novel templates.
        throughput: ``{"questions_per_s", "batch_size", ...}`` (eval only).
    """
    scored: list[dict[str, Any]] = []
    items: list[_Item] = []
    reference = train_records if train_records else records
    majority = stats.majority_answers(reference)
    grouped = {name: stats.majority_answers_by(reference, field) for name, field in GROUPED_BASELINES.items()}
    not_scorable: dict[str, dict[str, int]] = {}
    mc_qa_inputs = {"raw": 0, "cleaned": 0}
    train_templates = None
    if train_records:
        vocabulary = stats.answer_vocabulary(train_records, records)
        train_templates = {stats.question_template(r, vocabulary) for r in train_records}
    for record in records:
        correct, values = flags(record), scores(record)
        for name, reason in unscorable(record).items():
            bucket = not_scorable.setdefault(name, {})
            bucket[reason] = bucket.get(reason, 0) + 1
        if "mc_qa_score" in correct:
            mc_qa_inputs[mc_inputs(record)[2]] += 1
        scored.append({**record, "correct": correct, "scores": {k: round(v, 6) for k, v in values.items()}})
        template_seen = None
        if train_templates is not None:
            template_seen = stats.question_template(record, vocabulary) in train_templates
        items.append(
            _Item(
                record=record,
                correct=correct,
                scores=values,
                primary=primary_flag(record, correct),
                baseline=_baseline_flag(record, majority),
                template_seen=template_seen,
                grouped_baselines={
                    name: _guess_flag(record, _grouped_guess(record, field, grouped[name], majority))
                    for name, field in GROUPED_BASELINES.items()
                },
            )
        )

    report: dict[str, Any] = {
        "primary": dict(PRIMARY),
        "n": len(items),
        **_slices(items, _slice),
        "scorers": {name: _scorer_metric(items, name) for name in SCORERS},
        # the baseline on every slice too, nested like the report (hub_card reads it that way)
        "baselines": {
            "majority_answer": _slices(items, _baseline_metric, nested=True),
            **{
                name: _slices(items, functools.partial(_grouped_metric, name), nested=True)
                for name in GROUPED_BASELINES
            },
        },
        "diagnostics": stats.diagnostics(
            [str(it.record["prediction"]) for it in items], [str(it.record["answer"]) for it in items]
        ),
    }
    if throughput is not None:
        report["throughput"] = dict(throughput)
    # extras: how to read the numbers
    report["ci_method"] = stats.CI_METHOD
    report["rules"] = {name: scorer.rule for name, scorer in SCORERS.items()}
    report["baseline_source"] = "train" if train_records else "evaluated set"
    report["baseline_answers"] = majority
    report["templates_available"] = train_templates is not None
    report["grouped_baseline_answers"] = grouped
    report["benchmark_answer_type"] = _benchmark_split(items, _slice)
    report["not_scorable"] = not_scorable
    report["mc_qa_inputs"] = mc_qa_inputs
    report["warnings"] = _warnings(report)
    return ScoreResult(scored=scored, report=report)


@dataclass
class _Item:
    record: Mapping[str, Any]
    correct: Mapping[str, bool]
    scores: Mapping[str, float]
    primary: bool
    baseline: bool
    template_seen: bool | None
    grouped_baselines: Mapping[str, bool]


def _scorer_metric(items: Sequence[_Item], name: str) -> dict[str, Any]:
    applicable = [it for it in items if name in it.correct]
    m = stats.metric(it.correct[name] for it in applicable)
    if SCORERS[name].score is not None:
        m["mean"] = (
            round(sum(it.scores[name] for it in applicable) / len(applicable), 6) if applicable else 0.0
        )
    return m


def _slice(items: Sequence[_Item]) -> dict[str, Any]:
    m = stats.metric(it.primary for it in items)
    m["majority_baseline"] = round(sum(it.baseline for it in items) / len(items), 6) if items else 0.0
    m["scorers"] = {name: _scorer_metric(items, name) for name in SCORERS}
    return m


def _baseline_metric(items: Sequence[_Item]) -> dict[str, Any]:
    return stats.metric(it.baseline for it in items)


def _grouped_metric(name: str, items: Sequence[_Item]) -> dict[str, Any]:
    return stats.metric(it.grouped_baselines[name] for it in items)


def _benchmark_split(
    items: Sequence[_Item], fn: Callable[[Sequence[_Item]], dict[str, Any]]
) -> dict[str, Any]:
    """``{"closed": M, "open": M}`` by the benchmark's own answer type (``answer_type_raw``: CLOSED / OPEN, as
    SLAKE and VQA-RAD label their questions); ``{}`` when no record carries one."""
    labelled: dict[str, list[_Item]] = {}
    for it in items:
        raw = str(it.record.get("answer_type_raw") or "").strip().lower()
        if raw in ("closed", "open"):
            labelled.setdefault(raw, []).append(it)
    return {kind: fn(labelled.get(kind, [])) for kind in ("closed", "open")} if labelled else {}


# slice name -> grouping key of a record; by_dataset entries are split again by answer type
_GROUPS: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "by_modality": lambda r: r.get("modality"),
    "by_question_type": lambda r: r.get("question_type"),
    "by_dataset": lambda r: r.get("dataset"),
}


def _slices(
    items: Sequence[_Item], fn: Callable[[Sequence[_Item]], dict[str, Any]], nested: bool = False
) -> dict[str, Any]:
    """overall / yes_no / open / by_* / templates, each computed by ``fn`` on its items.

    ``nested``: put everything but "overall" inside the overall metric (the layout of baselines.majority_answer).
    """

    def by_type(subset: Sequence[_Item], kind: str) -> dict[str, Any]:
        return fn([it for it in subset if stats.answer_type(it.record) == kind])

    out: dict[str, Any] = {
        "overall": fn(items),
        "yes_no": by_type(items, "yes_no"),
        "open": by_type(items, "open"),
    }
    for group, key in _GROUPS.items():
        members: dict[str, list[_Item]] = {}
        for it in items:
            members.setdefault(str(key(it.record) or UNKNOWN), []).append(it)
        out[group] = {}
        for name in sorted(members):
            m = fn(members[name])
            if group == "by_dataset":  # each benchmark with its own closed (yes/no) / open split
                m["yes_no"], m["open"] = by_type(members[name], "yes_no"), by_type(members[name], "open")
                split = _benchmark_split(members[name], fn)
                if split:  # closed / open as the benchmark itself labels them
                    m["benchmark_answer_type"] = split
            out[group][name] = m
    out["templates"] = {
        "seen": fn([it for it in items if it.template_seen is True]),
        "novel": fn([it for it in items if it.template_seen is False]),
    }
    if nested:
        overall = out.pop("overall")
        return {**overall, **out}
    return out


def _warnings(report: Mapping[str, Any]) -> list[str]:
    warnings: list[str] = []
    diag = report["diagnostics"]
    if diag["mode_collapse"]:
        warnings.append(
            f"mode collapse: {diag['top_prediction_share']:.0%} of the predictions are "
            f"{diag['top_prediction']!r} ({diag['distinct_predictions']} distinct predictions, "
            f"{diag['answer_entropy_bits']:.2f} bits; the references' most common answer covers "
            f"{diag['reference_top_answer_share']:.0%})"
        )
    overall, base = report["overall"], report["baselines"]["majority_answer"]
    if overall["n"] and overall["accuracy"] <= base["accuracy"]:
        warnings.append(
            f"accuracy {overall['accuracy']:.1%} is not above the majority-answer baseline {base['accuracy']:.1%}"
        )
    return warnings


# --- writing --------------------------------------------------------------------------------------------------


def write_report(report: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """Write report.json, the PNG charts and report.md (which shows the charts) into ``out_dir``."""
    from training.evaluation.charts import write_charts
    from training.evaluation.markdown import render_markdown

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "report.json"
    json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    charts = write_charts(report, out)
    md_path = out / "report.md"
    md_path.write_text(render_markdown(report, [c.name for c in charts]), encoding="utf-8")
    return [json_path, md_path, *charts]


def write_outputs(result: ScoreResult, out_dir: str | Path, scored_name: str = "scored.jsonl") -> list[Path]:
    """Write the scored records (``scored_name``) and the report files into ``out_dir``."""
    scored_path = Path(out_dir) / scored_name
    write_jsonl(scored_path, result.scored)
    return [scored_path, *write_report(result.report, out_dir)]


def iter_slices(report: Mapping[str, Any]) -> Iterable[tuple[str, str, Mapping[str, Any]]]:
    """(section, label, M) for every row of the paper's table, in report order (used by markdown and charts)."""
    yield "summary", "overall", report["overall"]
    yield "summary", "yes/no (closed)", report["yes_no"]
    yield "summary", "open", report["open"]
    for section, key in (("modality", "by_modality"), ("question type", "by_question_type")):
        for name, m in report[key].items():
            yield section, name, m
    for name, m in report["by_dataset"].items():
        yield "dataset", name, m
        for kind, label in (("yes_no", "closed (yes/no)"), ("open", "open")):
            if kind in m and m[kind]["n"]:
                yield "dataset", f"{name} · {label}", m[kind]
        for kind, own in m.get("benchmark_answer_type", {}).items():
            if own["n"]:
                yield "dataset", f"{name} · {kind.upper()} (benchmark's label)", own
