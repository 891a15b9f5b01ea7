"""``prompt-registry demo``: the registry's story end to end on a laptop CPU, in seconds.

Builds a tiny Llama model locally, registers it, imports per-user prompts, makes an incremental
version for a few new users, moves the ``production`` alias, reads prompts back (checksum-
verified), exports the set, and runs ``doctor``. Later releases grow this into the full
migration story.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .registry import Registry
from .testing.models import build_tiny_llama


def run_demo(workdir: str | Path | None = None, *, echo: Callable[[str], Any] | None = print, n_users: int = 1000, seed: int = 0) -> dict[str, Any]:
    say = echo or (lambda _msg: None)
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="prompt-registry-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    timings: dict[str, float] = {}

    def step(name: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        out = fn()
        timings[name] = round(time.perf_counter() - start, 4)
        return out

    model_dir = step("build_model", lambda: build_tiny_llama(root / "tiny-llama", hidden_size=32, seed=seed))
    say(f"built a tiny Llama (hidden 32) in {model_dir}")
    with Registry.init(root / "registry", actor="demo") as registry:
        model = step("register_model", lambda: registry.register_model("tiny-llama", model_dir))
        say(f"registered model {model.name} fingerprint {model.fingerprint[:12]} width {model.hidden_size}")
        registry.add_task("movie-rating", "rating")
        users = [f"user-{i:05d}" for i in range(n_users)]
        step("add_users", lambda: registry.add_users(users))
        prompts = rng.normal(0, 0.02, size=(n_users, 1, model.hidden_size)).astype(np.float32)
        v1 = step("import", lambda: registry.import_prompts("tiny-llama", "movie-rating", prompts, users, alias="production"))
        say(f"imported {v1.n_rows} prompts as {v1.ref} (set {v1.id}), alias production -> v1")

        newcomers = {f"user-new-{i}": rng.normal(0, 0.02, size=(1, model.hidden_size)).astype(np.float32) for i in range(10)}
        retrained = {users[0]: np.full((1, model.hidden_size), 0.5, dtype=np.float32)}
        v2 = step("incremental_import", lambda: registry.import_prompts(
            "tiny-llama", "movie-rating", {**newcomers, **retrained}, base=v1.id, create_users=True))
        say(f"incremental {v2.ref}: wrote {v2.n_rows} rows, {v2.n_users} users visible (rest shared with v1)")
        registry.set_alias("production", v2.id, reason="demo: 10 new users, 1 retrained")

        back = step("get_prompts", lambda: registry.get_prompts(users[:100], "tiny-llama", "movie-rating", alias="production"))
        same_old = bool(np.array_equal(back[1:].numpy(), prompts[1:100]))
        changed = bool(np.array_equal(back[0].numpy(), retrained[users[0]]))
        old_view = registry.get_prompt(users[0], "tiny-llama", "movie-rating", version=1).numpy()
        say(f"round trip: unchanged users identical={same_old}, retrained user updated={changed}, v1 still intact={bool(np.array_equal(old_view, prompts[0]))}")

        export = step("export", lambda: registry.export_prompts("tiny-llama/movie-rating@production", root / "production.safetensors"))
        say(f"exported {export.n_users} prompts to {export.path}")
        report = step("doctor", registry.doctor)
        say(f"doctor: {'ok' if report.ok else report.problems}")
        history = registry.alias_history("production")
        say("alias history: " + ", ".join(f"{e.old_set_id}->{e.new_set_id}" for e in history))
        ok = same_old and changed and report.ok
        say(f"timings (s): {timings}")
        say("DEMO OK" if ok else "DEMO FAILED")
        return {
            "ok": ok, "workdir": str(root), "model": model.to_dict(), "sets": [v1.to_dict(), v2.to_dict()],
            "export": export.to_dict(), "doctor_ok": report.ok, "timings_s": timings,
        }
