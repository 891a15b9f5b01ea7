"""Every CLI verb, with hostile arguments (issue 16 part 1): one error line, a non-zero exit, never
a traceback (without ``--debug``).

The verbs are found by walking the command tree, so a verb added later is covered without
touching this file. For each verb: every positional argument and required option hostile at
once; then each value-taking option hostile on its own, the others given valid values; then the
verb against a registry that does not exist. Hostile values by type: an integer beyond 64 bits, a
NaN, a text with a NUL and 5,000 more characters, a path that does not exist or holds a NUL, a
choice that is not one.
"""

from __future__ import annotations

import click
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_fake_model

from prompt_registry import Registry
from prompt_registry.cli.main import main
from prompt_registry.data import make_synthetic

HUGE = "99999999999999999999"
HOSTILE_TEXT = "\x00" + "y" * 5000
ONLY_FLAGS = {"init", "db upgrade", "model list", "task list", "assets fetch", "doctor"}  # nothing hostile to pass but globals


def _leaves(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    out = []
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            out += _leaves(cmd, (*path, name))
        else:
            out.append(((*path, name), cmd))
    return out


VERBS = _leaves(main)


def _hostile(param: click.Parameter, tmp) -> str:
    kind = param.type
    if isinstance(kind, (click.types.IntParamType, click.IntRange)):
        return HUGE
    if isinstance(kind, (click.types.FloatParamType, click.FloatRange)):
        return "nan"
    if isinstance(kind, click.Choice):
        return "bogus"
    if isinstance(kind, click.DateTime):
        return "the day after tomorrow"
    if isinstance(kind, click.Path):
        return str(tmp / "missing" / "x") if kind.exists else str(tmp / "nul\x00" / "x.npy")
    return HOSTILE_TEXT


def _valid(path: tuple[str, ...], param: click.Parameter, env: dict) -> str:
    """A value that passes for ``param`` (what the verb does with it then does not matter)."""
    name = param.name
    if isinstance(param.type, click.Choice):
        return str(param.type.choices[0])
    if isinstance(param.type, (click.types.IntParamType, click.IntRange)):
        return "1"
    if isinstance(param.type, (click.types.FloatParamType, click.FloatRange)):
        return "0.5"
    table = {
        "model": "a", "task": "rate", "set_ref": "a/rate@v1", "set_a": "1", "set_b": "1", "user_id": "u000", "adapter": "1",
        "file": str(env["prompts"]) if path[-1] in ("import",) else str(env["users"]) if path == ("user", "import") else str(env["tmp"] / "out.npy"),
        "data": str(env["data"]), "folder": str(env["data"]), "src": str(env["data"]), "dest": str(env["tmp"] / "dest"),
        "path": str(env["model"]), "users": str(env["users"]), "name": "fresh",
    }
    return table.get(name, "x")


def _args(param: click.Parameter, value: str) -> list[str]:
    if isinstance(param, click.Argument):
        return [value] * (1 if param.nargs in (1, -1) else param.nargs)
    return [param.opts[0], value]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("verbs")
    model = make_fake_model(tmp / "model-a", 16)
    with Registry.init(tmp / "reg", actor="probe") as reg:
        reg.register_model("a", model)
        reg.add_task("rate", "rating")
        reg.import_prompts("a", "rate", np.zeros((3, 1, 16), dtype=np.float32), ["u000", "u001", "u002"], create_users=True)
    np.save(tmp / "prompts.npy", np.zeros((3, 1, 16), dtype=np.float32))
    (tmp / "users.csv").write_text("user_id\nu000\nu001\nu002\n")
    data = make_synthetic(tmp / "data", n_users=4, n_items=6, per_user=4)
    return {"tmp": tmp, "reg": tmp / "reg", "model": model, "prompts": tmp / "prompts.npy", "users": tmp / "users.csv", "data": data}


def _check(env, args: list[str], registry: str | None = None) -> None:
    result = CliRunner().invoke(main, ["--registry", registry or str(env["reg"]), "--actor", "probe", *args])
    output = result.output
    shown = " ".join(a[:20] for a in args)
    assert result.exit_code != 0, f"{shown}: accepted ({output[-300:]})"
    assert result.exception is None or isinstance(result.exception, SystemExit), f"{shown}: {result.exception!r}"
    assert "Traceback" not in output, f"{shown}: {output[-500:]}"
    lines = [line for line in output.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 3 and all(len(line) <= 1100 for line in lines), f"{shown}: {output[:600]}"


def _positional(cmd: click.Command) -> list[click.Parameter]:
    return [p for p in cmd.params if isinstance(p, click.Argument) or (p.required and not getattr(p, "is_flag", False))]


def _options(cmd: click.Command) -> list[click.Option]:
    return [p for p in cmd.params if isinstance(p, click.Option) and not p.is_flag and not p.required and p.name != "help"]


@pytest.mark.parametrize("path, cmd", [v for v in VERBS if " ".join(v[0]) not in ONLY_FLAGS], ids=lambda v: " ".join(v) if isinstance(v, tuple) else "")
def test_every_positional_argument_hostile(env, path, cmd):
    if not _positional(cmd):
        pytest.skip("no positional argument or required option: see the option and registry cases")
    args = [a for p in _positional(cmd) for a in _args(p, _hostile(p, env["tmp"]))]
    _check(env, [*path, *args])


OPTION_CASES = [(path, cmd, opt.name) for path, cmd in VERBS for opt in _options(cmd)]


@pytest.mark.parametrize("path, cmd, option", OPTION_CASES, ids=lambda v: " ".join(v) if isinstance(v, tuple) else (v if isinstance(v, str) else ""))
def test_every_option_hostile_on_its_own(env, path, cmd, option):
    args = [a for p in _positional(cmd) for a in _args(p, _valid(path, p, env))]
    opt = next(p for p in cmd.params if p.name == option)
    _check(env, [*path, *args, *_args(opt, _hostile(opt, env["tmp"]))])


@pytest.mark.parametrize("path, cmd", [v for v in VERBS if v[0] != ("init",)], ids=lambda v: " ".join(v) if isinstance(v, tuple) else "")
def test_every_verb_against_a_registry_that_does_not_exist(env, path, cmd):
    if path in (("data", "convert"), ("data", "stats"), ("data", "subsample"), ("assets", "fetch"), ("demo",), ("bench", "paper")):
        pytest.skip("does not open a registry")
    args = [a for p in _positional(cmd) for a in _args(p, _valid(path, p, env))]
    _check(env, [*path, *args], registry=str(env["tmp"] / "no-registry-here"))


def test_the_tree_is_walked():
    names = {" ".join(p) for p, _ in VERBS}
    assert {"prompt import", "migrate plan show", "doctor", "audit lineage", "user delete"} <= names and len(names) >= 40
