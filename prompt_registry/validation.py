"""Validation of what callers pass in, in one place, identical on every catalogue backend.

Limits (documented in README "Limits"):

* ids and counts are integers in ``0 .. 2**63 - 1`` (what both SQLite and Postgres store); a
  reference to an object by id is written in ASCII digits (``'²'`` is a digit to Python, not to us);
* user ids are 1-200 characters, not blank, without control characters (NUL, newlines, ...), with
  at least one visible character (a stray byte-order mark or zero-width space alone is refused);
* tag names are 1-100 characters and actors 1-200, not blank, without control characters;
* durations (days, seconds) are finite and not negative;
* free text (reasons, notes, tag values) holds no NUL character.

Errors raise ``InvalidArgumentError`` naming the argument and the rule, and echo at most
``_util.ECHO_CHARS`` characters of the offending value (a hostile 10,000-character id stays out of logs).
"""

from __future__ import annotations

import math
import numbers
import unicodedata
from collections.abc import Sequence

from ._util import echo
from .errors import InvalidArgumentError

MAX_INT = 2**63 - 1  # the largest id or count a catalogue column holds (BIGINT / SQLite INTEGER)
MAX_USER_ID_CHARS = 200
MAX_LABEL_CHARS = 100


def is_id_text(text: str) -> bool:
    """Whether ``text`` is an id written as ASCII digits (any size: ``as_id`` checks the range)."""
    return text.isascii() and text.isdigit()


def as_id(value: object, what: str) -> int:
    """An object id: an int, or ASCII digits, in ``1 .. 2**63 - 1``."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidArgumentError(f"{what} must be a whole number, not {echo(value)}")
    original = value
    if isinstance(value, str):
        text = value.strip()
        if not is_id_text(text):
            raise InvalidArgumentError(f"{what} must be written in the digits 0-9, not {echo(value)}")
        value = int(text[:40])  # beyond 40 digits it is out of range anyway; int() of a huge string is slow
    if not 1 <= value <= MAX_INT:
        raise InvalidArgumentError(f"{what} must be between 1 and {MAX_INT}, not {echo(original)}")
    return value


def count(value: int | None, what: str, *, allow_none: bool = True) -> int | None:
    """A limit, offset or depth: ``None`` (no limit, where allowed) or an int in ``0 .. 2**63 - 1``."""
    if value is None:
        if allow_none:
            return None
        raise InvalidArgumentError(f"{what} is required")
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(f"{what} must be a whole number, not {echo(value)}")
    if not 0 <= value <= MAX_INT:
        raise InvalidArgumentError(f"{what} must be between 0 and {MAX_INT}, not {echo(value)}")
    return value


def whole(value: int | None, what: str, low: int, high: int) -> int | None:
    """An optional whole number in ``low .. high`` (a count of users, epochs, threads)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= int(value) <= high:
        raise InvalidArgumentError(f"{what} must be a whole number from {low} to {high}, not {echo(value)}")
    return int(value)


def fraction_or_count(value: float, what: str) -> float:
    """A finite number > 0: a share (``<= 1``) or a count (``> 1``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise InvalidArgumentError(f"{what} must be a share in (0, 1] or a number of users, not {echo(value)}")
    return float(value)


def duration(value: float | None, what: str) -> float | None:
    """Days or seconds: ``None``, or a finite number >= 0 (not NaN, not infinite)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise InvalidArgumentError(f"{what} must be a finite number of 0 or more, not {echo(value)}")
    return float(value)


def _has_control(text: str) -> bool:
    return any(unicodedata.category(ch) in ("Cc", "Cs") for ch in text)


def _invisible(text: str) -> bool:
    return all(ch.isspace() or unicodedata.category(ch) == "Cf" for ch in text)


def unfit_ids(ids: Sequence[str]) -> list[str]:
    """The ids that hold a control character (NUL, tab, newline, ...) or nothing visible (only
    spaces and format characters such as a stray byte-order mark or a zero-width space). The common
    case costs one C loop (100,000 ids: ~3 ms): only ids that are not all printable are looked at
    character by character."""
    if all(map(str.isprintable, ids)):
        return []
    return [u for u in ids if _has_control(u) or _invisible(u)]


def label(value: str, what: str, max_chars: int = MAX_LABEL_CHARS) -> str:
    """A tag name or an actor: 1-``max_chars`` characters, not blank, without control characters."""
    if not isinstance(value, str) or not value.strip() or len(value) > max_chars or _has_control(value):
        raise InvalidArgumentError(
            f"invalid {what} {echo(value)}: use 1-{max_chars} characters, not blank, without control characters"
        )
    return value


def text(value: str | None, what: str) -> str | None:
    """Free text (a reason, a note, a tag value): any characters but NUL, which Postgres cannot
    store in a text column (SQLite can: refusing it on both keeps them alike)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{what} must be text, not {echo(value)}")
    if "\x00" in value:
        raise InvalidArgumentError(f"{what} {echo(value)} holds a NUL character; remove it")
    return value
