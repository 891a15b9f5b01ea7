"""Hostile inputs for fuzzing a registry: Hypothesis strategies, the targets they are fed to, and
the rule every target keeps: **it succeeds, or it raises one of our errors with a short message,
and a refusal leaves the registry exactly as it was** (users, sets, aliases, artifacts, audit
log, store listing). Nothing a file smuggles in is ever executed.

Used by ``tests/test_fuzz_inputs.py`` (the default suite, few examples) and by
``benchmarks/reliability.py --inputs N`` (many, counted in the report's ``inputs``). Needs
``hypothesis`` (the ``test`` extra).
"""

from __future__ import annotations

import csv
import io
import json
import math
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import strategies as st

from ..errors import PromptRegistryError
from ..fileio import read_users_csv

MAX_MESSAGE_CHARS = 2000  # an error line echoes at most a cut of what it was given

# -------------------------------------------------------------------------------- hostile files


class Sentinel:
    """Unpickling this creates the file at ``Sentinel.path``: proof that something a file smuggled in ran."""

    path = ""

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (Path(self.path),))


def safetensors_bytes(header: dict[str, Any], payload: bytes) -> bytes:
    """A safetensors file with this (possibly lying) JSON header and payload."""
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + payload


def npy_header(descr: str, shape: list[int] | tuple[int, ...]) -> bytes:
    """An npy 1.0 header declaring ``descr`` and ``shape`` (whatever bytes follow it)."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": tuple(shape)})
    return buffer.getvalue()


def pickle_payloads(sentinel: Path) -> list[bytes]:
    """Every pickle-bearing payload we know of (each protocol, a ``torch.save`` zip, an object npy,
    a pickled object array); loading any of them must never create ``sentinel``."""
    import pickle

    import torch

    Sentinel.path = str(sentinel)
    archive = io.BytesIO()
    torch.save({"prompts": Sentinel()}, archive)  # a zip around a pickle
    object_npy = io.BytesIO()
    np.save(object_npy, np.array([Sentinel()], dtype=object), allow_pickle=True)
    return [pickle.dumps(Sentinel(), protocol=p) for p in range(2, 6)] + [
        archive.getvalue(), object_npy.getvalue(), pickle.dumps(np.array([Sentinel()], dtype=object))]


# -------------------------------------------------------------------------------- strategies

_ODD = ["", " ", "\x00", "nul\x00byte", "tab\there", "line\nbreak", "\r", "\ufeff", "²", "٣", "e\u0301", "🙂", "\ud7ff",
        "x" * 201, "y" * 10_000, "..", "../x", "a/b", "a,b", '"quoted"', "'", "-1", "99999999999999999999", "NaN"]

#: user ids, names and free text: printable, control characters, unicode, separators, very long
texts = st.one_of(st.sampled_from(_ODD), st.text(max_size=40), st.text(alphabet=st.characters(codec="utf-8"), max_size=300))

#: references to a set: ids of any size and script, ``model/task@vN`` / ``@alias`` forms with hostile parts
refs = st.one_of(
    texts,
    st.integers(min_value=-2**70, max_value=2**70).map(str),
    st.tuples(st.sampled_from(["a", "", "ghost", "a/"]), st.sampled_from(["rate", "", "x"]),
              st.one_of(st.sampled_from(["v1", "v0", "v-1", "v²", "v99999999999999999999", "production", "", "@"]), texts))
      .map(lambda t: f"{t[0]}/{t[1]}@{t[2]}"),
)

#: numeric options as typed at a shell: integers of any size, floats incl. NaN and infinities, junk
numbers = st.one_of(st.integers(min_value=-2**70, max_value=2**70).map(str),
                    st.floats(allow_nan=True, allow_infinity=True).map(repr),
                    st.sampled_from(["nan", "inf", "-inf", "1e400", "", " ", "0x10", "1_000", "²", "1.5", "-0"]))


def _csv_lines(rows: list[list[str]], delimiter: str) -> str:
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, lineterminator="\n").writerows(rows)
    return out.getvalue()


@st.composite
def csv_files(draw: Any, header: tuple[str, ...] = ("user_id",)) -> bytes:
    """A CSV of user ids (or of the columns ``header`` names): byte-order marks, wrong or missing
    headers, blank, short and long rows, duplicates, unicode, NUL, very long ids, bad UTF-8."""
    columns = list(draw(st.one_of(st.just(header), st.lists(st.sampled_from([*header, "other", "", "USER_ID"]), max_size=4))))
    n = max(len(columns), 1)
    row = st.lists(texts, min_size=0, max_size=n + 1)
    rows = draw(st.lists(row, max_size=8))
    if rows and draw(st.booleans()):
        rows.append(rows[0])  # a duplicate
    text = _csv_lines(([columns] if draw(st.booleans()) or not rows else []) + rows, draw(st.sampled_from([",", ",", ";", "\t"])))
    raw = text.encode("utf-8", errors="surrogatepass")
    if draw(st.booleans()):
        raw = b"\xef\xbb\xbf" + raw  # what Excel writes
    if draw(st.integers(0, 9)) == 0:
        raw += draw(st.binary(max_size=16))  # not UTF-8 at all
    return raw


def well_formed_users_csv(draw_ids: list[str]) -> bytes:
    return _csv_lines([["user_id"], *([u] for u in draw_ids)], ",").encode()


# -------------------------------------------------------------------------------- the rule


def fingerprint(reg: Any) -> tuple[Any, ...]:
    """What a refused call must leave as it was."""
    return (
        reg.count_users(),
        [u.external_id for u in reg.list_users(limit=None, include_deleted=True)],
        [(s.id, s.n_users, tuple(sorted(s.tags.items()))) for s in reg.list_sets()],
        [(a.name, a.set_id) for a in reg.list_aliases()],
        [a.id for a in reg.list_artifacts()],
        [e.id for e in reg.audit_events(limit=1_000_000)],
        sorted(o.key for o in reg.store.list_objects()),
    )


def attempt(reg: Any, call: Callable[[], Any]) -> str:
    """Run ``call``: ``"accepted"`` if it returns, ``"refused"`` if it raises one of our errors with
    a short message and the registry as it was; anything else fails (AssertionError or the
    exception itself)."""
    before = fingerprint(reg)
    try:
        call()
    except PromptRegistryError as exc:
        message = str(exc)
        assert message and len(message) <= MAX_MESSAGE_CHARS, f"{type(exc).__name__} message of {len(message)} chars: {message[:200]!r}"
        after = fingerprint(reg)
        assert after == before, f"a refused call changed the registry ({type(exc).__name__}: {message[:200]})"
        return "refused"
    return "accepted"


# -------------------------------------------------------------------------------- targets


def import_with_users_csv(reg: Any, workdir: Path, raw: bytes, width: int = 16) -> str:
    """``import_prompts(users=FILE)`` with a fuzzed users CSV (as many prompts as the CSV would
    name if it parses), creating users: accepted imports name exactly the CSV's users."""
    path = workdir / "users.csv"
    path.write_bytes(raw)
    try:
        n = len(read_users_csv(path))
    except PromptRegistryError:
        n = 2
    data = np.random.default_rng(0).normal(size=(max(n, 1), 1, width)).astype(np.float32)
    made: list[Any] = []
    outcome = attempt(reg, lambda: made.append(reg.import_prompts("a", "rate", data, path, create_users=True)))
    if outcome == "accepted":
        assert sorted(reg.list_set_users(made[0])) == sorted(read_users_csv(path))
    return outcome


def add_users_from_csv(reg: Any, workdir: Path, raw: bytes) -> str:
    """What ``user import FILE`` does: read the CSV, add its users."""
    path = workdir / "users.csv"
    path.write_bytes(raw)
    return attempt(reg, lambda: reg.add_users(read_users_csv(path), exist_ok=True))


def load_data_folder(workdir: Path, interactions: bytes, items: bytes) -> str:
    """A data set folder with fuzzed ``interactions.csv`` / ``items.csv``: loaded or refused."""
    from ..data import Dataset

    folder = workdir / "data"
    folder.mkdir(exist_ok=True)
    (folder / "interactions.csv").write_bytes(interactions)
    (folder / "items.csv").write_bytes(items)
    try:
        ds = Dataset.load(folder)
    except PromptRegistryError as exc:
        assert len(str(exc)) <= MAX_MESSAGE_CHARS
        return "refused"
    assert all(math.isfinite(x) for x in ds.labels.tolist())
    return "accepted"


def reference(reg: Any, ref: str) -> str:
    """Reading a set, its users, its lineage and its prompt by a fuzzed reference."""
    outcomes = {attempt(reg, lambda: reg.get_set(ref)), attempt(reg, lambda: reg.lineage(ref)),
                attempt(reg, lambda: reg.get_prompt("u000", "a", "rate", alias=ref))}
    return "accepted" if "accepted" in outcomes else "refused"


def name(reg: Any, text: str) -> str:
    """A fuzzed text as a tag name and value, an alias name, a user id and a reason: each
    accepted (and then readable back exactly) or refused."""
    results = [attempt(reg, lambda: reg.tag(1, text, text)), attempt(reg, lambda: reg.set_alias(text, 1, reason=text)),
               attempt(reg, lambda: reg.add_users([text], exist_ok=True))]
    if results[0] == "accepted":
        assert reg.get_set(1).tags.get(text) == text
    if results[1] == "accepted":
        assert reg.get_alias(text, "a", "rate").set_id == 1
    return "accepted" if "accepted" in results else "refused"
