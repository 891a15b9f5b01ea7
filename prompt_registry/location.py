"""Where a registry lives: a directory (SQLite + Zarr inside), or a database URL plus a store."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from sqlalchemy.engine import make_url

from .errors import RegistryNotFoundError

DEFAULT_DIR = ".prompt-registry"
DB_FILE = "registry.db"
STORE_DIR = "store"
ENV_URL = "PROMPT_REGISTRY_URL"
ENV_STORE = "PROMPT_REGISTRY_STORE"


@dataclasses.dataclass(frozen=True)
class Location:
    db_url: str
    store: str  # a store location for ``store.resolve.open_store``: a directory, s3://bucket/prefix or memory://
    display: str  # what messages call this registry
    directory: Path | None  # the embedded registry folder, when there is one


def resolve_location(location: str | os.PathLike[str] | None = None, store: str | os.PathLike[str] | None = None) -> Location:
    """Turn ``--registry``/``--store`` (or their environment variables) into a ``Location``.

    * a path (default ``./.prompt-registry``): SQLite ``registry.db`` and Zarr ``store/`` inside;
    * a ``sqlite:///`` URL: that file, with the store beside it unless ``store`` is given;
    * any other URL (``postgresql+psycopg://...``): ``store`` is required.
    """
    raw = os.fspath(location) if location is not None else os.environ.get(ENV_URL) or DEFAULT_DIR
    store_raw = os.fspath(store) if store is not None else os.environ.get(ENV_STORE)
    if "://" not in raw:
        directory = Path(raw).expanduser().absolute()
        store_path = store_raw or str(directory / STORE_DIR)
        return Location(f"sqlite:///{directory / DB_FILE}", store_path, str(directory), directory)
    url = make_url(raw)
    if url.get_backend_name() == "sqlite":
        db_file = Path(url.database or "").expanduser().absolute()
        store_path = store_raw or str(db_file.parent / STORE_DIR)
        return Location(raw, store_path, raw, None)
    if not store_raw:
        raise RegistryNotFoundError(
            f"a {url.get_backend_name()} catalogue needs a tensor store: pass --store DIR_OR_URL or set "
            f"{ENV_STORE} (a local directory for the Zarr arrays, or s3://BUCKET/PREFIX)"
        )
    return Location(raw, store_raw, url.render_as_string(hide_password=True), None)
