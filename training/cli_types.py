"""argparse ``type=`` functions for every numeric option of every command: one place for "positive" and "finite".

argparse turns the :class:`argparse.ArgumentTypeError` these raise into ``medvqa CMD: error: argument --X: REASON``
(exit status 2, one line), before any command code runs, so no command ever sees a zero batch or an infinite
memory size and no command substitutes a default for a bad value.  ``int("1e3")`` and ``float("nan")`` are the
cases argparse's plain ``int``/``float`` get wrong for us: the first is refused with a clear word, the second is
refused as not finite.
"""

from __future__ import annotations

import argparse
import math

# Integers beyond this are not meaningful for any option (batch, tokens, seeds, indices) and Python's int() of a
# 5000-digit string raises ValueError ("exceeds the limit"), so say it plainly instead.
_MAX_DIGITS = 30


def _int(text: str) -> int:
    value = text.strip()
    digits = value.lstrip("+-")
    if not digits.isdigit() or not digits.isascii():
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    if len(digits) > _MAX_DIGITS:
        raise argparse.ArgumentTypeError(f"number too large ({len(digits)} digits)")
    return int(value)


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def any_int(text: str) -> int:
    """Any whole number (e.g. ``--vision-feature-layer -2``)."""
    return _int(text)


def positive_int(text: str) -> int:
    """A whole number >= 1 (batch sizes, token counts, GPU counts, limits)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def nonneg_int(text: str) -> int:
    """A whole number >= 0 (seeds, frame and slice indices)."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def random_seed(text: str) -> int:
    """A random seed: 0 <= seed < 2**32 (what numpy and torch accept everywhere)."""
    value = nonneg_int(text)
    if value >= 2**32:
        raise argparse.ArgumentTypeError(f"must be below 2**32, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (memory sizes, rates)."""
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text!r}")
    return value


def ratio(text: str) -> float:
    """A finite share in [0, 1)."""
    value = _float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text!r}")
    return value


def port(text: str) -> int:
    """A TCP port, 1-65535."""
    value = _int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port in 1-65535, got {value}")
    return value
