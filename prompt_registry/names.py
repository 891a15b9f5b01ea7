"""Names and references: what a model, task, alias or version selector may look like."""

from __future__ import annotations

import re

from ._util import echo
from .errors import InvalidArgumentError

TASK_KINDS = ("rating", "click")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-/:]{0,199}$")  # model names
ALIAS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]{0,99}$")  # alias and task names
VERSION_RE = re.compile(r"^v?([0-9]+)$")  # `vN` (or N) after the @ of a set reference
LATEST = "latest"  # the newest committed version, after the @


def alias_or_task(value: str, what: str) -> str:
    """An alias or task name as a filter: what ``ALIAS_RE`` allows, else ``InvalidArgumentError``."""
    if not isinstance(value, str) or not ALIAS_RE.match(value):
        raise InvalidArgumentError(f"invalid {what} {echo(value)}: a letter first, then letters, digits, . _ - (at most 100)")
    return value
