"""A Hypothesis state machine of registry operations, checked against a plain in-memory model after
every step: imports (new and incremental), alias moves and deletions, purges, retention gc and
reads. SQLite, a short run in the default suite; a longer one (and Postgres) is

    PROMPT_REGISTRY_STATE_EXAMPLES=500 PROMPT_REGISTRY_STATE_BACKEND=postgres python -m pytest tests/test_state_machine.py
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid

import numpy as np
import pytest
import sqlalchemy as sa
from conftest import PG_URL, make_fake_model, pg_unreachable_reason
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import prompt_registry as pr
from prompt_registry import Registry

POOL = [f"p{i:02d}" for i in range(10)]
WIDTH = 4
EXAMPLES = int(os.environ.get("PROMPT_REGISTRY_STATE_EXAMPLES", "12"))
BACKEND = os.environ.get("PROMPT_REGISTRY_STATE_BACKEND", "sqlite")
MODEL_DIR = tempfile.mkdtemp(prefix="state-machine-model-")
make_fake_model(__import__("pathlib").Path(MODEL_DIR) / "a", WIDTH, seed=1)


class RegistryMachine(RuleBasedStateMachine):
    """The model: every live version's view (user -> prompt), its base, the aliases, purged users."""

    @initialize()
    def open_registry(self) -> None:
        self.root = tempfile.mkdtemp(prefix="state-machine-")
        self.schema = None
        if BACKEND == "postgres":
            self.schema = f"sm_{uuid.uuid4().hex[:12]}"
            self.admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
            with self.admin.connect() as conn:
                conn.execute(sa.text(f'CREATE SCHEMA "{self.schema}"'))
            location, store = f"{PG_URL}?options=-csearch_path%3D{self.schema}", os.path.join(self.root, "store")
        else:
            location, store = os.path.join(self.root, "registry"), None
        self.reg = Registry.init(location, store=store, actor="machine")
        self.reg.register_model("a", os.path.join(MODEL_DIR, "a"))
        self.reg.add_task("t", "rating")
        self.views: dict[int, dict[str, np.ndarray]] = {}
        self.bases: dict[int, int | None] = {}
        self.aliases: dict[str, int] = {}
        self.purged: set[str] = set()
        self.counter = 0

    def teardown(self) -> None:
        if hasattr(self, "reg"):
            self.reg.close()
            if self.schema is not None:
                with self.admin.connect() as conn:
                    conn.execute(sa.text(f'DROP SCHEMA "{self.schema}" CASCADE'))
                self.admin.dispose()
            shutil.rmtree(self.root, ignore_errors=True)

    def _rows(self, users: list[str]) -> np.ndarray:
        self.counter += 1
        return np.random.default_rng(self.counter).normal(size=(len(users), 1, WIDTH)).astype(np.float32)

    # -------------------------------------------------------------------------------------- rules
    @rule(picks=st.sets(st.sampled_from(POOL), min_size=1, max_size=6))
    def import_new(self, picks: set[str]) -> None:
        users = sorted(picks - self.purged)
        if not users:
            return
        rows = self._rows(users)
        made = self.reg.import_prompts("a", "t", rows, users, create_users=True)
        self.views[made.id] = dict(zip(users, rows))
        self.bases[made.id] = None

    @precondition(lambda self: bool(self.views))
    @rule(data=st.data(), picks=st.sets(st.sampled_from(POOL), min_size=1, max_size=4))
    def import_incremental(self, data: st.DataObject, picks: set[str]) -> None:
        base = data.draw(st.sampled_from(sorted(self.views)))
        users = sorted(picks - self.purged)
        if not users:
            return
        rows = self._rows(users)
        made = self.reg.import_prompts("a", "t", rows, users, base=base, create_users=True)
        self.views[made.id] = {**self.views[base], **dict(zip(users, rows))}
        self.bases[made.id] = base

    @precondition(lambda self: bool(self.views))
    @rule(data=st.data(), name=st.sampled_from(["production", "staging"]))
    def move_alias(self, data: st.DataObject, name: str) -> None:
        target = data.draw(st.sampled_from(sorted(self.views)))
        self.reg.set_alias(name, target, reason="machine")
        self.aliases[name] = target

    @precondition(lambda self: bool(self.aliases))
    @rule(data=st.data())
    def delete_alias(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.aliases)))
        self.reg.delete_alias(name, "a", "t", reason="machine")
        del self.aliases[name]

    @rule(user=st.sampled_from(POOL))
    def purge(self, user: str) -> None:
        known = user in self.purged or any(user in v for v in self.views.values()) or self._was_created(user)
        if not known:
            with pytest.raises(pr.UnknownUserError):
                self.reg.purge_user(user)
            return
        self.reg.purge_user(user, reason="machine")
        self.purged.add(user)
        for view in self.views.values():
            view.pop(user, None)

    def _was_created(self, user: str) -> bool:
        try:
            self.reg.user_history(user)
            return True
        except pr.UnknownUserError:
            return False

    @rule(keep_last=st.integers(1, 3))
    def retention_gc(self, keep_last: int) -> None:
        newest = sorted(self.views)[-keep_last:]
        keep = set(newest) | set(self.aliases.values())
        frontier = list(keep)
        while frontier:  # lineage: a kept incremental version keeps its bases
            base = self.bases.get(frontier.pop())
            if base is not None and base not in keep:
                keep.add(base)
                frontier.append(base)
        report = self.reg.gc(keep_last=keep_last, grace_seconds=0)
        assert set(report.removed_sets) == set(self.views) - keep, (report.removed_sets, sorted(self.views), keep)
        for gone in set(self.views) - keep:
            del self.views[gone]

    @precondition(lambda self: bool(self.purged))
    @rule(data=st.data())
    def a_purged_user_cannot_come_back(self, data: st.DataObject) -> None:
        user = data.draw(st.sampled_from(sorted(self.purged)))
        with pytest.raises(pr.PromptRegistryError):
            self.reg.import_prompts("a", "t", self._rows([user]), [user], create_users=True)

    # --------------------------------------------------------------------------------- invariants
    @invariant()
    def every_version_reads_as_the_model_says(self) -> None:
        if not hasattr(self, "reg"):
            return
        live = {s.id for s in self.reg.list_sets(model="a", task="t")}
        assert live == set(self.views), (sorted(live), sorted(self.views))
        for set_id, view in self.views.items():
            users = sorted(view)
            assert self.reg.list_set_users(set_id) == users
            if users:
                np.testing.assert_array_equal(self.reg.get_prompts(users, set=set_id).numpy(), np.stack([view[u] for u in users]))
        for name, target in self.aliases.items():
            assert self.reg.get_alias(name, "a", "t").set_id == target

    @invariant()
    def doctor_is_clean(self) -> None:
        if hasattr(self, "reg") and self.counter % 3 == 0:  # every third step: doctor hashes every row
            report = self.reg.doctor()
            assert report.ok, report.problems


RegistryMachine.TestCase.settings = settings(max_examples=EXAMPLES, stateful_step_count=12, deadline=None,
                                             suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def test_registry_operations_match_the_model():
    if BACKEND == "postgres" and pg_unreachable_reason() is not None:
        pytest.skip(f"POSTGRES SKIPPED: {pg_unreachable_reason()}")
    RegistryMachine.TestCase("runTest").runTest()
