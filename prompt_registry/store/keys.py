"""Store keys: every key a registry writes names the catalogue that wrote it.

A key is ``KIND-CATALOGUE-TOKEN[.SUFFIX]``: ``set-<catalogue id>-<uuid or idempotency key>`` for
a prompt set's array, ``artifact-<catalogue id>-<uuid>.safetensors`` for an adapter or head,
``shard-<catalogue id>-<token>.safetensors`` for the row digests one shard of a sharded write
made durable (read by the process that commits the set, then deleted; gc removes those of a
write that never committed).
The catalogue id (32 hex digits, made once per catalogue by Alembic revision 0006) is what lets
``doctor`` and ``gc`` prove that an unreferenced object is *their own* orphan: an interrupted
write of this catalogue. Anything else in the store (keys of the format before revision 0006,
another registry's keys, an operator's files) is foreign: reported, never deleted.
"""

from __future__ import annotations

import re
import uuid

from .._util import echo
from ..errors import InvalidArgumentError

KINDS = ("set", "artifact", "shard")
_SUFFIX = {"set": "", "artifact": ".safetensors", "shard": ".safetensors"}
_OWNED = re.compile(r"^(set|artifact|shard)-([0-9a-f]{32})-[0-9a-f]{16,64}(\.safetensors)?$")
_CATALOG_ID = re.compile(r"^[0-9a-f]{32}$")


def check_catalog_id(catalog_id: str) -> str:
    if not _CATALOG_ID.match(catalog_id):
        raise InvalidArgumentError(f"catalogue id {echo(catalog_id)} is not 32 lowercase hex digits")
    return catalog_id


def new_key(catalog_id: str, kind: str, token: str | None = None) -> str:
    """A fresh key for an object of ``kind`` written by catalogue ``catalog_id``; ``token``
    (hex, 16-64 digits) makes it deterministic, e.g. an idempotency key."""
    if kind not in KINDS:
        raise InvalidArgumentError(f"unknown store object kind {echo(kind)}; use one of {', '.join(KINDS)}")
    token = uuid.uuid4().hex if token is None else token
    key = f"{kind}-{check_catalog_id(catalog_id)}-{token}{_SUFFIX[kind]}"
    if not _OWNED.match(key):
        raise InvalidArgumentError(f"invalid key token {echo(token)}: use 16-64 lowercase hex digits")
    return key


def owner(key: str) -> str | None:
    """The id of the catalogue that wrote ``key``, or ``None`` if the key does not say."""
    match = _OWNED.match(key)
    return match.group(2) if match else None
