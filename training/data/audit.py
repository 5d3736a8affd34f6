"""Audit of a converted dataset: ``audit.json`` and ``audit.md``.

What it reports (per split and overall):

* counts by modality, question type, answer type and dataset;
* template concentration: the share of questions taken by the most frequent exact questions, and by the most
  frequent *templates*.  A template is a heuristic: the normalised question with its middle replaced by ``X``
  when it has more than five words (first two words + ``X`` + last three: "is there X in the image"), the whole
  normalised question otherwise;
* answer distribution (top answers) and the majority-answer baseline: the most frequent train answer per
  modality and per answer type, and its accuracy on val and test (exact match after normalisation);
* template overlap: the share of test (and val) questions whose exact question / template occurs in train;
* leakage: images (by content hash, or by path when hashes were not computed) present in two splits.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

_NON_WORD = re.compile(r"[^a-z0-9 ]+")


@lru_cache(maxsize=1 << 17)
def normalize_question(q: str) -> str:
    """Lower case, punctuation removed, single spaces."""
    return " ".join(_NON_WORD.sub(" ", q.lower()).split())


@lru_cache(maxsize=1 << 17)
def question_template(q: str) -> str:
    """The heuristic template of a question (see the module docstring)."""
    words = normalize_question(q).split()
    return " ".join(words[:2] + ["X"] + words[-3:]) if len(words) > 5 else " ".join(words)


def _norm_answer(a: str) -> str:
    return normalize_question(a)


def _share(counter: Counter[str], n: int, top: int) -> list[dict[str, Any]]:
    return [{"text": k, "n": v, "share": round(v / n, 4)} for k, v in counter.most_common(top)] if n else []


def build_audit(
    records_by_split: Mapping[str, Sequence[Mapping[str, Any]]],
    image_hash: Mapping[str, str | None] | None = None,
    *,
    top: int = 10,
) -> dict[str, Any]:
    """The audit as a JSON-able dict. ``image_hash`` maps a record's ``image`` to its content hash (or None)."""
    image_hash = image_hash or {}
    splits = {s: list(r) for s, r in records_by_split.items()}
    every = [r for rs in splits.values() for r in rs]
    n = len(every)

    def counts(records: Sequence[Mapping[str, Any]], key: str) -> dict[str, int]:
        return dict(
            sorted(Counter(str(r.get(key, "")) for r in records).items(), key=lambda kv: (-kv[1], kv[0]))
        )

    out: dict[str, Any] = {"n": n, "splits": {s: len(r) for s, r in splits.items()}}
    for key in ("modality", "question_type", "answer_type", "dataset"):
        out[f"by_{key}"] = {"all": counts(every, key), **{s: counts(r, key) for s, r in splits.items()}}

    exact = Counter(normalize_question(r["question"]) for r in every)
    templ = Counter(question_template(r["question"]) for r in every)
    out["templates"] = {
        "distinct_questions": len(exact),
        "distinct_templates": len(templ),
        "top_questions": _share(exact, n, top),
        "top_templates": _share(templ, n, top),
        f"top{top}_question_share": round(sum(v for _, v in exact.most_common(top)) / n, 4) if n else 0.0,
        f"top{top}_template_share": round(sum(v for _, v in templ.most_common(top)) / n, 4) if n else 0.0,
    }

    answers = Counter(_norm_answer(r["answer"]) for r in every)
    by_mod_answers: dict[str, Counter[str]] = defaultdict(Counter)
    for r in every:
        by_mod_answers[r.get("modality", "")][_norm_answer(r["answer"])] += 1
    out["answers"] = {
        "distinct": len(answers),
        "top": _share(answers, n, top),
        "by_modality": {m: _share(c, sum(c.values()), 5) for m, c in sorted(by_mod_answers.items())},
    }
    out["majority_baseline"] = _majority_baseline(splits)
    out["template_overlap"] = _template_overlap(splits)
    out["leakage"] = _leakage(splits, image_hash)
    return out


def _majority_baseline(splits: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    train = splits.get("train", [])
    result: dict[str, Any] = {}
    for key in ("modality", "answer_type"):
        fitted: dict[str, Counter[str]] = defaultdict(Counter)
        for r in train:
            fitted[r.get(key, "")][_norm_answer(r["answer"])] += 1
        per: dict[str, Any] = {}
        for value in sorted({r.get(key, "") for rs in splits.values() for r in rs}):
            majority = fitted[value].most_common(1)[0][0] if fitted.get(value) else None
            entry: dict[str, Any] = {"majority_answer": majority}
            for s in ("val", "test"):
                rs = [r for r in splits.get(s, []) if r.get(key, "") == value]
                hits = sum(_norm_answer(r["answer"]) == majority for r in rs)
                entry[s] = {"accuracy": round(hits / len(rs), 4) if rs else None, "n": len(rs)}
            per[value] = entry
        result[f"by_{key}"] = per
    return result


def _template_overlap(splits: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    train = splits.get("train", [])
    seen_q = {normalize_question(r["question"]) for r in train}
    seen_t = {question_template(r["question"]) for r in train}
    out = {}
    for s in ("val", "test"):
        rs = splits.get(s, [])
        if not rs:
            out[s] = {"n": 0, "question_seen_share": None, "template_seen_share": None}
            continue
        out[s] = {
            "n": len(rs),
            "question_seen_share": round(
                sum(normalize_question(r["question"]) in seen_q for r in rs) / len(rs), 4
            ),
            "template_seen_share": round(
                sum(question_template(r["question"]) in seen_t for r in rs) / len(rs), 4
            ),
        }
    return out


def _leakage(
    splits: Mapping[str, Sequence[Mapping[str, Any]]], image_hash: Mapping[str, str | None]
) -> dict[str, Any]:
    where: dict[str, set[str]] = defaultdict(set)
    for s, rs in splits.items():
        for r in rs:
            where[image_hash.get(r["image"]) or f"path:{r['image']}"].add(s)
    shared = sorted(k for k, v in where.items() if len(v) > 1)
    return {
        "by": "content_hash" if any(image_hash.values()) else "path",
        "images": len(where),
        "shared_between_splits": len(shared),
        "examples": shared[:5],
        "ok": not shared,
    }


def write_audit(out_dir: str | Path, audit: Mapping[str, Any]) -> None:
    """Write ``audit.json`` and the readable ``audit.md`` into ``out_dir``."""
    out = Path(out_dir)
    (out / "audit.json").write_text(json.dumps(audit, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "audit.md").write_text(render_markdown(audit), encoding="utf-8")


def _table(title: str, rows: Mapping[str, Mapping[str, int]], split_names: Sequence[str]) -> list[str]:
    lines = [
        f"### {title}",
        "",
        "| | all | " + " | ".join(split_names) + " |",
        "|---|---:|" + "---:|" * len(split_names),
    ]
    for k, v in rows["all"].items():
        lines.append(
            f"| {k or '(none)'} | {v} | " + " | ".join(str(rows[s].get(k, 0)) for s in split_names) + " |"
        )
    return lines + [""]


def render_markdown(audit: Mapping[str, Any]) -> str:
    """audit.json as a Markdown report."""
    split_names = list(audit["splits"])
    lines = [
        "# Dataset audit",
        "",
        f"{audit['n']} questions: " + ", ".join(f"{s} {n}" for s, n in audit["splits"].items()),
        "",
    ]
    leak = audit["leakage"]
    verdict = (
        "OK: no image is in two splits"
        if leak["ok"]
        else f"LEAK: {leak['shared_between_splits']} images in two splits"
    )
    lines += [f"**Leakage check** (by {leak['by']}, {leak['images']} images): {verdict}", "", "## Counts", ""]
    for key, title in (
        ("modality", "Modality"),
        ("question_type", "Question type"),
        ("answer_type", "Answer type"),
        ("dataset", "Dataset"),
    ):
        lines += _table(title, audit[f"by_{key}"], split_names)
    t = audit["templates"]
    lines += [
        "## Templates",
        "",
        f"{t['distinct_questions']} distinct questions, {t['distinct_templates']} templates.",
        "",
    ]
    lines += ["| most frequent templates | n | share |", "|---|---:|---:|"]
    lines += [f"| {e['text']} | {e['n']} | {e['share']:.1%} |" for e in t["top_templates"]] + [""]
    lines += ["| most frequent questions | n | share |", "|---|---:|---:|"]
    lines += [f"| {e['text']} | {e['n']} | {e['share']:.1%} |" for e in t["top_questions"]] + [""]
    ov = audit["template_overlap"]
    lines += [
        "Seen in train: "
        + "; ".join(
            f"{s}: questions {_pct(v['question_seen_share'])}, templates {_pct(v['template_seen_share'])}"
            for s, v in ov.items()
        ),
        "",
    ]
    lines += ["## Answers", "", "| top answers | n | share |", "|---|---:|---:|"]
    lines += [f"| {e['text']} | {e['n']} | {e['share']:.1%} |" for e in audit["answers"]["top"]] + [""]
    lines += ["## Majority-answer baseline (fitted on train)", ""]
    for key, per in audit["majority_baseline"].items():
        lines += [
            f"### {key.replace('by_', 'by ')}",
            "",
            "| | majority answer | val | test |",
            "|---|---|---:|---:|",
        ]
        for value, e in per.items():
            lines.append(
                f"| {value} | {e['majority_answer']} | {_pct(e['val']['accuracy'])} (n={e['val']['n']}) "
                f"| {_pct(e['test']['accuracy'])} (n={e['test']['n']}) |"
            )
        lines.append("")
    return "\n".join(lines)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"
