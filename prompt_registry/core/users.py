"""Users by external id: validation of ids, registration, listings."""

from __future__ import annotations

import collections
from collections.abc import Iterable

from sqlalchemy import func, select

from .. import validation
from .._context import Context
from .._util import aware, preview
from ..db import lookups
from ..db.engine import read_session, write_session
from ..db.schema import UserRow
from ..entities import User
from ..errors import DuplicateUserError, InvalidArgumentError, UnknownUserError


def check_user_ids(users: Iterable[str], *, what: str) -> list[str]:
    ids = list(map(str, users))
    if not ids:
        raise UnknownUserError(f"no {what} given")
    lengths = list(map(len, ids))
    longest = validation.MAX_USER_ID_CHARS
    if min(lengths) < 1 or max(lengths) > longest or any(map(str.isspace, ids)):  # C loops: 100,000 ids in ms
        bad = [u for u in ids if not u.strip() or len(u) > longest]
        raise InvalidArgumentError(f"invalid user id(s) {preview(bad)}: ids are 1-{longest} non-blank characters")
    unfit = validation.unfit_ids(ids)
    if unfit:
        raise InvalidArgumentError(f"invalid user id(s) {preview(unfit)}: ids may not hold control characters (NUL, tab, newline, ...) "
                                   "and need a visible character")
    if len(set(ids)) != len(ids):
        dupes = sorted(u for u, n in collections.Counter(ids).items() if n > 1)
        raise DuplicateUserError(f"user id(s) given more than once: {preview(dupes)}; each user may appear once")
    return ids


class UserService:
    """Users by external id: register, list, count."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def add_users(self, users: Iterable[str], *, exist_ok: bool = False) -> int:
        """Register users by external id; returns how many were new.

        ``DuplicateUserError`` for an id given twice, or (unless ``exist_ok``) already registered.
        """
        ids = check_user_ids(users, what="users to add")
        with write_session(self.ctx.engine) as session:
            existing = lookups.user_ids(session, ids)
            if existing and not exist_ok:
                raise DuplicateUserError(
                    f"{len(existing)} user(s) already exist: {preview(sorted(existing))}; "
                    "pass exist_ok=True (`--skip-existing`) to add only the new ones"
                )
            new = [u for u in ids if u not in existing]
            lookups.insert_users(session, new)
            if new:
                self.ctx.audit(session, "add_users", "users", len(new), {"count": len(new), "first": new[:5]})
            return len(new)

    def list_users(self, *, limit: int | None = 100, offset: int = 0, include_deleted: bool = False) -> list[User]:
        """Users in registration order (``limit=None`` for all)."""
        with read_session(self.ctx.engine) as session:
            stmt = select(UserRow).order_by(UserRow.id).offset(validation.count(offset, "offset", allow_none=False))
            if not include_deleted:
                stmt = stmt.where(UserRow.deleted_at.is_(None))
            if validation.count(limit, "limit") is not None:
                stmt = stmt.limit(limit)
            return [User(r.id, r.external_id, aware(r.created_at), aware(r.deleted_at)) for r in session.scalars(stmt)]

    def count_users(self) -> int:
        """How many (non-deleted) users are registered."""
        with read_session(self.ctx.engine) as session:
            return session.scalar(select(func.count()).select_from(UserRow).where(UserRow.deleted_at.is_(None))) or 0
