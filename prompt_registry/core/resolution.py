"""Resolving a version to its rows: chains of incremental bases, manifests, verified reads.

A version physically holds only the rows it wrote; ``chain_of`` walks its bases, ``locate``
finds users' rows through the chain in SQL, ``manifest_for`` keeps resolved versions in the
context's LRU (``ReadCaches``), ``read_users`` reads (and verifies) the bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from .._context import MANIFEST_CACHE_ROWS, MANIFEST_MIN_USERS, Context
from .._util import batched
from ..db import lookups
from ..db.schema import PromptSetRow
from ..errors import UnknownUserError
from ..manifest import Manifest


def chain_of(ctx: Context, session: Session, row: PromptSetRow) -> tuple[tuple[int, str | None], ...]:
    """``(set_id, store_key)`` from this version up through its incremental bases."""
    cached = ctx.caches.chains.get(row.id)
    if cached is not None:
        return cached
    chain: list[tuple[int, str | None]] = []
    current: PromptSetRow | None = row
    while current is not None:
        chain.append((current.id, current.store_key))
        current = session.get(PromptSetRow, current.base_id) if current.base_id is not None else None
    result = tuple(chain)
    with ctx.caches.lock:
        ctx.caches.chains[row.id] = result
    return result


def locate(ctx: Context, session: Session, row: PromptSetRow, users: Sequence[str] | None) -> Manifest:
    """Resolve ``users`` (``None``: everyone) of a version through its chain, via SQL."""
    chain_ids = [set_id for set_id, _ in chain_of(ctx, session, row)]
    if users is None:
        return Manifest.resolve(row.id, chain_ids, lookups.set_records(session, chain_ids))
    records: list[Any] = []
    conn = session.connection()
    for batch in batched(list(dict.fromkeys(users))):
        records += conn.execute(lookups.USER_RECORDS, {"sets": chain_ids, "users": list(batch)}).all()
    return Manifest.resolve(row.id, chain_ids, records)


def manifest_for(ctx: Context, session: Session, row: PromptSetRow, users: Sequence[str] | None) -> Manifest:
    """A manifest covering ``users``: the cached full one, a new full one for big reads, or
    a small one for just these users (single reads stay cheap on huge sets)."""
    with ctx.caches.lock:
        cached = ctx.caches.manifests.get(row.id)
        # a purge in any process keeps the set id but lowers its n_users (read fresh with the row):
        # a cached manifest of another size lists a purged user, whose read would then fail its
        # checksum (zeroed bytes) or, unverified, return zeros as if they were the user's prompt
        if cached is not None and len(cached) == row.n_users:
            ctx.caches.manifests.move_to_end(row.id)
            return cached
        base = ctx.caches.manifests.get(row.base_id) if row.base_id is not None else None
    manifest = None
    if base is not None:
        manifest = base.overlay(row.id, lookups.set_records(session, [row.id]))
        if len(manifest) != row.n_users:
            manifest = None  # the cached base predates a purge: resolve through the catalogue
    if manifest is None:
        if users is not None and len(users) < MANIFEST_MIN_USERS:
            return locate(ctx, session, row, users)
        manifest = locate(ctx, session, row, None)
    _remember(ctx, row.id, manifest)
    return manifest


def window_manifest(ctx: Context, session: Session, row: PromptSetRow, first: str, last: str) -> Manifest:
    """The manifest of the version's users from ``first`` to ``last`` (code point order, both
    included): the part of a huge version that one apply shard reads, resolved without the rest
    (``lookups.window_records``). Cached beside the full manifests, under ``(id, first, last)``;
    the version's full manifest, when cached, serves instead."""
    with ctx.caches.lock:
        for key in (row.id, (row.id, first, last)):
            cached = ctx.caches.manifests.get(key)
            if cached is not None:
                ctx.caches.manifests.move_to_end(key)
                return cached
    chain_ids = [set_id for set_id, _ in chain_of(ctx, session, row)]
    manifest = Manifest.resolve(row.id, chain_ids, lookups.window_records(session, chain_ids, first, last))
    _remember(ctx, (row.id, first, last), manifest)
    return manifest


def _remember(ctx: Context, key: int | tuple[int, str, str], manifest: Manifest) -> None:
    with ctx.caches.lock:
        ctx.caches.manifests[key] = manifest
        total = sum(len(m) for m in ctx.caches.manifests.values())
        while total > MANIFEST_CACHE_ROWS and len(ctx.caches.manifests) > 1:
            total -= len(ctx.caches.manifests.popitem(last=False)[1])


def read_users(ctx: Context, session: Session, row: PromptSetRow, users: Sequence[str] | None, verify: bool,
               only_present: bool = False, scan: bool = False, window: tuple[str, str] | None = None) -> tuple[list[str], np.ndarray]:
    """The users read and their rows, in order (``None``: everyone, sorted); ``only_present`` skips
    the users without a prompt in the version instead of refusing them; ``scan``: the rows are read
    once (``TensorStore.read_verified``); ``window``: ``(first, last)`` of the range of the
    version's sorted users the caller reads batch by batch (``window_manifest``; when a user is
    not in it, the read is resolved the usual way)."""
    if window is not None and users is not None and not only_present:
        manifest = window_manifest(ctx, session, row, *window)
        users = list(users)
        try:
            positions = manifest.positions(users)  # the lookup the read needs anyway
        except UnknownUserError:  # someone outside the window (or not in the version: then the usual error below)
            return read_users(ctx, session, row, users, verify, scan=scan)
    else:
        manifest = manifest_for(ctx, session, row, users)
        users = sorted(manifest.users) if users is None else list(users)
        if only_present:
            users = [u for u in users if u in manifest.index]
            if not users:
                return users, np.zeros((0, row.prompt_len, row.width), dtype=row.dtype)
        positions = manifest.positions(users)
    keys = dict(chain_of(ctx, session, row))
    return users, manifest.read(ctx.store, keys, positions, (row.prompt_len, row.width), row.dtype, verify=verify, scan=scan)
