"""Reading prompts: which version a call means, fingerprint checks, batched verified reads, export."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from .. import fileio, names, validation
from .._context import Context
from ..db import lookups, mappers
from ..db.engine import read_session
from ..db.schema import AliasRow, BaseModelRow, PromptSetRow, TagRow, TaskRow
from ..dtypes import to_torch
from ..entities import ExportResult, PromptSet
from ..errors import InvalidArgumentError, ModelMismatchError, UnknownSetError
from ..names import LATEST
from . import resolution


class SetReader:
    """Set resolution and prompt reads (manifests cached in the context)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def get_set(self, ref: int | str | PromptSet) -> PromptSet:
        """A prompt set by id or ``MODEL/TASK@ALIAS`` (``@latest``, ``@vN``)."""
        with read_session(self.ctx.engine) as session:
            return mappers.set_entities(session, [lookups.resolve_set(session, self.ctx.caches.pair_ids, ref)])[0]

    def _read_target(self, session: Session, model: str | None, task: str | None, alias: str | None, version: int | None,
        set: int | str | PromptSet | None) -> PromptSetRow:
        if set is not None:
            if alias is not None or version is not None:
                raise InvalidArgumentError("give either set= or alias=/version=, not both")
            return lookups.resolve_set(session, self.ctx.caches.pair_ids, set, model=model, task=task)
        if model is None or task is None:
            raise UnknownSetError("say which prompts: model= and task= (with alias= or version=), or set=")
        if alias is not None and version is not None:
            raise InvalidArgumentError("give either alias= or version=, not both")
        return lookups.select_set(session, self.ctx.caches.pair_ids, model, task, f"v{version}" if version is not None else (alias or LATEST))

    @staticmethod
    def _check_fingerprint(session: Session, row: PromptSetRow, fingerprint: str | None) -> None:
        if fingerprint is None:
            return
        model = session.get_one(BaseModelRow, row.model_id)
        if model.fingerprint != fingerprint:
            raise ModelMismatchError(
                f"prompt set {row.id} was made for model {model.name!r} with fingerprint "
                f"{model.fingerprint[:12]}, but the caller's model has {fingerprint[:12]}: these prompts "
                "are meaningless on other weights; migrate them to the new model"
            )

    def get_prompt(
        self, user: str, model: str | None = None, task: str | None = None, *, alias: str | None = None,
        version: int | None = None, set: int | str | PromptSet | None = None, fingerprint: str | None = None,
        verify: bool = True,
    ) -> Any:
        """One user's prompt as a ``torch.Tensor`` of shape ``(prompt_len, width)``.

        Pick the version with ``alias`` (default ``latest``), ``version`` or ``set``. Pass the
        serving model's ``fingerprint`` to refuse prompts made for other weights
        (``ModelMismatchError``). ``verify`` checks the row's sha256 (``ChecksumError``).
        """
        return self.get_prompts([user], model, task, alias=alias, version=version, set=set, fingerprint=fingerprint, verify=verify)[0]

    def get_prompts(
        self, users: Sequence[str], model: str | None = None, task: str | None = None, *, alias: str | None = None,
        version: int | None = None, set: int | str | PromptSet | None = None, fingerprint: str | None = None,
        verify: bool = True, scan: bool = False, window: tuple[str, str] | None = None,
    ) -> Any:
        """Prompts of many users, ordered as asked: ``torch.Tensor`` ``(len(users), prompt_len, width)``.
        ``scan``: the caller streams through the set, reading each row once (an apply): the rows
        are verified but not kept for later reads (``TensorStore.read_verified``). ``window``:
        ``(first, last)`` user of the range of the version's sorted users the caller reads in
        batches (an apply shard): only that range is resolved, not the whole version."""
        users = list(map(str, users))
        with read_session(self.ctx.engine) as session:
            row = self._read_target(session, model, task, alias, version, set)
            self._check_fingerprint(session, row, fingerprint)
            _, data = resolution.read_users(self.ctx, session, row, users, verify, scan=scan, window=window)
        return to_torch(data)

    def forget_cached(self) -> None:
        """Drop what this process cached about versions (their manifests): another process purged
        users, so the versions they were in hold fewer users now."""
        self.ctx.caches.forget()

    def read_members(self, set_id: int, users: Sequence[str], *, verify: bool = True) -> tuple[list[bool], np.ndarray]:
        """For serving: which of ``users`` have a prompt in set ``set_id``, and the rows of those
        that do, in order (verified unless ``verify`` is false)."""
        users = list(map(str, users))
        with read_session(self.ctx.engine) as session:
            row = lookups.resolve_set(session, self.ctx.caches.pair_ids, set_id)
            found, data = resolution.read_users(self.ctx, session, row, users, verify, only_present=True)
        held = set(found)
        return [u in held for u in users], data

    def list_set_users(self, ref: int | str | PromptSet, *, resolve: bool = True) -> list[str]:
        """Every user with a prompt in this version (through its incremental bases), sorted.
        ``resolve=False``: only the names are fetched, and the version's manifest (where each
        row lives, kept for the reads that follow) is neither built nor cached: for a caller
        that reads only a part of the version (an apply shard)."""
        with read_session(self.ctx.engine) as session:
            row = lookups.resolve_set(session, self.ctx.caches.pair_ids, ref)
            with self.ctx.caches.lock:
                cached = row.id in self.ctx.caches.manifests
            if not resolve and not cached:
                return sorted(lookups.set_user_names(session, [set_id for set_id, _ in resolution.chain_of(self.ctx, session, row)]))
            return sorted(resolution.manifest_for(self.ctx, session, row, None).users)

    def export_prompts(self, ref: int | str | PromptSet, path: str | os.PathLike[str], *, verify: bool = True, format: str | None = None,
                       users: Sequence[str] | None = None) -> ExportResult:
        """Write every user's prompt (or ``users``') of a version to ``.safetensors`` or ``.npy``
        (+ ``.users.csv``), or with ``format="peft"`` one PEFT prompt-tuning folder per user under
        the folder ``path`` (``peftio``: ``path/<user id made filesystem-safe>/``, base model name and
        revision in its config, our fingerprint and the set in its safetensors metadata)."""
        path = Path(path)
        if format not in (None, "peft"):
            raise InvalidArgumentError(f"unknown export format {format!r}: leave it out (.safetensors / .npy by the file name) or use 'peft'")
        with read_session(self.ctx.engine) as session:
            row = lookups.resolve_set(session, self.ctx.caches.pair_ids, ref)
            users, array = resolution.read_users(self.ctx, session, row, None if users is None else list(map(str, users)), verify, scan=True)
            model_row = session.get_one(BaseModelRow, row.model_id)
            task_row = session.get_one(TaskRow, row.task_id)
        if format == "peft":
            return self._export_peft(path, row, model_row, task_row, users, array)
        meta = {
            "set_id": str(row.id), "model": model_row.name, "model_fingerprint": model_row.fingerprint,
            "task": task_row.name, "version": str(row.version), "sha256": row.sha256,
        }
        fmt, users_path = fileio.save_prompt_file(path, array, users, meta)
        return ExportResult(row.id, str(path), str(users_path) if users_path else None, fmt, len(users), int(array.nbytes))

    @staticmethod
    def _export_peft(path: Path, row: PromptSetRow, model_row: BaseModelRow, task_row: TaskRow, users: Sequence[str],
                     array: np.ndarray) -> ExportResult:
        from .. import peftio

        decoder = model_row.architecture.endswith(("ForCausalLM", "LMHeadModel"))
        layers = heads = None
        try:  # the base model's depth and heads, as PEFT records them (the folder may be gone: then left out)
            config = json.loads((Path(model_row.source) / "config.json").read_text())
            layers, heads = config.get("num_hidden_layers"), config.get("num_attention_heads")
        except (OSError, ValueError):
            pass
        cfg = peftio.peft_config(base_model=model_row.source, revision=model_row.revision, num_virtual_tokens=row.prompt_len,
                                 token_dim=row.width, decoder=decoder, num_layers=layers, num_attention_heads=heads)
        folders: dict[str, str] = {}
        for user, prompt in zip(users, array):
            name = peftio.safe_dirname(user)
            if name in folders:
                raise InvalidArgumentError(f"users {folders[name]!r} and {user!r} map to the same folder name {name!r}")
            folders[name] = user
        path.mkdir(parents=True, exist_ok=True)
        for name, prompt in zip(folders, array):
            peftio.write_folder(path / name, prompt, cfg, {  # in the stored dtype (bfloat16 as BF16); PEFT casts on load
                "fingerprint": model_row.fingerprint, "set": f"{row.id}", "ref": f"{model_row.name}/{task_row.name}@v{row.version}",
                "user": folders[name], "model": model_row.name, "task": task_row.name})
        return ExportResult(row.id, str(path), None, "peft", len(users), int(array.nbytes))

    def list_sets(self, *, model: str | None = None, task: str | None = None, tag: str | None = None, alias: str | None = None,
        include_deleted: bool = False) -> list[PromptSet]:
        """Prompt sets, newest first, filtered by model, task, tag name and alias name."""
        with read_session(self.ctx.engine) as session:
            stmt = select(PromptSetRow).order_by(PromptSetRow.id.desc())
            if model is not None:
                stmt = stmt.where(PromptSetRow.model_id == lookups.model_row(session, model).id)
            if task is not None:
                stmt = stmt.where(PromptSetRow.task_id == lookups.task_row(session, task).id)
            if tag is not None:
                stmt = stmt.where(PromptSetRow.id.in_(select(TagRow.set_id).where(TagRow.name == validation.label(tag, "tag name"))))
            if alias is not None:
                stmt = stmt.where(PromptSetRow.id.in_(select(AliasRow.set_id).where(AliasRow.name == names.alias_or_task(alias, "alias name"))))
            stmt = stmt.where(PromptSetRow.status == "committed") if not include_deleted else stmt.where(PromptSetRow.status != "pending")
            return mappers.set_entities(session, session.scalars(stmt).all())
