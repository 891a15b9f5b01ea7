"""The context every service works in: built once when a registry opens, then shared.

``Context`` holds the catalogue engine, the tensor store, who acts (``actor``), the clock, the
catalogue id, the read caches and the heartbeat of open runs. Services (``core/``) receive it;
only services open sessions, one unit of work per public operation.
"""

from __future__ import annotations

import collections
import datetime as dt
import getpass
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from . import liveness, validation
from ._forksafe import fresh_lock
from ._util import utcnow
from .db.schema import AuditEventRow
from .manifest import Manifest
from .store.base import TensorStore

# Reads of at least this many users load (and cache) the version's whole manifest.
MANIFEST_MIN_USERS = 1024
MANIFEST_CACHE_ROWS = 5_000_000  # ~0.5-1 GB of Python objects at the most


def default_actor() -> str:
    actor = os.environ.get("PROMPT_REGISTRY_ACTOR")
    if actor:
        return actor
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        return "unknown"


class ReadCaches:
    """What reads remember between calls: rows that never change once written.

    ``chains``: set id -> ``(set id, store key)`` up through its incremental bases; ``pair_ids``:
    (model name, task name) -> ids (never renamed or deleted); ``manifests``: LRU of resolved
    versions (and windows of versions, ``resolution.window_manifest``), bounded by
    ``MANIFEST_CACHE_ROWS`` users in all. A purge or retention changes what versions resolve to:
    ``forget`` drops everything.
    """

    def __init__(self) -> None:
        self.chains: dict[int, tuple[tuple[int, str | None], ...]] = {}
        self.pair_ids: dict[tuple[str, str], tuple[int, int]] = {}
        self.manifests: collections.OrderedDict[int | tuple[int, str, str], Manifest] = collections.OrderedDict()
        self.lock = fresh_lock(self, "lock")  # a forked child gets it unheld

    def forget(self) -> None:
        with self.lock:
            self.manifests.clear()
            self.chains.clear()


class Context:
    """Engine, store, actor, clock, catalogue id, read caches and heartbeat of one open registry."""

    def __init__(self, engine: Engine, store: TensorStore, *, where: str, catalog_id: str, actor: str | None = None,
                 clock: Callable[[], dt.datetime] = utcnow) -> None:
        self.engine = engine
        self.store = store
        self.where = where
        self.catalog_id = catalog_id  # named in the store it is bound to and in every key it writes
        self.actor = validation.label(actor or default_actor(), "actor", max_chars=200)  # recorded in String(200) columns
        self.now = clock
        self.caches = ReadCaches()
        self.heartbeat = liveness.Heartbeat(engine, clock)

    def audit(self, session: Session, action: str, kind: str, obj: Any, details: dict[str, Any], reason: str | None = None) -> None:
        """Append an audit event inside ``session``'s transaction."""
        validation.text(reason, "reason")
        session.add(AuditEventRow(at=self.now(), actor=self.actor, action=action, object_kind=kind,
                                  object_id=str(obj), reason=reason, details=details))

    def scratch_dir(self) -> Path:
        """A local directory for working files (checkpoints, write journals): beside the store, or
        for a store with no local directory (s3://) one per catalogue under the system's temp dir."""
        root = self.store.local_root or Path(tempfile.gettempdir()) / "prompt-registry" / self.catalog_id
        path = root / "work"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def close(self) -> None:
        self.heartbeat.stop()
        self.store.close()
        self.engine.dispose()
