"""Convert MovieLens-100k into the canonical layout.

Two source formats are understood:

* the classic GroupLens files ``u.data`` (TSV: user, item, rating, timestamp) and ``u.item``
  (``|``-separated, latin-1: id, title, release date, video date, URL, 19 genre flags);
* RecBole atomic files ``ml-100k.inter`` (``user_id:token item_id:token rating:float
  timestamp:float``) and ``ml-100k.item`` (``item_id:token movie_title:token_seq release_year:token
  class:token_seq``), where titles have the year stripped and use the "X, The" form.

The data set is licensed by GroupLens for research use: never redistribute or commit it.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from ..errors import InvalidFileError
from .dataset import write_dataset

_ARTICLE = re.compile(r"^(?P<title>.*), (?P<article>The|A|An|Les|La|Le|L'|Il|Das|Der|Die|El)(?P<rest>\s*\(.*\))?$")
_YEAR = re.compile(r"\s*\(\d{4}\)\s*$")


def normalise_title(title: str) -> str:
    """``"Usual Suspects, The (1995)"`` -> ``"The Usual Suspects"``."""
    title = _YEAR.sub("", title.strip())
    match = _ARTICLE.match(title)
    if match:
        title = f"{match['article']} {match['title']}{match['rest'] or ''}"
    return title.strip()


def _find(src: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        hits = sorted(src.rglob(name))
        if hits:
            return hits[0]
    return None


def convert_movielens(src: str | Path, dest: str | Path) -> Path:
    """Convert a folder holding either MovieLens-100k format into the canonical layout at ``dest``."""
    src = Path(src)
    data, item = _find(src, ("u.data",)), _find(src, ("u.item",))
    inter, inter_item = _find(src, ("ml-100k.inter",)), _find(src, ("ml-100k.item",))
    if data is not None and item is not None:
        interactions, items = _read_classic(data, item)
    elif inter is not None and inter_item is not None:
        interactions, items = _read_recbole(inter, inter_item)
    else:
        raise InvalidFileError(
            f"{src} holds neither u.data + u.item (GroupLens) nor ml-100k.inter + ml-100k.item (RecBole)"
        )
    return write_dataset(dest, interactions, items)


def _read_classic(data: Path, item: Path) -> tuple[list[tuple[str, str, float, int]], dict[str, str]]:
    items: dict[str, str] = {}
    with open(item, encoding="latin-1") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("|")
            if len(fields) < 2:
                raise InvalidFileError(f"{item}:{lineno}: expected id|title|..., got {line.strip()[:60]!r}")
            items[fields[0]] = normalise_title(fields[1])
    rows: list[tuple[str, str, float, int]] = []
    with open(data, encoding="latin-1") as fh:
        for lineno, line in enumerate(fh, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 4:
                raise InvalidFileError(f"{data}:{lineno}: expected user item rating timestamp, got {line.strip()[:60]!r}")
            try:
                rows.append((fields[0], fields[1], float(fields[2]), int(fields[3])))
            except ValueError:
                raise InvalidFileError(f"{data}:{lineno}: rating/timestamp are not numbers: {line.strip()[:60]!r}") from None
    return rows, items


def _read_recbole(inter: Path, item: Path) -> tuple[list[tuple[str, str, float, int]], dict[str, str]]:
    def table(path: Path) -> tuple[list[str], list[list[str]]]:
        # read whole (100k rows) so that the file is closed; an empty file has no header
        with open(path, encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = [h.split(":")[0] for h in next(reader, [])]
            return header, list(reader)

    header, records = table(item)
    if "item_id" not in header or "movie_title" not in header:
        raise InvalidFileError(f"{item}:1: expected item_id and movie_title columns, got {header}")
    items: dict[str, str] = {}
    for fields in records:
        if fields:
            items[fields[header.index("item_id")]] = normalise_title(fields[header.index("movie_title")])
    header, records = table(inter)
    needed = ("user_id", "item_id", "rating", "timestamp")
    if any(c not in header for c in needed):
        raise InvalidFileError(f"{inter}:1: expected columns {needed}, got {header}")
    idx = [header.index(c) for c in needed]
    rows: list[tuple[str, str, float, int]] = []
    for lineno, fields in enumerate(records, start=2):
        if not fields:
            continue
        try:
            rows.append((fields[idx[0]], fields[idx[1]], float(fields[idx[2]]), int(float(fields[idx[3]]))))
        except (ValueError, IndexError):
            raise InvalidFileError(f"{inter}:{lineno}: malformed row {fields!r}") from None
    return rows, items
