"""Answer normalization shared by every text scorer (DESIGN.md §6), driven by the table in ``synonyms.py``.

Steps, in order:
1. Unicode NFKC, lower case.
2. Apostrophes are deleted ("crohn's" -> "crohns"), and so is a thousands comma ("1,000" -> "1000": a comma
   between a digit and exactly three digits); every other non-alphanumeric character (punctuation, hyphen,
   underscore, brackets) becomes a space, except a dot between two digits ("2.5" stays).
3. Split on whitespace (this also collapses extra spaces); drop the articles a / an / the, except the last
   token: an article stands before a word, so a final "a" is content ("Hepatitis A", "vitamin a", an answer
   "A" alone) and an empty prediction never equals the answer "A". (A mid-text letter, "vitamin a
   deficiency", is still dropped: lower-cased text cannot tell it from an article.)
4. Number words become digits: "three" -> "3", "twenty one" -> "21".
5. Synonym phrases become their canonical form, longest phrase first ("magnetic resonance imaging" -> "mri",
   "x ray" -> "xray"); the same canonical form twice in a row is kept once, so the OmniMedVQA spelling
   "MR (Magnetic Resonance Imaging)" becomes "mri".

``normalize`` is idempotent: normalizing a normalized string changes nothing (a test checks it).
"""

from __future__ import annotations

import functools
import re
import unicodedata

from training.evaluation import synonyms as _table

_DECIMAL_DOT = re.compile(r"(?<=\d)\.(?=\d)")
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_NON_WORD = re.compile(r"[\W_]+")
_ARTICLES = frozenset(_table.ARTICLES)


def _basic_tokens(text: str) -> list[str]:
    """Steps 1-4: the normalization that the synonym table's own variants go through."""
    text = unicodedata.normalize("NFKC", str(text)).lower()
    text = text.replace("'", "").replace("\u2019", "")
    text = _THOUSANDS_COMMA.sub("", text)
    # Protect decimal dots from the punctuation pass by splitting around them, then rejoin.
    parts = _DECIMAL_DOT.split(text)
    cleaned = ".".join(_NON_WORD.sub(" ", part) for part in parts)
    words = cleaned.split()
    # an article is dropped only when a word follows it (see step 3 of the module docstring)
    tokens = [tok for i, tok in enumerate(words) if tok not in _ARTICLES or i == len(words) - 1]
    return _numbers_to_digits(tokens)


def _numbers_to_digits(tokens: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok in _table.TENS_WORDS:
            value = _table.TENS_WORDS[tok]
            nxt = tokens[i + 1] if i + 1 < len(tokens) else None
            if nxt is not None and 1 <= _table.NUMBER_WORDS.get(nxt, 0) <= 9:
                out.append(str(value + _table.NUMBER_WORDS[nxt]))
                i += 2
                continue
            out.append(str(value))
        elif tok in _table.NUMBER_WORDS:
            out.append(str(_table.NUMBER_WORDS[tok]))
        else:
            out.append(tok)
        i += 1
    return out


@functools.cache
def _synonym_index() -> tuple[dict[tuple[str, ...], tuple[str, ...]], int]:
    """Variant token tuple -> canonical token tuple, and the longest variant length (for the scan)."""
    index: dict[tuple[str, ...], tuple[str, ...]] = {}
    for canonical, variants in _table.SYNONYMS.items():
        canon = tuple(canonical.split())
        if list(canon) != _basic_tokens(canonical):
            raise ValueError(f"synonyms.py: canonical form {canonical!r} is not normalized")
        for variant in [canonical, *variants]:
            key = tuple(_basic_tokens(variant))
            if key in index and index[key] != canon:
                raise ValueError(f"synonyms.py: {variant!r} maps to both {index[key]} and {canon}")
            index[key] = canon
    return index, max(len(key) for key in index)


def normalized_tokens(text: str | None) -> list[str]:
    """The normalized tokens of ``text`` (steps 1-5 of the module docstring); ``None`` gives ``[]``."""
    if text is None:
        return []
    tokens = _basic_tokens(text)
    index, longest = _synonym_index()
    out: list[str] = []
    last_canonical: tuple[str, ...] | None = None
    i = 0
    while i < len(tokens):
        for length in range(min(longest, len(tokens) - i), 0, -1):
            canon = index.get(tuple(tokens[i : i + length]))
            if canon is not None:
                if canon != last_canonical:  # "MR (Magnetic Resonance Imaging)" -> one "mri"
                    out.extend(canon)
                last_canonical = canon
                i += length
                break
        else:
            out.append(tokens[i])
            last_canonical = None
            i += 1
    return out


def normalize(text: str | None) -> str:
    """The normalized form of an answer or prediction: normalized tokens joined by single spaces."""
    return " ".join(normalized_tokens(text))
