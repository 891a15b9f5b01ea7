"""The public surface is exactly what __all__ and the README promise."""

from __future__ import annotations

import inspect

import prompt_registry as pr
from prompt_registry import errors


def test_all_is_exact_and_importable():
    # submodules are importable but not part of the facade
    public = {name for name in dir(pr) if not name.startswith("_") and not inspect.ismodule(getattr(pr, name))}
    assert set(pr.__all__) - {"__version__"} == public
    for name in pr.__all__:
        assert getattr(pr, name) is not None


def test_every_error_derives_from_the_root_and_a_builtin():
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, pr.PromptRegistryError)]
    assert len(classes) > 15
    for cls in classes:
        if cls is pr.PromptRegistryError:
            continue
        builtin_bases = [b for b in cls.__mro__ if b.__module__ == "builtins" and b not in (Exception, BaseException, object)]
        assert builtin_bases, f"{cls.__name__} derives from no builtin besides Exception"
        assert cls.__name__ in errors.__doc__ or cls.__base__.__name__ in errors.__doc__
        assert cls.__name__ in pr.__all__, f"{cls.__name__} is not exported"


def test_public_methods_are_documented():
    for name, member in inspect.getmembers(pr.Registry, inspect.isfunction):
        if not name.startswith("_"):
            assert member.__doc__, f"Registry.{name} has no docstring"
