"""``PromptReader``: the read path of an inference service (``Registry.reader``).

A reader is opened for one model and task and pins the version its alias (or version) resolved
to at open: every batch comes from that version until ``refresh`` swaps to the alias's current
one. ``batch(users)`` returns ``Tensor[n, prompt_len, width]`` in request order (duplicates
allowed) on the reader's device and dtype.

Two modes, by size:

* **resident**: when the set fits ``ReaderConfig.memory_budget_bytes`` (at the reader's dtype),
  a background thread loads every row (verified against its sha256) into one table on the device;
  a batch is then one ``index_select`` (a few microseconds for 256 users). Until the table is
  ready, batches are served by the LRU path below, so the first batch does not wait for the load;
* **lru**: otherwise, an LRU of ``lru_users`` hot users over verified point reads.

Users without a prompt in the pinned version follow ``missing``: ``error``
(``UnknownUserError`` naming them), ``zeros``, ``default`` (the prompt given as ``default``) or
``centroid`` (the mean prompt of the version, computed when the reader opens or refreshes).

Purges: a purge commits in the catalogue at once, but a reader holds copies. The reader checks
the catalogue at most every ``check_every_seconds`` (default 5 s; ``0``: before every batch; ``None``:
only on ``refresh``): when its version lost users (a purge, from any process) or the alias moved,
it rebuilds its state *before* serving the batch, so a purged user is never served after the
check that sees the purge. ``refresh()`` does the same on demand.

Thread safety: a batch reads one immutable snapshot of the state (version, table, index); a swap
replaces the snapshot in one assignment under a lock, so no batch ever mixes two versions. The LRU
has its own lock.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .._util import preview
from ..backbones.loader import Backbone, load_backbone, resolve_device
from ..core.services import Services
from ..data.dataset import Dataset
from ..dtypes import to_torch
from ..entities import PredictionResult, PromptSet
from ..errors import InvalidArgumentError, ModelMismatchError, UnknownUserError
from .predict import SetModel, as_dataset, check_pairs, prediction_result, read_pairs_csv, write_predictions_csv

MISSING = ("error", "zeros", "default", "centroid")


@dataclasses.dataclass(frozen=True)
class ReaderConfig:
    """How a reader holds and refreshes its prompts."""

    memory_budget_bytes: int = 2 * 2**30  # a set up to this size (at the reader's dtype) is held resident
    lru_users: int = 100_000  # hot users kept when the set is not resident
    missing: str = "error"  # error | zeros | default | centroid
    check_every_seconds: float | None = 5.0  # how stale a reader may be about purges and alias moves
    verify: bool = True  # check every row read from the store against its sha256

    def __post_init__(self) -> None:
        if self.missing not in MISSING:
            raise InvalidArgumentError(f"unknown missing-user policy {self.missing!r}; use one of {', '.join(MISSING)}")
        if self.memory_budget_bytes < 0 or self.lru_users < 1:
            raise InvalidArgumentError("memory_budget_bytes must be >= 0 and lru_users >= 1")
        if self.check_every_seconds is not None and self.check_every_seconds < 0:
            raise InvalidArgumentError("check_every_seconds must be >= 0 (or None: only on refresh)")


@dataclasses.dataclass
class _State:
    """One version as served: immutable once published, except the resident table arriving."""

    set: PromptSet
    fallback: torch.Tensor | None  # the prompt a missing user gets (zeros/default/centroid), or None (error)
    table: torch.Tensor | None = None  # resident: every row, then the fallback row last
    index: dict[str, int] | None = None  # resident: user -> row of ``table``


class PromptReader:
    def __init__(self, services: Services, model: str, task: str, *, alias: str | None = "production", version: int | None = None,
                 fingerprint: str | None = None, device: str = "cpu", dtype: torch.dtype | None = None,
                 config: ReaderConfig | None = None, default: Any = None) -> None:
        self._s = services
        self.model, self.task, self.alias, self.version = model, task, alias, version
        if (alias is None) == (version is None):
            raise InvalidArgumentError("open a reader on either an alias or a version")
        self.config = config or ReaderConfig()
        self.device = torch.device(resolve_device(device))
        info = services.models.get_model(model)
        if fingerprint is not None and fingerprint != info.fingerprint:
            raise ModelMismatchError(f"model {model!r} has fingerprint {info.fingerprint[:12]}, not {fingerprint[:12]}: its prompts are "
                                     "meaningless on other weights")
        self.fingerprint, self._width = info.fingerprint, info.hidden_size
        self._default = None if default is None else torch.as_tensor(np.asarray(default, dtype=np.float32))
        if self.config.missing == "default" and self._default is None:
            raise InvalidArgumentError("missing='default' needs the default prompt: pass default=")
        self._lock = threading.Lock()
        self._model_lock = threading.Lock()
        self._lru: collections.OrderedDict[str, torch.Tensor | None] = collections.OrderedDict()
        self._lru_set: int | None = None
        # bumped whenever the LRU is emptied for a new state: a batch that read users before (e.g.
        # before a purge, whose refresh keeps the set id) must not put them back afterwards
        self._lru_epoch = 0
        self._backbone: Backbone | None = None
        self._models: dict[tuple[int, str | None, int | None], SetModel] = {}
        self._checked = time.monotonic()
        first = self._resolve()
        self.dtype = dtype or getattr(torch, first.dtype)
        self._state = self._build(first, fresh=False)

    # -- what the reader serves -----------------------------------------------------------------
    @property
    def set(self) -> PromptSet:
        """The pinned version."""
        return self._state.set

    @property
    def mode(self) -> str:
        return "resident" if self._state.table is not None else "lru"

    def _ref(self) -> str:
        return f"{self.model}/{self.task}@{self.alias}" if self.alias is not None else f"{self.model}/{self.task}@v{self.version}"

    def _resolve(self) -> PromptSet:
        return self._s.reads.get_set(self._ref())

    def _fits(self, target: PromptSet) -> bool:
        nbytes = target.n_rows * target.prompt_len * target.width * torch.empty((), dtype=self.dtype).element_size()
        return nbytes <= self.config.memory_budget_bytes

    def _build(self, target: PromptSet, *, fresh: bool) -> _State:
        """The state serving ``target``: its fallback now, its resident table from a background thread."""
        if fresh:
            self._s.reads.forget_cached()  # a purge in another process changed who is in the set
        if target.width != self._width:
            raise ModelMismatchError(f"set {target.id} has width {target.width}, not model {self.model!r}'s")
        users = self._s.reads.list_set_users(target.id) if self.config.missing == "centroid" else None
        shape = (target.prompt_len, target.width)
        fallback: torch.Tensor | None = None
        rows: np.ndarray | None = None
        if self.config.missing == "zeros":
            fallback = torch.zeros(shape)
        elif self.config.missing == "default":
            assert self._default is not None
            if tuple(self._default.shape) != shape:
                raise InvalidArgumentError(f"the default prompt has shape {tuple(self._default.shape)}, the set's prompts {shape}")
            fallback = self._default
        elif self.config.missing == "centroid":
            assert users is not None
            _, rows = self._s.reads.read_members(target.id, users, verify=self.config.verify)
            fallback = torch.from_numpy(rows.astype(np.float32).mean(axis=0)) if len(rows) else torch.zeros(shape)
        state = _State(target, None if fallback is None else fallback.to(self.device, self.dtype))
        if self._fits(target):
            if users is not None and rows is not None:
                self._publish_table(state, users, rows)
            else:  # the first batches do not wait for the whole set
                threading.Thread(target=self._load, args=(state,), name="prompt-reader-load", daemon=True).start()
        return state

    def _load(self, state: _State) -> None:
        users = self._s.reads.list_set_users(state.set.id)
        _, rows = self._s.reads.read_members(state.set.id, users, verify=self.config.verify)
        self._publish_table(state, users, rows)

    def _publish_table(self, state: _State, users: list[str], rows: np.ndarray) -> None:
        table = to_torch(np.ascontiguousarray(rows)).to(self.dtype)
        extra = state.fallback.cpu()[None] if state.fallback is not None else torch.zeros((1, *table.shape[1:]), dtype=self.dtype)
        index = {u: i for i, u in enumerate(users)}
        with self._lock:
            state.index, state.table = index, torch.cat([table, extra.to(self.dtype)]).to(self.device)

    def wait_resident(self, timeout: float | None = None) -> bool:
        """Block until the resident table is loaded (``False`` on timeout or when the set is not resident)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._state.table is None:
            if not self._fits(self._state.set) or (deadline is not None and time.monotonic() > deadline):
                return False
            time.sleep(0.005)
        return True

    # -- reads ----------------------------------------------------------------------------------
    def batch(self, users: Sequence[str], *, fingerprint: str | None = None) -> torch.Tensor:
        """The prompts of ``users`` in request order: ``Tensor[n, prompt_len, width]`` on the reader's device."""
        if fingerprint is not None and fingerprint != self.fingerprint:
            raise ModelMismatchError(f"this reader serves model {self.model!r} (fingerprint {self.fingerprint[:12]}), not {fingerprint[:12]}")
        return self._gather(self._current(), list(map(str, users)))

    def _current(self) -> _State:
        """The state to serve now (after the purge and alias check, when one is due)."""
        every = self.config.check_every_seconds
        if every is not None and time.monotonic() - self._checked >= every:
            self.refresh()
        return self._state

    def _gather(self, state: _State, users: list[str]) -> torch.Tensor:
        table, index = state.table, state.index
        if table is not None and index is not None:
            n = table.shape[0] - 1
            rows = np.fromiter(map(index.get, users, itertools.repeat(n)), dtype=np.int64, count=len(users))
            if state.fallback is None and len(rows) and rows.max() == n:
                self._refuse(state, [u for u in users if u not in index])
            return table.index_select(0, torch.from_numpy(rows).to(table.device))
        return self._batch_lru(state, users)

    def _batch_lru(self, state: _State, users: list[str]) -> torch.Tensor:
        wanted = list(dict.fromkeys(users))
        with self._lock:
            if self._lru_set != state.set.id:
                self._lru.clear()
                self._lru_set = state.set.id
                self._lru_epoch += 1
            epoch = self._lru_epoch
            found = {u: self._lru[u] for u in wanted if u in self._lru}  # None: known to have no prompt in the set
            for u in found:
                self._lru.move_to_end(u)
        cold = [u for u in wanted if u not in found]
        if cold:
            present, rows = self._s.reads.read_members(state.set.id, cold, verify=self.config.verify)
            got = iter(to_torch(np.ascontiguousarray(rows)).to(self.dtype))
            fetched = {u: (next(got) if here else None) for u, here in zip(cold, present)}
            found.update(fetched)
            with self._lock:
                if self._lru_set == state.set.id and self._lru_epoch == epoch:
                    self._lru.update(fetched)
                    while len(self._lru) > self.config.lru_users:
                        self._lru.popitem(last=False)
        missing = [u for u, p in found.items() if p is None]
        if missing and state.fallback is None:
            self._refuse(state, missing)
        shape = (state.set.prompt_len, state.set.width)
        fallback = state.fallback.cpu() if state.fallback is not None else torch.zeros(shape, dtype=self.dtype)
        out = torch.stack([p if (p := found[u]) is not None else fallback for u in users]) if users else torch.zeros((0, *shape), dtype=self.dtype)
        return out.to(self.device, self.dtype)

    # -- predictions ----------------------------------------------------------------------------
    def predict(self, users: Sequence[str], items: Sequence[str], *, data: str | os.PathLike[str] | Dataset | None = None,
                backbone: Backbone | None = None, batch_size: int = 64) -> np.ndarray:
        """The task head's prediction (rating, or click probability) for each (user, item) pair, in
        order: the pinned version's prompts injected into the frozen model (``serving.predict``).
        ``data`` gives item texts (else the item string is its text), and the training rows a head
        with the item prior or a history template reads; the backbone is loaded once per reader."""
        return self._predict(self._current(), *check_pairs(users, items), data, backbone, batch_size)

    def _predict(self, state: _State, users: list[str], items: list[str], data: str | os.PathLike[str] | Dataset | None,
                 backbone: Backbone | None, batch_size: int) -> np.ndarray:
        model = self._set_model(state.set, as_dataset(data), backbone)
        unique = list(dict.fromkeys(users))
        position = {u: i for i, u in enumerate(unique)}
        user_index = np.fromiter(map(position.__getitem__, users), dtype=np.int64, count=len(users))
        return model.predict(self._gather(state, unique), users, items, user_index, batch_size)

    def predict_file(self, pairs: str | os.PathLike[str], out: str | os.PathLike[str], *, data: str | os.PathLike[str] | Dataset | None = None,
                     backbone: Backbone | None = None, batch_size: int = 64) -> PredictionResult:
        """``predict`` for a CSV of ``user_id,item_id`` pairs, written to ``out`` as ``user_id,item_id,prediction``."""
        started = time.perf_counter()
        users, items = read_pairs_csv(pairs)
        state = self._current()  # one version for the whole file
        predictions = self._predict(state, users, items, data, backbone, batch_size)
        return prediction_result(state.set, write_predictions_csv(out, users, items, predictions), users, predictions, started)

    def _set_model(self, prompt_set: PromptSet, data: Dataset | None, backbone: Backbone | None) -> SetModel:
        if backbone is not None and backbone.fingerprint != self.fingerprint:
            raise ModelMismatchError(f"backbone {backbone.name} is not model {self.model!r} (fingerprint {self.fingerprint[:12]})")
        key = (prompt_set.id, None if data is None else data.fingerprint, None if backbone is None else id(backbone))
        with self._model_lock:  # not the batch lock: loading a backbone takes seconds
            model = self._models.get(key)
            if model is None:
                if backbone is None:
                    self._backbone = backbone = self._backbone or load_backbone(self._s.models.get_model(self.model), device=str(self.device))
                model = SetModel.load(self._s, prompt_set, backbone, data)
                self._models = {k: v for k, v in self._models.items() if k[0] == prompt_set.id}  # older versions' heads go
                self._models[key] = model
        return model

    @staticmethod
    def _refuse(state: _State, missing: list[str]) -> None:
        raise UnknownUserError(f"prompt set {state.set.id} ({state.set.model}/{state.set.task} v{state.set.version}) has no prompt for "
                               f"{len(missing)} user(s): {preview(missing)}; open the reader with missing='zeros', 'default' or "
                               "'centroid' to serve them a fallback")

    # -- refresh --------------------------------------------------------------------------------
    def refresh(self) -> bool:
        """Swap to the alias's current version, and drop users purged since the last check (from
        any process); ``True`` when the state was rebuilt. The old state serves until the new one
        is ready (its fallback; the resident table then arrives in the background)."""
        current = self._resolve()
        self._checked = time.monotonic()
        served = self._state.set
        if current.id == served.id and current.n_users == served.n_users:
            return False
        state = self._build(current, fresh=True)
        with self._lock:
            self._state = state
            self._lru.clear()
            self._lru_set = current.id
            self._lru_epoch += 1
        return True
