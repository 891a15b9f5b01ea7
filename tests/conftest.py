"""Shared fixtures: catalogue backends (SQLite and Postgres), registries, fake model folders.

Registry tests take the ``backend`` fixture and run once per catalogue backend. Postgres runs at
``PROMPT_REGISTRY_TEST_PG_URL`` (default: the local server at 127.0.0.1:5432, database ``test``);
every test gets its own schema. If the server is unreachable those tests are skipped and the run
says so loudly at the start and the end.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from prompt_registry import Registry

PG_URL = os.environ.get("PROMPT_REGISTRY_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
_pg_state: dict[str, object] = {}


def pg_unreachable_reason() -> str | None:
    """None if Postgres answers, else why not (checked once per session)."""
    if "reason" not in _pg_state:
        try:
            engine = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
            with engine.connect() as conn:
                conn.execute(sa.text("select 1"))
            engine.dispose()
            _pg_state["reason"] = None
        except Exception as exc:  # noqa: BLE001
            _pg_state["reason"] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    return _pg_state["reason"]  # type: ignore[return-value]


def _banner() -> str | None:
    reason = pg_unreachable_reason()
    if reason is None:
        return None
    line = "!" * 78
    return f"{line}\nPOSTGRES SKIPPED: {PG_URL} is unreachable ({reason}).\nThe registry tests ran on SQLite ONLY.\n{line}"


def pytest_report_header(config):
    banner = _banner()
    return banner if banner else f"postgres: {PG_URL} reachable; registry tests run on SQLite and Postgres"


def pytest_terminal_summary(terminalreporter):
    banner = _banner()
    if banner:
        terminalreporter.write_line(banner, red=True, bold=True)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``):
    deterministic and fair on a shared 2-core machine; the previous count is restored after."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def pg_admin_engine():
    reason = pg_unreachable_reason()
    if reason is not None:
        pytest.skip(f"POSTGRES SKIPPED: {PG_URL} unreachable ({reason})")
    engine = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


@pytest.fixture
def pg_url(pg_admin_engine):
    """A Postgres URL whose connections live in a fresh, private schema (dropped afterwards)."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with pg_admin_engine.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    with pg_admin_engine.connect() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path):
    """(location, store) for a fresh registry on each catalogue backend."""
    if request.param == "sqlite":
        return str(tmp_path / "registry"), None
    return request.getfixturevalue("pg_url"), str(tmp_path / "store")


@pytest.fixture
def registry(backend):
    location, store = backend
    reg = Registry.init(location, store=store, actor="tester")
    yield reg
    reg.close()


def make_fake_model(path: Path, hidden_size: int, *, seed: int = 0, architecture: str = "LlamaForCausalLM") -> Path:
    """A model folder with a config and a small weights file: enough to register and fingerprint."""
    from safetensors.numpy import save_file

    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({
        "architectures": [architecture], "model_type": architecture.lower().replace("forcausallm", ""),
        "hidden_size": hidden_size, "vocab_size": 100,
    }))
    weights = np.random.default_rng(seed).normal(size=(100, hidden_size)).astype(np.float32)
    save_file({"embed_tokens.weight": weights}, str(path / "model.safetensors"))
    return path


@pytest.fixture
def model_dirs(tmp_path):
    """Two different fake models: ``a`` (width 16) and ``b`` (width 24)."""
    return {
        "a": make_fake_model(tmp_path / "model-a", 16, seed=1),
        "b": make_fake_model(tmp_path / "model-b", 24, seed=2, architecture="Qwen2ForCausalLM"),
    }


@pytest.fixture
def populated(registry, model_dirs):
    """A registry with models a and b, task ``rate``, and 50 users u000..u049."""
    registry.register_model("a", model_dirs["a"])
    registry.register_model("b", model_dirs["b"])
    registry.add_task("rate", "rating")
    registry.add_users([f"u{i:03d}" for i in range(50)])
    return registry


def prompts(n: int, width: int = 16, length: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, length, width)).astype(np.float32)


def user_ids(n: int, start: int = 0) -> list[str]:
    return [f"u{i:03d}" for i in range(start, start + n)]
