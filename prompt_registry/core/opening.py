"""Opening and creating registries: resolve the location, check (or upgrade) the schema, open the
store and bind it to the catalogue, build the ``Context``."""

from __future__ import annotations

import errno
import os

from sqlalchemy import Engine

from .._context import Context, default_actor
from .._util import utcnow
from ..db import info, lookups, migrations
from ..db.engine import make_engine, read_session, write_session
from ..db.schema import AuditEventRow
from ..errors import MissingDataError, RegistryNotFoundError, SchemaError, StoreBindingError
from ..location import DB_FILE, Location, resolve_location
from ..store import keys
from ..store.base import TensorStore
from ..store.resolve import is_memory, open_store

Where = str | os.PathLike[str] | None


def _binding_message(loc: Location, bound: str, mine: str | None) -> str:
    this = f"{loc.display} (catalogue {mine[:12]})" if mine else f"the new registry at {loc.display}"
    return (
        f"the tensor store {loc.store} belongs to another catalogue (id {bound[:12]}), not to {this}: "
        "a store serves one catalogue, and two registries sharing one would delete each other's data. "
        "Give this registry its own store: pass --store DIR (Python: store=...), or, for a directory "
        "registry, unset PROMPT_REGISTRY_STORE so that it uses the store inside its directory"
    )


def bind_store(engine: Engine, store: TensorStore, loc: Location) -> str:
    """Bind ``store`` to the catalogue of ``engine`` (or check that it is); returns the catalogue id.

    A store already bound to another id is refused, except in one case that proves ownership: the
    catalogue's own objects carry the store's id and none carries the catalogue's (the catalogue was
    downgraded below revision 0006 and upgraded again, which made it a new id). Then the catalogue
    takes its old id back.
    """
    with read_session(engine) as session:
        mine = info.catalog_id(session)
    bound = store.bound_catalog()
    if bound is None:
        try:
            bound = store.bind(mine)
        except OSError as exc:
            if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise
            return mine  # a read-only store: nothing can be written (or deleted) through us either
    if bound == mine:
        return mine
    with write_session(engine) as session:
        owners = {keys.owner(k) for k in lookups.referenced_keys(session)}
        if bound in owners and mine not in owners:
            info.set_catalog_id(session, bound)
            session.add(AuditEventRow(at=utcnow(), actor=default_actor(), action="restore_catalog_id", object_kind="registry",
                                      object_id=loc.display, reason=None, details={"catalog_id": bound, "replaced": mine}))
            return bound
    raise StoreBindingError(_binding_message(loc, bound, mine))


def _existing_binding(loc: Location) -> str | None:
    """The catalogue an existing store is bound to (``None``: no store there yet, or unbound)."""
    if is_memory(loc.store):
        return None
    try:
        existing = open_store(loc.store, create=False)
    except MissingDataError:
        return None
    try:
        return existing.bound_catalog()
    finally:
        existing.close()


def _is_new_catalogue(loc: Location) -> bool:
    if loc.directory is not None:
        return not (loc.directory / DB_FILE).exists()
    engine = make_engine(loc.db_url)
    try:
        return migrations.current_revision(engine) is None
    except Exception:  # noqa: BLE001 - unreachable: init reports it when it connects
        return False
    finally:
        engine.dispose()


def require_directory(loc: Location) -> None:
    if loc.directory is not None and not (loc.directory / DB_FILE).exists():
        raise RegistryNotFoundError(
            f"no registry at {loc.directory}; create one with `prompt-registry init "
            f"--registry {loc.directory}` or point --registry / PROMPT_REGISTRY_URL at an existing one"
        )


def create(location: Where, store: Where, actor: str | None) -> Context:
    """Create a registry (or bring an existing one to the current schema) and its context.

    ``StoreBindingError`` (before anything is created) if the store already belongs to another
    catalogue.
    """
    loc = resolve_location(location, store)
    bound = _existing_binding(loc)
    if bound is not None and _is_new_catalogue(loc):
        raise StoreBindingError(_binding_message(loc, bound, None))
    if loc.directory is not None:
        loc.directory.mkdir(parents=True, exist_ok=True)
    engine = make_engine(loc.db_url)
    try:
        before, after = migrations.upgrade(engine)
        tensor_store = open_store(loc.store, create=True)
        catalog_id = bind_store(engine, tensor_store, loc)
    except BaseException:
        engine.dispose()
        raise
    ctx = Context(engine, tensor_store, where=loc.display, catalog_id=catalog_id, actor=actor)
    if before != after:
        with write_session(engine) as session:
            ctx.audit(session, "init", "registry", loc.display, {"schema": after, "store": loc.store, "catalog_id": catalog_id})
    return ctx


def open_existing(location: Where, store: Where, actor: str | None) -> Context:
    """The context of an existing registry; ``SchemaError`` if its schema is not this package's
    head, ``StoreBindingError`` if the store belongs to another catalogue."""
    loc = resolve_location(location, store)
    require_directory(loc)
    engine = make_engine(loc.db_url)
    try:
        migrations.check_schema(engine, loc.display)
    except SchemaError:
        engine.dispose()
        raise
    except Exception as exc:  # connection refused, bad URL, ...
        engine.dispose()
        cause = getattr(exc, "orig", None) or exc  # the driver's words, not SQLAlchemy's wrapper
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        raise RegistryNotFoundError(
            f"cannot open the catalogue at {loc.display}: {first}; check --registry / PROMPT_REGISTRY_URL and that the server is up"
        ) from exc
    try:
        tensor_store = open_store(loc.store, create=False)
        catalog_id = bind_store(engine, tensor_store, loc)
    except BaseException:
        engine.dispose()
        raise
    return Context(engine, tensor_store, where=loc.display, catalog_id=catalog_id, actor=actor)


def upgrade(location: Where, store: Where) -> tuple[str | None, str]:
    """Apply the packaged Alembic migrations; returns (revision before, revision after)."""
    loc = resolve_location(location, store)
    require_directory(loc)
    engine = make_engine(loc.db_url)
    try:
        return migrations.upgrade(engine)
    finally:
        engine.dispose()
