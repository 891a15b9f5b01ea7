"""The wheel ships every package folder and the Alembic migrations."""

from __future__ import annotations

from pathlib import Path

from setuptools.config.pyprojecttoml import read_configuration

ROOT = Path(__file__).resolve().parents[1]


def _setuptools_config() -> dict:
    """What setuptools makes of pyproject.toml (``packages.find`` expanded, paths from its folder)."""
    return read_configuration(ROOT / "pyproject.toml", expand=True)["tool"]["setuptools"]


def test_package_discovery_finds_every_package_folder():
    found = set(_setuptools_config()["packages"])
    folders = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "prompt_registry").rglob("__init__.py")
    }
    assert folders <= found, f"pyproject [tool.setuptools.packages.find] misses: {sorted(folders - found)}"
    assert {"prompt_registry", "prompt_registry.cli"} <= found
    assert all(name == "prompt_registry" or name.startswith("prompt_registry.") for name in found), sorted(found)
    assert "prompt_registry._alembic" not in found  # package data, not a package


def test_alembic_files_and_type_marker_are_package_data():
    patterns = _setuptools_config()["package-data"]["prompt_registry"]
    package = ROOT / "prompt_registry"
    shipped = {path for pattern in patterns for path in package.glob(pattern)}
    alembic = package / "_alembic"
    needed = {*alembic.glob("*.py"), *alembic.glob("*.mako"), *alembic.glob("versions/*.py"), package / "py.typed"}
    assert (alembic / "env.py") in needed and (alembic / "script.py.mako") in needed
    assert len(list(alembic.glob("versions/0001_*.py"))) == 1
    assert needed <= shipped, f"not shipped in the wheel: {sorted(str(p.relative_to(ROOT)) for p in needed - shipped)}"
    assert (ROOT / "pyproject.toml").read_text().count("prompt_registry_cli") == 0


def test_alembic_folder_at_the_top_is_the_packaged_one():
    assert (ROOT / "alembic").resolve() == (ROOT / "prompt_registry" / "_alembic").resolve()
    assert not (ROOT / "prompt_registry" / "_alembic" / "__init__.py").exists()  # would shadow the alembic package
