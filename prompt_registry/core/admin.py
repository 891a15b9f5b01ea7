"""Housekeeping: doctor (consistency, checksums, stale runs), gc (orphans, retention, stale runs), purge."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from collections.abc import Sequence

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from .. import liveness, validation
from .._context import Context
from .._util import preview
from ..audit import deletion, retention
from ..audit.entities import PurgeReport
from ..db import lookups, migrations
from ..db.engine import read_session, write_session
from ..db.schema import ArtifactRow, PromptRowRow, PromptSetRow, PurgedRowRow, RunRow
from ..entities import DoctorReport, GcReport, Problem
from ..errors import IntegrityError, InvalidArgumentError, SchemaError
from ..store import keys
from ..store.base import StoredObject
from . import integrity, runs

DEFAULT_GC_GRACE_SECONDS = 3600.0
_DAMAGE = {"missing": "missing", "size": "truncated or padded", "index": "a corrupted shard"}
_REPAIR = ("run `prompt-registry doctor --repair` (it restores rows other versions hold); for what it cannot "
           "restore, restore the store from backup or re-import the set and move aliases to it")


class AdminService:
    """Consistency and housekeeping: doctor, gc (orphans, retention, stale runs)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def _unreferenced(self, session: Session) -> tuple[list[StoredObject], list[StoredObject]]:
        """Store objects no catalogue row refers to: (this catalogue's orphans, foreign objects).

        Only a key that names this catalogue (``store.keys``) is provably an orphan of ours;
        anything else unreferenced (keys of the format before revision 0006, an operator's files,
        another registry's objects) is foreign and is never deleted.
        """
        referenced = lookups.referenced_keys(session)
        own: list[StoredObject] = []
        foreign: list[StoredObject] = []
        for obj in self.ctx.store.list_objects():
            if obj.key not in referenced:
                (own if keys.owner(obj.key) == self.ctx.catalog_id else foreign).append(obj)
        return own, foreign

    def _running_runs(self, session: Session) -> Sequence[RunRow]:
        return session.scalars(select(RunRow).where(RunRow.status == "running").order_by(RunRow.id)).all()

    def doctor(self, *, checksums: bool = True, repair: bool = False, dry_run: bool = False,
               stale_after_seconds: float = liveness.STALE_AFTER_SECONDS) -> DoctorReport:
        """Check schema, catalogue vs store consistency, (by default) every row checksum, and
        runs left ``running`` by a process that died (see ``liveness``). Objects in the store that
        this catalogue did not write are listed in ``foreign``, not counted as problems. With
        ``repair``, first restore what can be restored (``core.integrity``; ``dry_run``: only say
        what), then check: the problems are what is left."""
        if dry_run and not repair:
            raise InvalidArgumentError("dry_run applies to repair: pass repair=True too (`doctor --repair --dry-run`)")
        fixed = None
        if repair:
            migrations.check_schema(self.ctx.engine, self.ctx.where)
            fixed = integrity.repair(self.ctx, dry_run=dry_run)
        report = self._doctor(checksums, stale_after_seconds)
        return dataclasses.replace(report, repair=fixed)

    def _doctor(self, checksums: bool, stale_after_seconds: float) -> DoctorReport:
        problems: list[Problem] = []
        revision = migrations.current_revision(self.ctx.engine)
        try:
            migrations.check_schema(self.ctx.engine, self.ctx.where)
        except SchemaError as exc:
            problems.append(Problem("schema", self.ctx.where, str(exc), f"run `{migrations.UPGRADE_COMMAND}`"))
            return DoctorReport(revision, 0, 0, 0, tuple(problems))
        rows_checked = 0
        with read_session(self.ctx.engine) as session:
            sets = session.scalars(select(PromptSetRow).where(PromptSetRow.status == "committed").order_by(PromptSetRow.id)).all()
            artifacts = session.scalars(select(ArtifactRow).order_by(ArtifactRow.id)).all()
            orphans, foreign = self._unreferenced(session)
            pending = deletion.pending_count(session)
            if pending:
                problems.append(Problem("purge-pending", f"{pending} purged row(s)",
                                        "the users are out of every set, but their bytes are not erased yet (a purge was interrupted)",
                                        "run `prompt-registry gc` (or the purge again): it erases them"))
            for row in sets:
                rows_checked += self._check_set(session, row, checksums, problems)
            for run, why in runs.stale_runs(self._running_runs(session), self.ctx.now(), liveness.current(), stale_after_seconds):
                problems.append(Problem("stale-run", f"run {run.id} ({run.kind})", f"is still 'running' but {why}",
                                        "run `prompt-registry gc` to close it as failed (a rerun of the operation closes it too)"))
        for art in artifacts:
            try:
                data = self.ctx.store.get_blob(art.store_key)
            except IntegrityError as exc:
                problems.append(Problem("missing", f"{art.kind} {art.id}", str(exc), "restore the blob from backup or retrain the artifact"))
                continue
            if hashlib.sha256(data).hexdigest() != art.sha256:
                problems.append(Problem("checksum", f"{art.kind} {art.id}", f"blob {art.store_key} fails its sha256 check",
                                        "restore it from backup or retrain it"))
        if orphans:
            problems.append(Problem(
                "orphan", f"{len(orphans)} store object(s)",
                f"bytes this catalogue wrote that no row refers to (e.g. an interrupted write): {preview([o.key for o in orphans], 3)}",
                "run `prompt-registry gc --dry-run`, then `prompt-registry gc`",
            ))
        return DoctorReport(revision, len(sets), rows_checked, len(artifacts), tuple(problems), tuple(o.key for o in foreign))

    def _check_set(self, session: Session, row: PromptSetRow, checksums: bool, problems: list[Problem]) -> int:
        what = f"set {row.id}"
        n_rows = session.scalar(select(func.count()).select_from(PromptRowRow).where(PromptRowRow.set_id == row.id)) or 0
        n_rows += deletion.purged_count(session, row.id)  # purged rows stay in the array, as zeros
        if n_rows != row.n_rows:
            problems.append(Problem("catalogue", what, f"has {n_rows} prompt rows, expected {row.n_rows}", "restore the catalogue from backup"))
        if row.store_key is None:
            return 0
        try:
            info = self.ctx.store.array_info(row.store_key)
        except IntegrityError as exc:
            problems.append(Problem("missing", what, str(exc), _REPAIR))
            return 0
        expected = (row.n_rows, row.prompt_len, row.width)
        if info.shape != expected or info.dtype != row.dtype:
            problems.append(Problem("shape", what, f"array is {info.shape} {info.dtype}, catalogue says {expected} {row.dtype}",
                                    "restore the store from backup"))
            return 0
        try:
            damaged = self.ctx.store.damaged_files(row.store_key)
        except IntegrityError as exc:
            problems.append(Problem("missing", what, str(exc), "restore the store from backup, or re-import this set"))
            return 0
        users = integrity.users_of(session, row.id)
        for d in damaged:
            who = preview([users[i] for i in range(*d.rows) if i in users])
            problems.append(Problem("damaged", what, f"file {d.path} is {_DAMAGE[d.why]} ({d.detail}): rows {d.rows[0]}-{d.rows[1] - 1} "
                                    f"cannot be read (users {who or 'none: purged rows'})", _REPAIR))
        if not checksums:
            return 0
        digests = deletion.expected_digests(session, row.id, info.row_nbytes)  # erased purged rows: the digest of zeros
        unread = {i for d in damaged for i in range(*d.rows)}
        bad = [users.get(i, f"row {i}") for i in integrity.bad_rows(self.ctx.store, row.store_key, row.n_rows, digests, damaged)
               if i not in unread]
        if bad:
            problems.append(Problem("checksum", what, f"{len(bad)} row(s) fail their sha256 check (users {preview(bad)})", _REPAIR))
        return row.n_rows

    def gc(self, *, dry_run: bool = False, grace_seconds: float = DEFAULT_GC_GRACE_SECONDS,
           keep_last: int | None = None, older_than_days: float | None = None,
           stale_after_seconds: float = liveness.STALE_AFTER_SECONDS) -> GcReport:
        """Finish interrupted purges (erase their pending bytes), remove the prompt sets retention no
        longer needs (with ``keep_last``/``older_than_days``) and the pending sets of sharded writes
        no shard has touched for ``grace_seconds`` (their catalogue rows; ``abandoned_sets``), then
        store objects this catalogue wrote and no row refers to (bytes of interrupted writes), and
        close stale runs (left ``running`` by a process that died) as ``failed``.

        Retention, per model and task, keeps the newest ``keep_last`` versions (at least 1; 1 if
        only ``older_than_days`` is given), sets younger than ``older_than_days``, sets an alias
        points at, and every set a kept one needs through lineage (bases and sources). The others
        are marked ``deleted`` (their history stays; reads fail) and their bytes removed; their
        ids are ``removed_sets``. Orphans younger than ``grace_seconds`` are kept: they may belong
        to a write in flight. Objects whose key does not name this catalogue are never deleted
        (``foreign``). ``dry_run`` lists what would go. ``ConflictError`` for ``keep_last < 1``.
        """
        now = self.ctx.now()
        grace_seconds = validation.duration(grace_seconds, "grace_seconds") or 0.0
        stale_after_seconds = validation.duration(stale_after_seconds, "stale_after_seconds") or 0.0
        policy = retention.RetentionPolicy.from_options(keep_last, older_than_days)
        if not dry_run:
            self._erase_pending()  # finish purges a crash interrupted after their commit
        sets: list[retention.DoomedSet] = []
        if policy is not None and dry_run:
            with read_session(self.ctx.engine) as session:
                sets = retention.plan(session, policy, now)
        elif policy is not None:
            with write_session(self.ctx.engine) as session:
                sets = retention.apply(session, policy, now)
                for d in sets:
                    self.ctx.audit(session, "retention_delete", "prompt_set", d.set_id, {
                        "version": d.version, "store_key": d.store_key, "keep_last": policy.keep_last, "older_than_days": policy.older_than_days})
            self.ctx.caches.forget()
        abandoned = self._abandoned_writes(now, grace_seconds, dry_run)
        objects = {o.key: o for o in self.ctx.store.list_objects()}
        set_bytes = [objects[d.store_key] for d in sets if d.store_key in objects]
        if not dry_run:
            for obj in set_bytes:  # unreferenced since the commit; not subject to the grace period
                self.ctx.store.delete(obj.key)
        with read_session(self.ctx.engine) as session:
            orphans, foreign = self._unreferenced(session)
            # a finished shard's digests are written once, early: they stay while any sharded write
            # is still pending (touched within the grace period), or its last shard could not commit
            live_shards = bool(session.scalar(select(func.count()).select_from(PromptSetRow).where(PromptSetRow.status == "pending")))
        young = tuple(o.key for o in orphans if (now - o.modified_at).total_seconds() < grace_seconds
                      or (live_shards and o.key.startswith("shard-")))
        doomed = [o for o in orphans if o.key not in young]
        if not dry_run and doomed:
            # re-check under a write transaction: a writer may have committed since the listing
            with write_session(self.ctx.engine) as session:
                referenced = lookups.referenced_keys(session)
                doomed = [o for o in doomed if o.key not in referenced]
                for obj in doomed:
                    self.ctx.store.delete(obj.key)
                self.ctx.audit(session, "gc", "store", self.ctx.store.location, {"removed": [o.key for o in doomed], "nbytes": sum(o.nbytes for o in doomed)})
        session_of = read_session if dry_run else write_session
        with session_of(self.ctx.engine) as session:
            closed = runs.close_stale_runs(self.ctx, session, self._running_runs(session), now, liveness.current(), stale_after_seconds,
                                            reason="gc ran", dry_run=dry_run)
        removed = set_bytes + doomed
        return GcReport(dry_run, tuple(o.key for o in removed), sum(o.nbytes for o in removed), young, tuple(d.set_id for d in sets),
                        tuple(o.key for o in foreign), tuple(closed), tuple(abandoned))

    def _abandoned_writes(self, now: dt.datetime, grace_seconds: float, dry_run: bool) -> list[int]:
        """Pending sets of sharded writes whose shards last inserted rows more than
        ``grace_seconds`` ago: their rows and the set row go (their bytes are orphans then, and
        go with the other orphans). A shard still running past that finds its set gone and says so."""
        try:
            cutoff = now - dt.timedelta(seconds=grace_seconds)
        except OverflowError:  # a grace period longer than the calendar: no write is that old
            return []
        session_of = read_session if dry_run else write_session
        with session_of(self.ctx.engine) as session:
            ids = [int(i) for i in session.scalars(select(PromptSetRow.id).where(PromptSetRow.status == "pending",
                                                                                  PromptSetRow.created_at <= cutoff).order_by(PromptSetRow.id))]
            if ids and not dry_run:
                for table in (PromptRowRow, PurgedRowRow):
                    session.execute(delete(table).where(table.set_id.in_(ids)))
                session.execute(delete(PromptSetRow).where(PromptSetRow.id.in_(ids)))
                self.ctx.audit(session, "gc_abandoned_writes", "store", self.ctx.store.location, {"pending_sets": ids})
        return ids

    def purge_user(self, user: str, *, reason: str | None = None, dry_run: bool = False) -> PurgeReport:
        """Delete a user everywhere: remove their prompt rows from every set (derived ones
        included), overwrite their rows in the store with zeros and verify the old bytes are gone,
        delete their per-user metrics, and mark them deleted. Every other user's data stays
        readable and checksum-valid. The audit log records the deletion (sets, row count, who,
        why), never the data. ``dry_run`` reports what would go and changes nothing.
        ``UnknownUserError`` if no such user; ``IntegrityError`` if the store kept the bytes."""
        validation.text(reason, "reason")
        now = self.ctx.now()
        session_scope = read_session if dry_run else write_session
        with session_scope(self.ctx.engine) as session:
            row = lookups.user_row(session, user)
            report = deletion.purge_user(session, self.ctx.store, row, dry_run=dry_run, now=now)
            if not dry_run:
                self.ctx.audit(session, "purge_user", "user", row.external_id, {
                    "user_id": row.id, "sets": list(report.sets), "rows_zeroed": report.rows_zeroed,
                    "visible_in": list(report.visible_in), "metrics_removed": report.metrics_removed,
                }, reason)
        if not dry_run:
            self.ctx.caches.forget()
            self._erase_pending()  # after the commit: a crash here leaves invisible, pending bytes, never a bad visible row
        return report

    def _erase_pending(self) -> int:
        """Zero and verify the bytes of every purged row whose erasure is pending (this purge's and
        any an interrupted purge left)."""
        with write_session(self.ctx.engine) as session:
            deletion.lock_catalogue(session)
            return deletion.erase_pending(session, self.ctx.store, self.ctx.now())
