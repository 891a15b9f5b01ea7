"""Corruption injected into the store, detected, and repaired (the ``faults`` of the reliability
report; ``python benchmarks/reliability.py`` runs it, ``--faults N`` sets how many per backend).

Each trial builds a fresh registry with two full versions of 600 users in three shard files
(v2 changed users 0-59 and kept the rest byte for byte), then injects one fault drawn with the
seed into a file of v1 or v2:

* ``flip``: 1-3 bytes of live rows flipped;  ``index``: a byte of a shard index flipped;
* ``truncate``: a shard file cut short;  ``pad``: bytes appended to one;
* ``delete-file``: a shard file removed;  ``delete-array``: a whole version's array removed.

Checks: ``doctor`` reports it (``detected``); a verified read of every damaged user fails with an
integrity error naming the set and the user, and every other user of the set reads back exactly;
``doctor --repair`` restores every damaged row the other version holds (``repaired``) and names
exactly the rest (rows of users the other version changed: ``unrecoverable``, the fault's doing);
after it every restorable user reads back exactly. A row the registry should have restored and
did not, or a user that read back wrong, counts as ``lost``.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

N = 600
WIDTH = 16
ROW = WIDTH * 4
CHANGED = 60
KINDS = ("flip", "index", "truncate", "pad", "delete-file", "delete-array")


def _prompts(seed: int, n: int = N) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 1, WIDTH)).astype(np.float32)


def _registry(location: str, store: str | None, model: Path) -> tuple[Any, dict[int, np.ndarray]]:
    from prompt_registry import Registry

    reg = Registry.init(location, store=store, actor="faults")
    reg.store.shard_chunks = 1  # 256 users per shard file: three files per version
    reg.register_model("a", model)
    reg.add_task("t", "rating")
    users = [f"u{i:03d}" for i in range(N)]
    p1 = _prompts(1)
    p2 = p1.copy()
    p2[:CHANGED] = _prompts(2, CHANGED)
    v1 = reg.import_prompts("a", "t", p1, users, create_users=True)
    v2 = reg.import_prompts("a", "t", p2, users)
    return reg, {v1.id: p1, v2.id: p2}


def _inject(reg: Any, set_id: int, kind: str, rng: np.random.Generator) -> tuple[set[int], set[int], str]:
    """Damage set ``set_id``: ``(rows whose bytes the fault destroyed, rows no verified read can
    return until a repair, what it did)``."""
    key = reg.get_set(set_id).store_key
    folder = reg.store.root / "arrays" / key
    f = int(rng.integers(3))
    path = folder / f"c.{f}.0.0"
    live = min(256, N - 256 * f)
    in_file = {256 * f + r for r in range(live)}
    raw = bytearray(path.read_bytes())
    if kind == "flip":
        offsets = rng.choice(live * ROW, size=int(rng.integers(1, 4)), replace=False).tolist()
        for o in offsets:
            raw[o] ^= 0xFF
        path.write_bytes(bytes(raw))
        rows = {256 * f + o // ROW for o in offsets}
        return rows, rows, f"flipped {len(offsets)} byte(s) of {path.name}"
    if kind == "index":
        o = len(raw) - 1 - int(rng.integers(20))  # the index of one chunk: 16 bytes and a 4-byte crc32c
        raw[o] ^= 0xFF
        path.write_bytes(bytes(raw))
        return set(), in_file, f"flipped byte {o} of {path.name}'s shard index"
    if kind == "truncate":
        keep = int(rng.integers(0, len(raw)))
        path.write_bytes(bytes(raw[:keep]))
        return {256 * f + r for r in range(live) if (r + 1) * ROW > keep}, in_file, f"cut {path.name} to {keep} of {len(raw)} bytes"
    if kind == "pad":
        path.write_bytes(bytes(raw) + rng.integers(0, 256, size=int(rng.integers(1, 5000)), dtype=np.uint8).tobytes())
        return set(), in_file, f"appended bytes to {path.name}"
    if kind == "delete-file":
        path.unlink()
        return in_file, in_file, f"deleted {path.name}"
    shutil.rmtree(folder)
    return set(range(N)), set(range(N)), "deleted the array"


def _mismatches(reg: Any, version: int, expected: np.ndarray, skip: set[int]) -> tuple[set[int], list[str]]:
    """Rows whose verified read fails (with the messages that do not name set and user) and rows
    that read back wrong, outside ``skip``."""
    from prompt_registry import IntegrityError

    failed: set[int] = set()
    unnamed: list[str] = []
    wrong: set[int] = set()
    for r in range(N):
        if r in skip:
            continue
        user = f"u{r:03d}"
        try:
            back = reg.get_prompt(user, "a", "t", version=version).numpy()
        except IntegrityError as exc:
            failed.add(r)
            if user not in str(exc) or "set " not in str(exc):
                unnamed.append(str(exc)[:200])
            continue
        if not np.array_equal(back, expected[r]):
            wrong.add(r)
    return failed | wrong, unnamed


def trial(location: str, store: str | None, model: Path, kind: str, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    reg, data = _registry(location, store, model)
    problems: list[str] = []
    try:
        target, other = list(data) if rng.integers(2) == 0 else list(data)[::-1]
        version = reg.get_set(target).version
        destroyed, unreadable, what = _inject(reg, target, kind, rng)
        detected = not reg.doctor().ok
        if not detected:
            problems.append("doctor did not report it")
        bad, unnamed = _mismatches(reg, version, data[target], set())
        if bad != unreadable:
            problems.append(f"{len(bad)} user(s) fail to read, expected {len(unreadable)}")
        if unnamed:
            problems.append(f"errors that do not name their set and user: {unnamed[:2]}")
        same = {r for r in range(N) if np.array_equal(data[target][r], data[other][r])}
        expected_lost = {r for r in destroyed if r not in same}
        repaired = reg.doctor(repair=True)
        lost_rows = {int(u[1:]) for users in repaired.repair.lost.values() for u in users}
        if lost_rows != expected_lost:
            problems.append(f"repair named {len(lost_rows)} row(s) lost, expected {len(expected_lost)}")
        wrong, _ = _mismatches(reg, version, data[target], expected_lost)
        if wrong:
            problems.append(f"{len(wrong)} restorable row(s) do not read back exactly after the repair")
        left = {p.kind for p in repaired.problems}
        if left - {"checksum"} or bool(expected_lost) != ("checksum" in left):
            problems.append(f"doctor after the repair: {sorted(left)}")
        return {"kind": kind, "seed": seed, "what": what, "detected": detected, "rows_destroyed": len(destroyed),
                "rows_repaired": repaired.repair.rows_restored, "rows_unrecoverable": len(expected_lost),
                "lost": len(wrong) + len(lost_rows - expected_lost), "problems": problems}
    finally:
        reg.close()


def run(backends: list[str], backend: Any, model: Path, workdir: Path, faults: int, seed: int) -> dict[str, Any]:
    """``faults`` trials per catalogue backend, the fault kinds in turn."""
    out: dict[str, Any] = {}
    for kind in backends:
        started = time.perf_counter()
        results = []
        for i in range(faults):
            root = workdir / "fault"
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            with backend(kind, root) as (location, store):
                results.append(trial(location, store, model, KINDS[i % len(KINDS)], seed * 100_003 + i))
        failed = [r for r in results if r["problems"]]
        out[kind] = {"backend": kind, "injected": len(results), "detected": sum(r["detected"] for r in results),
                     "by_kind": {k: sum(r["kind"] == k for r in results) for k in KINDS},
                     "rows_destroyed": sum(r["rows_destroyed"] for r in results), "rows_repaired": sum(r["rows_repaired"] for r in results),
                     "rows_unrecoverable": sum(r["rows_unrecoverable"] for r in results), "lost": sum(r["lost"] for r in results),
                     "failures": [{"seed": r["seed"], "kind": r["kind"], "what": r["what"], "problems": r["problems"][:5]} for r in failed],
                     "seconds": round(time.perf_counter() - started, 1)}
    return out
