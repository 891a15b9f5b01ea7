"""Facts about the catalogue itself (``registry_info``): its id."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..errors import SchemaError
from .schema import RegistryInfoRow

CATALOG_ID = "catalog_id"


def catalog_id(session: Session) -> str:
    """The catalogue's id (made by Alembic revision 0006)."""
    value = session.scalar(select(RegistryInfoRow.value).where(RegistryInfoRow.key == CATALOG_ID))
    if value is None:
        raise SchemaError("the catalogue has no id (registry_info.catalog_id is missing); restore it from backup")
    return value


def set_catalog_id(session: Session, value: str) -> None:
    row = session.get(RegistryInfoRow, CATALOG_ID)
    if row is None:
        session.add(RegistryInfoRow(key=CATALOG_ID, value=value))
    else:
        row.value = value
