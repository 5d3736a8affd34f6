"""Multiple choice -> open-ended: the rules that make a question stand without its options.

OmniMedVQA (and PMC-VQA) questions are written for a list of options.  The open-ended question keeps the
original text unless one of these rules applies; they are tried in this order, and a question that needs
its options and matches no sound rewrite goes to ``needs_review`` with the reason given.

Question rules (``rewrite_question``):

Q1  Instructions about the options are removed: "Please choose/select ... (from the options)." sentences,
    "(Choose|Select|Pick) the (correct|best) answer/option ...", and "from/among the following/given/listed/
    provided options/choices", "from the options", "(in the options)".  Anything from an embedded
    "Options:" / "Choices:" list or "(A) ..." / "A. ... B. ..." list to the end is removed too.
Q2  "Which of the following is/are/was/were X?" -> "What is/are/was/were X?".
Q3  "Which of the following <noun phrase> <verb> X?" -> "Which <noun phrase, singular if the verb is singular>
    <verb> X?" ("Which of the following diseases is shown ..." -> "Which disease is shown ...").
Q4  "Which of the following (options/choices/answers) <verb> X?" with no noun before the verb -> "What <verb>
    X?" ("Which of the following best describes the image?" -> "What best describes the image?").  "Which of these ..." is read as "Which of the following ...".
Q5  needs_review ``statement_choice``: the options are statements to judge ("Which of the following
    statements ...", "Which of the following is true / correct / false / incorrect / right / wrong?"): an open
    answer cannot be scored against one of several possible true statements.
Q6  needs_review ``negated_choice``: "Which of the following is NOT / is not / EXCEPT ..." (the answer is
    defined only by the other options).
Q7  needs_review ``refers_to_options``: after Q1-Q4 the question still refers to the options ("option A",
    "the above", "the options", "the following", "which one", "which of them").
Q8  needs_review ``empty_question``: nothing left after Q1.

Answer rules (``resolve_answer``; ``gt_answer`` against the options, compared after :func:`clean_answer`,
case-insensitive):

A1  The answer equal to an option is kept (the option's spelling wins when they differ only in case).
A2  An answer that is only an option letter ("A", "B)", "(c)", "Option D") becomes that option's text.
A3  needs_review ``answer_refers_to_options``: "all of the above", "none of the above", "both", "neither",
    "A and B", "all of these", "none of these".
A4  needs_review ``answer_not_in_options``: options are given and the answer is none of them.
"""

from __future__ import annotations

import re

from training.data.records import clean_answer

_I = re.IGNORECASE

# Q1: instruction sentences and phrases about the options
_INSTRUCTION_SENTENCE = re.compile(
    r"(?:^|(?<=[.?!:]))\s*(?:please\s+)?(?:choose|select|pick|identify)\b[^.?!]*?"
    r"\b(?:answer|option|choice|one)s?\b[^.?!]*[.?!:]?",
    _I,
)
_OPTION_PHRASE = re.compile(
    r",?\s*\(?\b(?:from|among|in)\s+(?:the\s+)?(?:(?:following|given|listed|provided|below|above)\s+)?"
    r"(?:options|choices|answers|alternatives|list)\b\)?(?:\s+(?:below|above|given))?",
    _I,
)
_EMBEDDED_LIST = re.compile(
    r"\s*(?:\b(?:options|choices)\s*:|\(A\)\s|\bA[.:)]\s+\S.*\bB[.:)]\s).*$", _I | re.S
)
# Q2-Q6
_WHICH_FOLLOWING = re.compile(
    r"\bwhich\s+(?:one\s+)?of\s+(?:the\s+following|these|the\s+options|the\s+choices)\b(?:\s+(?:options|choices|answers|alternatives)\b)?",
    _I,
)
_STATEMENTS = re.compile(
    r"\bstatements?\b|\b(?:is|are)\s+(?:most\s+)?(?:true|correct|false|incorrect|right|wrong)\b", _I
)
_NEGATED = re.compile(r"\bnot\b|\bexcept\b|\bleast\s+likely\b", _I)
_COPULA = re.compile(r"^\s*(is|are|was|were)\b(.*)$", _I | re.S)
_VERB = re.compile(
    r"^(?P<np>(?:[\w'-]+\s+){0,4}?[\w'-]+)\s+(?P<verb>is|are|was|were|does|do|did|has|have|can|could|best|"
    r"most|would|should|will|may|might|shows?|describes?|represents?|indicates?|appears?)\b(?P<rest>.*)$",
    _I | re.S,
)
_VERB_FIRST = re.compile(
    r"^(?:best|most|likely|correctly|accurately)?\s*(?:describes?|shows?|represents?|indicates?|explains?|"
    r"depicts?|matches|corresponds?|fits?)\b",
    _I,
)
_SINGULAR_VERBS = {"is", "was", "does", "has", "shows", "describes", "represents", "indicates", "appears"}
_STILL_REFERS = re.compile(
    r"\boption\s+[A-F]\b|\bthe\s+(?:above|below)\b|\b(?:above|below)\s+(?:options|choices|answers)\b|"
    r"\bthe\s+(?:options|choices)\b|\bthe\s+following\b|"
    r"\bwhich\s+one\b|\bwhich\s+of\s+(?:them|these|those)\b",
    _I,
)
# A2/A3
_LETTER = re.compile(r"^\(?(?:option\s+)?([A-Fa-f])\)?[.:)]?$", _I)
_REFERS_ANSWER = re.compile(
    r"^(?:all|none|both|neither)(?:\s+of\s+(?:the\s+)?(?:above|these|them|options))?$|^[A-F]\s*(?:and|&|,)\s*[A-F]$",
    _I,
)


def _singular(word: str) -> str:
    low = word.lower()
    if low.endswith("ies") and len(low) > 4:
        return word[:-3] + ("Y" if word.isupper() else "y")
    if low.endswith(("ses", "xes", "ches", "shes")) and not low.endswith(
        ("diseases", "cases", "bases", "phases")
    ):
        return word[:-2]
    if low.endswith("s") and not low.endswith(("ss", "us", "is", "ys")):
        return word[:-1]
    return word


def _finish(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip(" ,;:")
    text = re.sub(r"\s+([?.,!])", r"\1", text)
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text.endswith(("?", ".")) else text + "?"


def rewrite_question(question: str) -> tuple[str | None, str | None, str | None]:
    """Apply rules Q1-Q8.

    Returns:
        ``(new_question, rule, None)`` when the question stands without options (``rule`` names the rewrite
        applied, None if unchanged), or ``(None, None, reason)`` for needs_review.
    """
    original = re.sub(r"\s+", " ", question).strip()
    q = _EMBEDDED_LIST.sub("", original)
    q = _INSTRUCTION_SENTENCE.sub(" ", q)
    q = _OPTION_PHRASE.sub("", q)
    q = _finish(q)
    if not q or not re.search(r"[A-Za-z]", q):
        return None, None, "empty_question"
    rule = "Q1" if q != _finish(original) else None
    m = _WHICH_FOLLOWING.search(q)
    if m:
        head, tail = q[: m.start()], q[m.end() :]
        if _STATEMENTS.search(q[m.start() :]):
            return None, None, "statement_choice"
        if _NEGATED.search(tail):
            return None, None, "negated_choice"
        cop = _COPULA.match(tail)
        option_noun = re.search(r"(?:options|choices|answers|alternatives)$", m.group(0), _I)
        what, which = ("What", "Which") if not head.strip() else ("what", "which")
        if cop and not option_noun:
            q, rule = _finish(f"{head}{what} {cop.group(1).lower()}{cop.group(2)}"), "Q2"
        elif option_noun or _VERB_FIRST.match(tail.strip()):
            q, rule = _finish(f"{head}{what} {tail.strip()}"), "Q4"
        else:
            vm = _VERB.match(tail.strip())
            if not vm:
                return None, None, "refers_to_options"
            words = vm.group("np").split()
            if vm.group("verb").lower() in _SINGULAR_VERBS:
                words[-1] = _singular(words[-1])
            q = _finish(f"{head}{which} {' '.join(words)} {vm.group('verb')}{vm.group('rest')}")
            rule = "Q3"
    if _STILL_REFERS.search(q):
        return None, None, "refers_to_options"
    return q, rule, None


def resolve_answer(answer: str, options: list[str]) -> tuple[str | None, str | None, str | None]:
    """Apply rules A1-A4 to a cleaned answer and the cleaned options in slot order (A, B, C, D; duplicates kept,
    so that a letter answer points at the right slot).

    Returns ``(answer, rule, None)`` or ``(None, None, reason)`` for needs_review.
    """
    if _REFERS_ANSWER.match(answer):
        return None, None, "answer_refers_to_options"
    if not options:
        return answer, None, None
    low = answer.lower()
    for opt in options:
        if opt.lower() == low:
            return opt, "A1" if opt != answer else None, None
    m = _LETTER.match(answer)
    if m:
        idx = ord(m.group(1).upper()) - ord("A")
        if idx < len(options):
            return options[idx], "A2", None
    return None, None, "answer_not_in_options"


def option_letters_to_text(options: list[str]) -> list[str]:
    """Strip "A:", "A.", "(A)" prefixes of option strings (PMC-VQA writes "A:CT scan")."""
    return [clean_answer(re.sub(r"^\s*\(?[A-Fa-f]\s*[:.)]\s*", "", o)) for o in options]
