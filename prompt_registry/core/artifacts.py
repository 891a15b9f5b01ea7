"""Adapters and task heads: safetensors blobs bound to model fingerprints, versioned by name."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sqlalchemy import func, select

from .. import validation
from .._context import Context
from ..db import lookups, mappers
from ..db.engine import read_session, write_session
from ..db.schema import ArtifactRow, ArtifactSourceRow
from ..entities import Artifact
from ..errors import ChecksumError, InvalidArgumentError, ModelMismatchError, UnknownArtifactError
from ..store import keys
from .writes import check_bytes_present


class ArtifactService:
    """Adapters and task heads: safetensors blobs bound to model fingerprints."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def put_artifact(
        self, kind: str, name: str, tensors: Mapping[str, Any], *, task: str, target_model: str,
        source_models: Sequence[str] = (), config: Mapping[str, Any] | None = None, run_id: int | None = None,
    ) -> Artifact:
        """Store an adapter or task head (safetensors) bound to model fingerprints; a new version of ``name``."""
        import torch
        from safetensors.torch import save as save_safetensors

        if kind not in ("adapter", "head"):
            raise InvalidArgumentError(f"unknown artifact kind {kind!r}; use 'adapter' or 'head'")
        if kind == "adapter" and not source_models:
            raise InvalidArgumentError("an adapter needs at least one source model")
        with read_session(self.ctx.engine) as session:
            target = lookups.model_row(session, target_model)
            sources = [lookups.model_row(session, m) for m in source_models]
            lookups.task_row(session, task)
        meta = {"kind": kind, "name": name, "task": task, "target_fingerprint": target.fingerprint,
                "source_fingerprints": json.dumps([s.fingerprint for s in sources]), "config": json.dumps(dict(config or {}))}
        payload = {k: (v if isinstance(v, torch.Tensor) else torch.from_numpy(np.asarray(v))).detach().cpu().contiguous() for k, v in tensors.items()}
        data = save_safetensors(payload, metadata=meta)
        store_key = keys.new_key(self.ctx.catalog_id, "artifact")
        self.ctx.store.put_blob(store_key, data)
        try:
            with write_session(self.ctx.engine) as session:
                target = lookups.model_row(session, target_model, lock=True)
                task_row = lookups.task_row(session, task)
                version = (session.scalar(select(func.max(ArtifactRow.version)).where(ArtifactRow.kind == kind, ArtifactRow.name == name)) or 0) + 1
                row = ArtifactRow(
                    kind=kind, name=name, version=version, task_id=task_row.id, target_model_id=target.id,
                    target_fingerprint=target.fingerprint, source_fingerprints=[s.fingerprint for s in sources],
                    config=dict(config or {}), store_key=store_key, sha256=hashlib.sha256(data).hexdigest(),
                    nbytes=len(data), run_id=run_id, created_at=self.ctx.now(), created_by=self.ctx.actor,
                )
                session.add(row)
                session.flush()
                check_bytes_present(self.ctx.store, store_key)
                for pos, src in enumerate(sources):
                    session.add(ArtifactSourceRow(artifact_id=row.id, position=pos, model_id=src.id))
                self.ctx.audit(session, "put_artifact", kind, row.id, {"name": name, "version": version, "sha256": row.sha256})
                session.flush()
                return mappers.artifact_entity(session, row)
        except BaseException:
            self.ctx.store.delete(store_key)
            raise

    def get_artifact(self, artifact_id: int) -> Artifact:
        """An adapter or head by id (``UnknownArtifactError`` if none)."""
        with read_session(self.ctx.engine) as session:
            row = session.get(ArtifactRow, validation.as_id(artifact_id, "an artifact id"))
            if row is None:
                raise UnknownArtifactError(f"no artifact with id {artifact_id}; see `prompt-registry adapter list`")
            return mappers.artifact_entity(session, row)

    def list_artifacts(self, *, kind: str | None = None, task: str | None = None, target_model: str | None = None) -> list[Artifact]:
        """Adapters and heads, newest first, optionally filtered."""
        with read_session(self.ctx.engine) as session:
            stmt = select(ArtifactRow).order_by(ArtifactRow.id.desc())
            if kind is not None:
                stmt = stmt.where(ArtifactRow.kind == kind)
            if task is not None:
                stmt = stmt.where(ArtifactRow.task_id == lookups.task_row(session, task).id)
            if target_model is not None:
                stmt = stmt.where(ArtifactRow.target_model_id == lookups.model_row(session, target_model).id)
            return [mappers.artifact_entity(session, r) for r in session.scalars(stmt)]

    def load_artifact(self, artifact_id: int, *, fingerprint: str | None = None,
                      source_fingerprints: Sequence[str] | None = None) -> tuple[Artifact, dict[str, Any]]:
        """The artifact and its tensors (``torch``), checksum-verified.

        ``fingerprint``/``source_fingerprints``: the models the caller will use it with; a
        mismatch raises ``ModelMismatchError``.
        """
        from safetensors.torch import load as load_safetensors

        artifact = self.get_artifact(artifact_id)
        if fingerprint is not None and fingerprint != artifact.target_fingerprint:
            raise ModelMismatchError(
                f"{artifact.kind} {artifact.id} ({artifact.name} v{artifact.version}) was trained for target "
                f"model {artifact.target_model!r} ({artifact.target_fingerprint[:12]}), not for a model with "
                f"fingerprint {fingerprint[:12]}; train a new one for that model"
            )
        if source_fingerprints is not None and list(source_fingerprints) != list(artifact.source_fingerprints):
            raise ModelMismatchError(
                f"{artifact.kind} {artifact.id} maps from {list(artifact.source_models)}; the given source models "
                "have other fingerprints (or order)"
            )
        data = self.ctx.store.get_blob(artifact.store_key)
        if hashlib.sha256(data).hexdigest() != artifact.sha256:
            raise ChecksumError(
                f"{artifact.kind} {artifact.id} blob {artifact.store_key!r} fails its sha256 check; "
                "restore it from backup or retrain it"
            )
        return artifact, load_safetensors(data)
