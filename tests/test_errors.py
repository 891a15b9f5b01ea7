"""Bad calls to the public API raise errors of the one tree, never a bare ValueError or KeyError."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import prompts, user_ids

import prompt_registry as pr

pytestmark = pytest.mark.registry

BAD_CALLS = {
    "model name": lambda r: r.register_model("bad name!", "/nowhere"),
    "model folder": lambda r: r.register_model("c", "/nowhere/at/all"),
    "task kind": lambda r: r.add_task("t2", "regression"),
    "task name": lambda r: r.add_task("a/b", "rating"),
    "blank user": lambda r: r.add_users(["  "]),
    "no users": lambda r: r.add_users([]),
    "set ref text": lambda r: r.get_set("not a reference"),
    "set ref id": lambda r: r.get_set(10**6),
    "set ref version": lambda r: r.get_set("a/rate@v77"),
    "unknown alias": lambda r: r.get_set("a/rate@nope"),
    "alias name": lambda r: r.set_alias("v3", "a/rate@latest"),
    "alias and version": lambda r: r.get_prompts(["u000"], "a", "rate", alias="x", version=1),
    "prompt shape": lambda r: r.import_prompts("a", "rate", np.zeros((2, 1, 5), np.float32), user_ids(2)),
    "prompt dtype": lambda r: r.import_prompts("a", "rate", np.zeros((2, 1, 16), np.int64), user_ids(2)),
    "nan prompt": lambda r: r.import_prompts("a", "rate", np.full((2, 1, 16), np.nan, np.float32), user_ids(2)),
    "unknown user": lambda r: r.import_prompts("a", "rate", prompts(1), ["nobody"]),
    "users twice": lambda r: r.import_prompts("a", "rate", prompts(2), ["u000", "u000"]),
    "idempotency key": lambda r: r.write_prompts("a", "rate", ["u000"], lambda a, b: prompts(1), prompt_len=1, key="XYZ"),
    "artifact kind": lambda r: r.put_artifact("model", "x", {}, task="rate", target_model="a"),
    "unknown artifact": lambda r: r.get_artifact(12345),
    "run status": lambda r: r.finish_run(r.start_run("x").id, status="done"),
    "unknown run": lambda r: r.get_run(424242),
    "retention": lambda r: r.gc(keep_last=0),
    "group by": lambda r: r.cost_summary(group_by="year-ish"),
    "blast radius": lambda r: r.blast_radius(),
    "model mismatch": lambda r: r.get_prompt("u000", "b", "rate", set="a/rate@latest"),
    "export target": lambda r: r.export_prompts("a/rate@latest", "/nowhere/dir/out.txt"),
}


@pytest.mark.parametrize("name", sorted(BAD_CALLS))
def test_bad_calls_raise_errors_of_the_tree(populated, name):
    populated.import_prompts("a", "rate", prompts(3), user_ids(3))
    with pytest.raises(pr.PromptRegistryError) as err:
        BAD_CALLS[name](populated)
    assert type(err.value).__module__ == "prompt_registry.errors"
    assert str(err.value)  # says what was wrong
