"""The named scoring rules of DESIGN.md §6 and their registry ``SCORERS``.

Every rule is a function of one record (a §4 record plus ``"prediction"``) that returns ``True``/``False``, or
``None`` when the rule does not apply to that record (``yes_no`` on an open question, ``mc_qa_score`` without
options, ``mc_prefix_score`` without the model's choice). Reports name the rule beside every number; no rule is
silently preferred: ``PRIMARY`` says which one the headline accuracy uses for each answer type.
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from training.evaluation.normalize import normalize, normalized_tokens

# A token-overlap score at or above this counts as correct in the per-item flags. The mean score (what the
# LLaVA-Med paper and MedGemma's card publish) is reported beside the thresholded accuracy.
TOKEN_THRESHOLD = 0.5

PRIMARY: dict[str, str] = {"yes_no": "yes_no", "open": "normalized_exact"}

Record = Mapping[str, Any]


# --- string-level rules -------------------------------------------------------------------------------------


def normalized_exact(prediction: str, answer: str) -> bool:
    """The normalized prediction equals the normalized answer (see ``normalize.py``)."""
    return normalize(prediction) == normalize(answer)


def yes_no(prediction: str, answer: str) -> bool | None:
    """Exactly one of the words yes / no occurs in the normalized prediction, and it is the answer.

    ``None`` when the normalized answer is neither "yes" nor "no". A prediction saying both ("yes ... no") or
    neither is wrong: it does not commit to an answer.
    """
    gold = normalize(answer)
    if gold not in ("yes", "no"):
        return None
    tokens = set(normalized_tokens(prediction))
    said = [word for word in ("yes", "no") if word in tokens]
    return said == [gold]


def contains(prediction: str, answer: str) -> bool:
    """The normalized answer occurs in the normalized prediction as a whole-word phrase (LLaVA-Med's "open
    accuracy"). Whole words so that "ct" is not found inside "doctor"; an empty answer is never found."""
    gold = normalized_tokens(answer)
    pred = normalized_tokens(prediction)
    if not gold:
        return False
    return any(pred[i : i + len(gold)] == gold for i in range(len(pred) - len(gold) + 1))


def _overlap(prediction: str, answer: str) -> tuple[int, int, int]:
    """(common tokens counted with multiplicity, prediction length, answer length) on normalized tokens."""
    pred = normalized_tokens(prediction)
    gold = normalized_tokens(answer)
    common = sum((Counter(pred) & Counter(gold)).values())
    return common, len(pred), len(gold)


def token_recall(prediction: str, answer: str) -> float:
    """Share of the answer's normalized tokens found in the prediction (LLaVA-Med paper's recall).

    Both empty -> 1.0; an empty answer with a non-empty prediction -> 0.0.
    """
    common, n_pred, n_gold = _overlap(prediction, answer)
    if n_gold == 0:
        return 1.0 if n_pred == 0 else 0.0
    return common / n_gold


def token_f1(prediction: str, answer: str) -> float:
    """SQuAD-style token F1 on normalized tokens (as on MedGemma's card). Both empty -> 1.0, one empty -> 0.0."""
    common, n_pred, n_gold = _overlap(prediction, answer)
    if n_pred == 0 or n_gold == 0:
        return 1.0 if n_pred == n_gold else 0.0
    if common == 0:
        return 0.0
    precision, recall = common / n_pred, common / n_gold
    return 2 * precision * recall / (precision + recall)


def mc_qa_choice(options: Sequence[str], prediction: str) -> int | None:
    """OmniMedVQA's question-answering rule: the index of the first option with the strictly highest
    ``difflib.SequenceMatcher(None, option, prediction).ratio()`` on the raw strings; ``None`` when every
    ratio is 0 (OmniMedVQA's code then fails on ``answer_list[None]`` and counts the item as wrong)."""
    best_index: int | None = None
    best_ratio = 0.0
    for index, option in enumerate(options):
        ratio = difflib.SequenceMatcher(None, option, prediction).ratio()
        if ratio > best_ratio:  # strictly: on a tie the earlier option stays
            best_index, best_ratio = index, ratio
    return best_index


def gold_option(options: Sequence[str], answer: str) -> str | None:
    """The option that is the right answer: the answer itself when it is one of the options (OmniMedVQA's
    ``gt_answer``); otherwise the first option equal to it after normalization, because the converter may clean
    the answer ("Dermoscopy." -> "Dermoscopy") while keeping the raw options. ``None``: no option matches."""
    if answer in options:
        return answer
    gold = normalize(answer)
    return next((option for option in options if normalize(option) == gold), None)


def _options(record: Record) -> list[str]:
    options = record.get("options") or []
    return [str(option) for option in options]


# --- record-level rules (the registry) ------------------------------------------------------------------------


def _mc_qa_score(record: Record) -> bool | None:
    options = _options(record)
    gold = gold_option(options, str(record["answer"])) if options else None
    if gold is None:
        return None
    choice = mc_qa_choice(options, str(record["prediction"]))
    return choice is not None and options[choice] == gold


def _mc_prefix_score(record: Record) -> bool | None:
    # eval stores the model's choice (index of the lowest mean-loss option) as "mc_prefix_choice"
    choice = record.get("mc_prefix_choice")
    options = _options(record)
    if choice is None or not options:
        return None
    gold = gold_option(options, str(record["answer"]))
    if gold is None:
        return None
    return options[int(choice)] == gold


def _text_rule(fn: Callable[[str, str], bool | None]) -> Callable[[Record], bool | None]:
    return lambda record: fn(str(record["prediction"]), str(record["answer"]))


def _thresholded(fn: Callable[[str, str], float]) -> Callable[[Record], bool | None]:
    return lambda record: fn(str(record["prediction"]), str(record["answer"])) >= TOKEN_THRESHOLD


@dataclass(frozen=True)
class Scorer:
    """A named rule: ``flag(record)`` -> correct / wrong / ``None`` (does not apply); ``score(record)`` -> the
    continuous value behind the flag, for the token-overlap rules; ``rule``: the sentence reports print."""

    name: str
    rule: str
    flag: Callable[[Record], bool | None]
    score: Callable[[Record], float] | None = None
    needs_model: bool = False


SCORERS: dict[str, Scorer] = {
    scorer.name: scorer
    for scorer in (
        Scorer(
            "normalized_exact",
            "normalized prediction == normalized answer (lower case; punctuation, articles and extra spaces "
            "removed; number words -> digits; synonyms such as MR/MRI, X-ray/radiograph mapped)",
            _text_rule(normalized_exact),
        ),
        Scorer(
            "yes_no",
            "yes/no answers only: exactly one of the words yes/no in the normalized prediction, equal to the "
            "answer (saying both, or neither, is wrong)",
            _text_rule(yes_no),
        ),
        Scorer(
            "contains",
            "the normalized answer occurs in the normalized prediction as whole words (LLaVA-Med open accuracy)",
            _text_rule(contains),
        ),
        Scorer(
            "token_recall",
            f"share of answer tokens found in the prediction >= {TOKEN_THRESHOLD} (LLaVA-Med recall; "
            "the mean recall is reported too)",
            _thresholded(token_recall),
            lambda record: token_recall(str(record["prediction"]), str(record["answer"])),
        ),
        Scorer(
            "token_f1",
            f"SQuAD token F1 >= {TOKEN_THRESHOLD} (MedGemma card; the mean F1 is reported too)",
            _thresholded(token_f1),
            lambda record: token_f1(str(record["prediction"]), str(record["answer"])),
        ),
        Scorer(
            "mc_qa_score",
            "OmniMedVQA question-answering score: the first option with the strictly highest "
            "difflib.SequenceMatcher ratio to the raw prediction must be the ground-truth option "
            "(all ratios 0 -> wrong; records with options only)",
            _mc_qa_score,
        ),
        Scorer(
            "mc_prefix_score",
            "OmniMedVQA prefix-based score: the option whose tokens get the lowest mean loss after the "
            "question must be the ground-truth option (needs the model: eval only; records with options only)",
            _mc_prefix_score,
            needs_model=True,
        ),
    )
}


def flags(record: Record) -> dict[str, bool]:
    """``{scorer: correct}`` for every scorer that applies to ``record`` (the ``"correct"`` of scored.jsonl)."""
    out: dict[str, bool] = {}
    for name, scorer in SCORERS.items():
        value = scorer.flag(record)
        if value is not None:
            out[name] = bool(value)
    return out


def scores(record: Record) -> dict[str, float]:
    """``{scorer: value}`` for the scorers with a continuous score (token_recall, token_f1)."""
    return {name: float(s.score(record)) for name, s in SCORERS.items() if s.score is not None}
