"""Statistics of a scored set: Wilson intervals, the majority-answer baseline, question templates and
mode-collapse diagnostics. Pure Python (no numpy) so that ``medvqa score`` starts fast."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from training.evaluation import synonyms as _table
from training.evaluation.normalize import normalize, normalized_tokens

Z95 = 1.959963984540054  # two-sided 95% normal quantile
CI_METHOD = "Wilson score interval, 95%"

# Mode collapse (see ``diagnostics``): the most common prediction covers at least this share of all answers ...
COLLAPSE_MIN_SHARE = 0.5
# ... and at least this many times the share of the most common reference answer (a model may say "no" to 60%
# of the questions when 60% of the answers are "no"; saying it to 100% of them is collapse).
COLLAPSE_RATIO = 1.5
COLLAPSE_MIN_N = 5  # below this a share means nothing


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for ``correct`` successes out of ``n``; ``(0.0, 1.0)`` when ``n == 0``.

    Chosen over the normal approximation because it stays inside [0, 1] and behaves at 0% / 100% and small n.
    """
    if n <= 0:
        return 0.0, 1.0
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def metric(values: Iterable[bool]) -> dict[str, Any]:
    """M of DESIGN.md §7: ``{"accuracy", "n", "ci95"}``. An empty set gives accuracy 0.0, n 0, ci95 [0, 1]."""
    values = list(values)
    n = len(values)
    correct = sum(1 for v in values if v)
    low, high = wilson_interval(correct, n)
    return {"accuracy": correct / n if n else 0.0, "n": n, "ci95": [round(low, 6), round(high, 6)]}


# --- majority-answer baseline ---------------------------------------------------------------------------------


def majority_answers(records: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """The most frequent normalized answer per answer type (``{"yes_no": "no", "open": "ct"}``).

    Per answer type because the question's form already tells yes/no from open, so a blind guesser would use
    it. Ties go to the alphabetically first answer, to be deterministic.
    """
    counts: dict[str, Counter[str]] = {}
    for record in records:
        counts.setdefault(answer_type(record), Counter())[normalize(str(record["answer"]))] += 1
    return {kind: min(counter.items(), key=lambda kv: (-kv[1], kv[0]))[0] for kind, counter in counts.items()}


def group_key(record: Mapping[str, Any], field: str) -> str:
    """``"<field value>|<answer type>"``: the group a per-question-type / per-modality baseline guesses for."""
    return f"{record.get(field) or 'unknown'}|{answer_type(record)}"


def majority_answers_by(records: Iterable[Mapping[str, Any]], field: str) -> dict[str, str]:
    """The most frequent normalized answer per (``field`` value, answer type), keyed by :func:`group_key`;
    ties to the alphabetically first answer, as in :func:`majority_answers`."""
    counts: dict[str, Counter[str]] = {}
    for record in records:
        counts.setdefault(group_key(record, field), Counter())[normalize(str(record["answer"]))] += 1
    return {key: min(counter.items(), key=lambda kv: (-kv[1], kv[0]))[0] for key, counter in counts.items()}


def answer_type(record: Mapping[str, Any]) -> str:
    """``record["answer_type"]`` when given, else "yes_no" when the normalized answer is yes/no, else "open"."""
    kind = record.get("answer_type")
    if kind:
        return str(kind)
    return "yes_no" if normalize(str(record.get("answer", ""))) in ("yes", "no") else "open"


# --- question templates ---------------------------------------------------------------------------------------

_MASK = "_"
_DIGITS = re.compile(r"^\d+(\.\d+)?$")
_SYNONYM_WORDS = frozenset(word for canon in _table.SYNONYMS for word in canon.split())


# Function words never masked even when some answer contains them ("fracture of the femur").
_FUNCTION_WORDS = frozenset(
    "of in on at to into with without and or nor for from by as is are was were be been this that these those it "
    "its there what which where when how who whom whose why image images picture photo shown show shows seen "
    "visible present does do did can could has have had not no yes".split()
)


def answer_vocabulary(*record_sets: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    """Content words: the normalized tokens of every answer and option in the given record sets, without
    function words (``_FUNCTION_WORDS``, yes/no included)."""
    words: set[str] = set()
    for records in record_sets:
        for record in records:
            words.update(normalized_tokens(str(record.get("answer", ""))))
            for option in record.get("options") or []:
                words.update(normalized_tokens(str(option)))
    return frozenset(words - _FUNCTION_WORDS)


def question_template(record: Mapping[str, Any], content_words: frozenset[str] = frozenset()) -> str:
    """The question with its content words masked, to tell questions of a seen form from novel ones.

    Rule: normalize the question (``normalize.py``), then replace by "_" every token that is a content word
    (``content_words``: ``answer_vocabulary`` of the training and evaluated sets, so that "Is brain shown?" and
    "Is liver shown?" share a template when brain and liver are answers somewhere), a token of the record's own
    answer or options, a number, or a word of a canonical synonym (modality names); runs of "_" become one.
    "Is this a CT image?" and "Is this an MRI scan?" share the template "is this _" ("ct image" and "mri scan"
    are synonyms of "ct" and "mri"); "Which organ is shown?" keeps its words.
    """
    own: set[str] = set(normalized_tokens(str(record.get("answer", ""))))
    for option in record.get("options") or []:
        own.update(normalized_tokens(str(option)))
    own -= {"yes", "no"}  # "is there a lesion" must keep its words when the options are yes/no
    out: list[str] = []
    for tok in normalized_tokens(str(record.get("question", ""))):
        masked = tok in own or tok in content_words or tok in _SYNONYM_WORDS or bool(_DIGITS.match(tok))
        word = _MASK if masked else tok
        if not (word == _MASK and out and out[-1] == _MASK):
            out.append(word)
    return " ".join(out)


# --- mode collapse --------------------------------------------------------------------------------------------


def entropy_bits(counts: Iterable[int]) -> float:
    """Shannon entropy (bits) of a distribution given by counts."""
    counts = [c for c in counts if c > 0]
    total = sum(counts)
    if total == 0:
        return 0.0
    return max(0.0, -sum(c / total * math.log2(c / total) for c in counts))


def diagnostics(predictions: Sequence[str], answers: Sequence[str]) -> dict[str, Any]:
    """Mode-collapse diagnostics of §7 on normalized predictions, plus the same figures for the answers.

    ``mode_collapse`` is True when there are at least ``COLLAPSE_MIN_N`` predictions, the most common prediction
    covers at least ``COLLAPSE_MIN_SHARE`` of them, and that share is at least ``COLLAPSE_RATIO`` times the share
    of the most common reference answer.
    """
    pred_counts = Counter(normalize(p) for p in predictions)
    gold_counts = Counter(normalize(a) for a in answers)
    n = len(predictions)
    top_pred, top_n = pred_counts.most_common(1)[0] if pred_counts else ("", 0)
    top_share = top_n / n if n else 0.0
    gold_share = gold_counts.most_common(1)[0][1] / len(answers) if answers else 0.0
    collapse = (
        n >= COLLAPSE_MIN_N and top_share >= COLLAPSE_MIN_SHARE and top_share >= COLLAPSE_RATIO * gold_share
    )
    return {
        "top_prediction_share": round(top_share, 6),
        "distinct_predictions": len(pred_counts),
        "answer_entropy_bits": round(entropy_bits(pred_counts.values()), 6),
        "mode_collapse": bool(collapse),
        # extras: what the flag was judged against
        "top_prediction": top_pred,
        "reference_top_answer_share": round(gold_share, 6),
        "reference_distinct_answers": len(gold_counts),
        "reference_entropy_bits": round(entropy_bits(gold_counts.values()), 6),
        "rule": (
            f"mode_collapse when n >= {COLLAPSE_MIN_N}, top_prediction_share >= {COLLAPSE_MIN_SHARE} and "
            f"top_prediction_share >= {COLLAPSE_RATIO} x the most common reference answer's share"
        ),
    }


# --- paired comparisons (image-blind ablation, medvqa compare) ----------------------------------------------

PAIRED_CI_METHOD = "Newcombe hybrid score interval for a paired difference (method 10), 95%"
MCNEMAR_METHOD = "exact McNemar test: two-sided binomial test of the discordant pairs at p = 1/2"
BOOTSTRAP_METHOD = "paired percentile bootstrap over questions, 95%"


def mcnemar_exact_p(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value: the discordant pairs (right under A only, under B only) against a fair
    coin, with scipy's exact binomial test. No discordant pair -> 1.0."""
    if a_only + b_only == 0:
        return 1.0
    from scipy.stats import binomtest  # scipy only here: `medvqa score` without comparisons starts fast

    return float(binomtest(a_only, a_only + b_only, 0.5, alternative="two-sided").pvalue)


def newcombe_paired_interval(
    both: int, a_only: int, b_only: int, neither: int, z: float = Z95
) -> tuple[float, float]:
    """95% interval of acc(A) - acc(B) for paired right/wrong outcomes (Newcombe 1998, method 10).

    Built from the Wilson intervals of both accuracies and the correlation of the pairs, so it stays inside
    [-1, 1] and behaves at small n where the Wald interval of the difference does not. ``(0, 0)`` when n == 0.
    """
    n = both + a_only + b_only + neither
    if n == 0:
        return 0.0, 0.0
    p1, p2 = (both + a_only) / n, (both + b_only) / n
    l1, u1 = wilson_interval(both + a_only, n, z)
    l2, u2 = wilson_interval(both + b_only, n, z)
    margins = (both + a_only) * (b_only + neither) * (both + b_only) * (a_only + neither)
    phi = (both * neither - a_only * b_only) / math.sqrt(margins) if margins else 0.0
    delta = p1 - p2
    low = delta - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    high = delta + math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return max(-1.0, low), min(1.0, high)


def paired_difference(
    a: Sequence[bool], b: Sequence[bool], names: tuple[str, str] = ("a", "b")
) -> dict[str, Any]:
    """Accuracy of A and of B on the same questions, A - B with Newcombe's 95% interval, and the exact McNemar
    p-value. ``names`` label the two sides in the keys (``("real", "blind")`` -> ``real``, ``blind_only`` ...).
    """
    if len(a) != len(b):
        raise ValueError(f"paired outcomes of different lengths: {len(a)} and {len(b)}")
    both = sum(1 for x, y in zip(a, b) if x and y)
    a_only = sum(1 for x, y in zip(a, b) if x and not y)
    b_only = sum(1 for x, y in zip(a, b) if y and not x)
    n = len(a)
    low, high = newcombe_paired_interval(both, a_only, b_only, n - both - a_only - b_only)
    first, second = names
    return {
        "n": n,
        first: (both + a_only) / n if n else 0.0,
        second: (both + b_only) / n if n else 0.0,
        "difference": (a_only - b_only) / n if n else 0.0,
        "ci95": [round(low, 6), round(high, 6)],
        f"{first}_only": a_only,
        f"{second}_only": b_only,
        "both": both,
        "mcnemar_p": mcnemar_exact_p(a_only, b_only),  # not rounded: small p-values matter
    }


def bootstrap_difference_interval(
    a: Sequence[bool], b: Sequence[bool], *, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Paired percentile bootstrap 95% interval of acc(A) - acc(B) (scipy.stats.bootstrap, questions resampled
    with their pair of outcomes). Fewer than 2 questions, or identical outcomes everywhere -> the point value."""
    n = len(a)
    point = (sum(map(bool, a)) - sum(map(bool, b))) / n if n else 0.0
    if n < 2 or all(bool(x) == bool(y) for x, y in zip(a, b)):
        return point, point
    import numpy as np
    from scipy.stats import bootstrap

    result = bootstrap(
        (np.asarray(a, dtype=float), np.asarray(b, dtype=float)),
        lambda x, y, axis: x.mean(axis=axis) - y.mean(axis=axis),
        paired=True,
        vectorized=True,
        n_resamples=resamples,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)
