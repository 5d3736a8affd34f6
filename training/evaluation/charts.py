"""PNG charts of a report (matplotlib, Agg backend): accuracy bars with Wilson 95% whiskers and the
majority-answer baseline as a marker, per modality / question type / dataset, and every scorer side by side."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from training.evaluation.scorers import SCORERS

CHART_FILES = {
    "by_modality": "accuracy_by_modality.png",
    "by_question_type": "accuracy_by_question_type.png",
    "by_dataset": "accuracy_by_dataset.png",
}
SCORERS_CHART = "accuracy_by_scorer.png"


def _bar_chart(
    path: Path, title: str, labels: Sequence[str], metrics: Sequence[Mapping[str, Any]], baseline: bool
) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    acc = [100 * m["accuracy"] for m in metrics]
    low = [a - 100 * m["ci95"][0] for a, m in zip(acc, metrics)]
    high = [100 * m["ci95"][1] - a for a, m in zip(acc, metrics)]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(labels) + 2), 4.2), dpi=100)
    xs = list(range(len(labels)))
    ax.bar(
        xs,
        acc,
        yerr=[low, high],
        capsize=4,
        color="#4c72b0",
        ecolor="black",
        label="accuracy (95% Wilson CI)",
    )
    if baseline:
        # a line across each bar, drawn above the whiskers so it stays visible where they overlap
        base = [100 * m["majority_baseline"] for m in metrics]
        ax.hlines(base, [x - 0.4 for x in xs], [x + 0.4 for x in xs], colors="#dd8452", linewidths=2.5, zorder=4,
                  label="majority-answer baseline")  # fmt: skip
    rotate = 30 if len(labels) > 4 or max(len(str(label)) for label in labels) > 10 else 0
    sep = " " if rotate else "\n"
    ticks = [f"{label}{sep}(n={m['n']})" for label, m in zip(labels, metrics)]
    ax.set_xticks(xs, ticks, rotation=rotate, ha="right" if rotate else "center")
    ax.set_ylim(0, 125)  # head room for the legend
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper center", fontsize=7, ncols=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_charts(report: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """Write the charts into ``out_dir``; returns their paths. Slices with n = 0 are left out of a chart."""
    out = Path(out_dir)
    paths: list[Path] = []
    primary = report["primary"]
    rule = f"primary rule ({primary['yes_no']} / {primary['open']})"
    for key, filename in CHART_FILES.items():
        groups = {name: m for name, m in report[key].items() if m["n"]}
        if not groups:
            continue
        title = f"Accuracy {key.replace('by_', 'by ').replace('_', ' ')}\n{rule}"
        paths.append(_bar_chart(out / filename, title, list(groups), list(groups.values()), baseline=True))
    scorers = {name: report["scorers"][name] for name in SCORERS if report["scorers"][name]["n"]}
    if scorers:
        paths.append(
            _bar_chart(
                out / SCORERS_CHART, "Accuracy by scoring rule", list(scorers), list(scorers.values()), False
            )
        )
    return paths
