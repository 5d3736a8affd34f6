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


def yes_no_first(prediction: str, answer: str) -> bool | None:
    """The lenient yes/no rule: the first of the words yes / no in the normalized prediction is the answer.

    ``None`` when the normalized answer is neither "yes" nor "no". "Yes, there is a mass with no calcification"
    is right for "yes" here and wrong under ``yes_no`` (both words occur); neither word at all is wrong.
    """
    gold = normalize(answer)
    if gold not in ("yes", "no"):
        return None
    first = next((tok for tok in normalized_tokens(prediction) if tok in ("yes", "no")), None)
    return first == gold


def contains(prediction: str, answer: str) -> bool:
    """The normalized answer occurs in the normalized prediction as a whole-word phrase.

    Whole words so that "ct" is not found inside "doctor"; an empty answer is never found. It resembles the
    substring test (``gt in pred``) that several medical VQA evaluations use, but it is not LLaVA-Med's open
    accuracy, which picks the most similar answer out of a candidate set (an argmax over candidates).
    """
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
    """Share of the answer's normalized tokens found in the prediction, each answer token matched at most as
    often as it occurs in the prediction (multiset intersection / answer length, so at most 1.0).

    Resembles LLaVA-Med's recall, which differs in two ways: its true positives count a shared word as often as
    it occurs in the *prediction* (so "left left" against "left lung" scores 2/3 there, 1/2 here), and it uses
    its own normalisation without our synonyms. Both empty -> 1.0; an empty answer with a non-empty prediction
    -> 0.0.
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


def _light(text: str) -> str:
    """The only cleaning gold-option matching allows: case and outer spaces."""
    return str(text).strip().casefold()


def gold_indices(options: Sequence[str], answer: str) -> tuple[tuple[int, ...], str | None]:
    """The positions of the right option, and ``None``; or ``()`` and why no option can be the gold one.

    The answer string itself when it is among the options (OmniMedVQA's ``answer_list[i] == gt_answer``;
    duplicates of it are the same text, so every copy counts); otherwise the options equal to it after light
    cleaning only (case and outer spaces: ``"MR  "`` for "mr", never "MRI" for "MR" through synonyms).
    Reasons: ``no_gold_option`` (nothing matches), ``ambiguous_gold_option`` (two different option texts do).
    """
    exact = tuple(i for i, option in enumerate(options) if option == answer)
    if exact:
        return exact, None
    gold = _light(answer)
    matches = tuple(i for i, option in enumerate(options) if _light(option) == gold)
    if not matches:
        return (), "no_gold_option"
    if len({options[i] for i in matches}) > 1:
        return (), "ambiguous_gold_option"
    return matches, None


def gold_option(options: Sequence[str], answer: str) -> str | None:
    """The text of the right option (``gold_indices``), ``None`` when it is missing or ambiguous."""
    indices, _ = gold_indices(options, answer)
    return options[indices[0]] if indices else None


def mc_inputs(record: Record) -> tuple[list[str], str, str]:
    """(options, answer, which) that ``mc_qa_score`` scores: the release's raw option strings and raw answer
    (``options_raw`` / ``answer_raw``, kept by ``medvqa data convert``) when the record has them, as the
    official code does, else the record's cleaned ``options`` and ``answer``; ``which`` is "raw" or "cleaned"."""
    if record.get("options_raw"):
        return mc_options(record), str(record.get("answer_raw") or record["answer"]), "raw"
    return mc_options(record), str(record["answer"]), "cleaned"


def mc_options(record: Record) -> list[str]:
    """The options a multiple-choice rule works on: the release's raw strings (``options_raw``) when the record
    keeps them, else its cleaned ``options``. The mc prompt lists them and eval ranks them by loss."""
    raw = record.get("options_raw")
    return [str(o) for o in raw] if raw else _options(record)


def _options(record: Record) -> list[str]:
    options = record.get("options") or []
    return [str(option) for option in options]


def prefix_choice(record: Record) -> int | None:
    """The model's ``mc_prefix_choice`` (an index into the options eval ranked: ``mc_options``), checked: ``None``
    when absent.

    Raises:
        ValueError: not an integer, or outside ``0 .. len(options) - 1`` (-1 would silently pick the last).
    """
    choice = record.get("mc_prefix_choice")
    if choice is None:
        return None
    n = len(mc_options(record))
    if isinstance(choice, bool) or not isinstance(choice, int) or not 0 <= choice < n:
        raise ValueError(f"mc_prefix_choice must be an option index 0..{n - 1}, got {choice!r}")
    return choice


# --- record-level rules (the registry) ------------------------------------------------------------------------


def _mc_qa_score(record: Record) -> bool | None:
    options, answer, _ = mc_inputs(record)
    if not options:
        return None
    gold, _ = gold_indices(options, answer)
    if not gold:
        return None
    choice = mc_qa_choice(options, str(record["prediction"]))
    return choice is not None and options[choice] == options[gold[0]]


def _mc_qa_unscorable(record: Record) -> str | None:
    options, answer, _ = mc_inputs(record)
    return gold_indices(options, answer)[1] if options else None


def _mc_prefix_score(record: Record) -> bool | None:
    # eval stores the model's choice (index of the lowest mean-loss option among mc_inputs' options, the raw
    # strings when the record keeps them) as "mc_prefix_choice"
    options, answer, _ = mc_inputs(record)
    choice = prefix_choice(record) if options else None
    if choice is None:
        return None
    gold, _ = gold_indices(options, answer)
    if not gold:
        return None
    return options[choice] == options[gold[0]]


def _mc_prefix_unscorable(record: Record) -> str | None:
    options, answer, _ = mc_inputs(record)
    if record.get("mc_prefix_choice") is None or not options:
        return None
    return gold_indices(options, answer)[1]


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
    # why the rule could not score a record it was meant for (no / ambiguous gold option), for the report
    unscorable: Callable[[Record], str | None] | None = None


SCORERS: dict[str, Scorer] = {
    scorer.name: scorer
    for scorer in (
        Scorer(
            "normalized_exact",
            "normalized prediction == normalized answer (lower case; punctuation and extra spaces removed; "
            "articles a/an/the removed unless last (so 'Hepatitis A' and 'A' keep their A); thousands commas "
            "dropped (1,000 = 1000); number words -> digits; synonyms such as MR/MRI, X-ray/radiograph mapped)",
            _text_rule(normalized_exact),
        ),
        Scorer(
            "yes_no",
            "yes/no answers only, strict: exactly one of the words yes/no in the normalized prediction, equal to "
            "the answer (saying both, or neither, is wrong)",
            _text_rule(yes_no),
        ),
        Scorer(
            "yes_no_first",
            "yes/no answers only, lenient: the first of the words yes/no in the normalized prediction equals the "
            "answer ('Yes, there is a mass with no calcification' is right for yes; neither word is wrong)",
            _text_rule(yes_no_first),
        ),
        Scorer(
            "contains",
            "the normalized answer occurs in the normalized prediction as whole words (a substring test; not "
            "LLaVA-Med's open accuracy, which is an argmax over a candidate answer set)",
            _text_rule(contains),
        ),
        Scorer(
            "token_recall",
            f"share of the answer's normalized tokens found in the prediction >= {TOKEN_THRESHOLD}, each matched "
            "at most as often as it occurs in the prediction (LLaVA-Med's recall counts a word as often as the "
            "prediction repeats it; the mean recall is reported too)",
            _thresholded(token_recall),
            lambda record: token_recall(str(record["prediction"]), str(record["answer"])),
        ),
        Scorer(
            "token_f1",
            f"SQuAD token F1 on normalized tokens >= {TOKEN_THRESHOLD} (as on MedGemma's card; the mean F1 is "
            "reported too)",
            _thresholded(token_f1),
            lambda record: token_f1(str(record["prediction"]), str(record["answer"])),
        ),
        Scorer(
            "mc_qa_score",
            "OmniMedVQA question-answering score, on the release's raw option strings and raw answer when the "
            "record keeps them (options_raw / answer_raw): the first option with the strictly highest "
            "difflib.SequenceMatcher ratio to the raw prediction must be the ground-truth option (all ratios 0 "
            "-> wrong); the ground-truth option is the answer string itself, else the one option equal to it up "
            "to case and outer spaces (none or two different ones -> not scorable, counted in not_scorable)",
            _mc_qa_score,
            unscorable=_mc_qa_unscorable,
        ),
        Scorer(
            "mc_prefix_score",
            "OmniMedVQA prefix-based score: the option whose tokens get the lowest mean loss after the "
            "question must be the ground-truth option (needs the model: eval only; records with options only); "
            "the model ranks the options mc_qa_score compares with, the release's raw strings when the record "
            "keeps them, and the ground-truth option is found as for mc_qa_score",
            _mc_prefix_score,
            needs_model=True,
            unscorable=_mc_prefix_unscorable,
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


def unscorable(record: Record) -> dict[str, str]:
    """``{scorer: reason}`` for the rules meant for ``record`` that could not score it (no gold option ...)."""
    out: dict[str, str] = {}
    for name, scorer in SCORERS.items():
        reason = scorer.unscorable(record) if scorer.unscorable is not None else None
        if reason is not None:
            out[name] = reason
    return out


def scores(record: Record) -> dict[str, float]:
    """``{scorer: value}`` for the scorers with a continuous score (token_recall, token_f1)."""
    return {name: float(s.score(record)) for name, s in SCORERS.items() if s.score is not None}
