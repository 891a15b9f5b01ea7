"""The wheel ships every package folder and the Alembic migrations."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "prompt_registry").rglob("__init__.py")
    }
    assert found <= listed, f"add to pyproject [tool.setuptools] packages: {sorted(found - listed)}"
    assert "prompt_registry_cli" in listed


def test_alembic_folder_at_the_top_is_the_packaged_one():
    assert (ROOT / "alembic").resolve() == (ROOT / "prompt_registry" / "_alembic").resolve()
    assert not (ROOT / "prompt_registry" / "_alembic" / "__init__.py").exists()  # would shadow the alembic package
