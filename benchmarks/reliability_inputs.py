"""Hostile inputs fuzzed (the ``inputs`` of the reliability report; ``--inputs N`` examples per
target). The targets and the rule they keep are ``prompt_registry.testing.hostile``'s (the default
suite runs them with fewer examples in ``tests/test_fuzz_inputs.py``): each input succeeds
correctly or is refused with one of our errors and a short message, and a refusal leaves the
registry exactly as it was. Prompt files (random bytes, mutated safetensors and npy headers) go
through the loader; pickles and ``torch.save`` archives under every file name must never run (a
sentinel file would appear). A target that breaks the rule stops the run with Hypothesis's
minimal failing example.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as fixed_seed
from hypothesis import strategies as st


def _file_targets(workdir: Path) -> dict[str, Any]:
    import prompt_registry as pr
    from prompt_registry.fileio import load_prompt_file
    from prompt_registry.testing.hostile import npy_header, safetensors_bytes

    def load(raw: bytes, suffix: str) -> str:
        path = workdir / f"f{suffix}"
        path.write_bytes(raw)
        try:
            array, users = load_prompt_file(path)
        except (pr.InvalidFileError, pr.DTypeError) as exc:
            assert len(str(exc)) <= 2000
            return "refused"
        assert isinstance(array, np.ndarray) and (users is None or all(isinstance(u, str) for u in users))
        return "accepted"

    return {
        "random bytes as .npy / .safetensors": (st.tuples(st.binary(max_size=512), st.sampled_from([".npy", ".safetensors"])),
                                                lambda v: load(*v)),
        "safetensors headers": (st.tuples(st.sampled_from(["F32", "F16", "BF16", "F64", "I64", "U8", "BOOL", "F8_E4M3", "C64", "XYZ"]),
                                          st.lists(st.integers(0, 2**40), max_size=4), st.binary(max_size=256),
                                          st.one_of(st.none(), st.text(max_size=20), st.integers(), st.lists(st.text(max_size=5), max_size=4))),
                                lambda v: load(safetensors_bytes({"prompts": {"dtype": v[0], "shape": v[1], "data_offsets": [0, len(v[2])]},
                                                            **({"__metadata__": {"users": json.dumps(v[3])}} if v[3] is not None else {})}, v[2]),
                                               ".safetensors")),
        "npy headers": (st.tuples(st.sampled_from(["<f4", "<f2", ">f8", "<i8", "|u1", "|b1", "<c8", "|O", "<U4", "V8"]),
                                  st.lists(st.integers(0, 2**50), max_size=4), st.binary(max_size=256)),
                        lambda v: load(npy_header(v[0], v[1]) + v[2], ".npy")),
    }


def _pickles(workdir: Path) -> dict[str, int]:
    """Every pickle-bearing payload under every name: refused, and the sentinel never appears."""
    import prompt_registry as pr
    from prompt_registry.fileio import load_prompt_file
    from prompt_registry.testing.hostile import pickle_payloads

    sentinel = workdir / "ran"
    payloads = pickle_payloads(sentinel)
    refused = 0
    for suffix in (".npy", ".safetensors", ".pt", ".pth", ".bin", ".pkl", ".npz", ""):
        for payload in payloads:
            path = workdir / f"evil{suffix}"
            path.write_bytes(payload)
            try:
                load_prompt_file(path)
            except pr.PromptRegistryError:
                refused += 1
    assert not sentinel.exists(), "a pickle ran"
    return {"examples": refused, "refused": refused, "accepted": 0, "executed": int(sentinel.exists())}


def _fuzz(strategy: Any, target: Any, examples: int, seed: int) -> dict[str, int]:
    counts = {"examples": 0, "accepted": 0, "refused": 0}

    @fixed_seed(seed)
    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(value=strategy)
    def check(value: Any) -> None:
        outcome = target(value)
        counts["examples"] += 1
        counts[outcome] += 1

    check()
    return counts


def run(examples: int, seed: int) -> dict[str, Any]:
    """``examples`` Hypothesis examples per target; returns per-target counts."""
    from prompt_registry import Registry
    from prompt_registry.testing import hostile
    from prompt_registry.testing.models import build_tiny_llama

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="prompt-registry-inputs-") as tmp:
        workdir = Path(tmp)
        reg = Registry.init(workdir / "reg", actor="fuzzer")
        reg.register_model("a", build_tiny_llama(workdir / "model-a", hidden_size=16, seed=1))
        reg.add_task("rate", "rating")
        reg.import_prompts("a", "rate", np.zeros((3, 1, 16), dtype=np.float32), ["u000", "u001", "u002"], create_users=True)
        targets = {
            **_file_targets(workdir),
            "users CSV into import_prompts": (hostile.csv_files(), lambda raw: hostile.import_with_users_csv(reg, workdir, raw)),
            "users CSV into add_users (user import)": (hostile.csv_files(), lambda raw: hostile.add_users_from_csv(reg, workdir, raw)),
            "data set CSVs": (st.tuples(hostile.csv_files(("user_id", "item_id", "label", "timestamp")), hostile.csv_files(("item_id", "text"))),
                              lambda v: hostile.load_data_folder(workdir, *v)),
            "set references": (hostile.refs, lambda ref: hostile.reference(reg, ref)),
            "names and free text": (hostile.texts, lambda text: hostile.name(reg, text)),
        }
        for name, (strategy, target) in targets.items():
            started = time.perf_counter()
            out[name] = {**_fuzz(strategy, target, examples, seed), "seconds": round(time.perf_counter() - started, 1)}
        out["pickles and torch.save archives under any name"] = _pickles(workdir)
        assert reg.doctor().ok
        reg.close()
    return out
