"""The CLI: every verb through Click's runner, table and --json output, errors as one line + exit 1."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_fake_model, prompts, user_ids

import prompt_registry.cli
from prompt_registry.cli.main import main
from prompt_registry.migration.config import MigrationConfig
from prompt_registry.migration.puma.config import PumaConfig
from prompt_registry.migration.puma.selection import SelectionConfig
from prompt_registry.registry import DEFAULT_GC_GRACE_SECONDS, TASK_KINDS
from prompt_registry.store.base import SUPPORTED_DTYPES
from prompt_registry.training.config import TrainConfig

README = Path(__file__).resolve().parents[1] / "README.md"


class Cli:
    def __init__(self, registry: str, store: str | None = None) -> None:
        self.base = ["--registry", registry, "--actor", "cli-test"] + (["--store", store] if store else [])
        self.runner = CliRunner()

    def __call__(self, *args: str, code: int = 0):
        result = self.runner.invoke(main, [*self.base, *map(str, args)], catch_exceptions=False)
        assert result.exit_code == code, f"{args} -> {result.exit_code}\n{result.output}\n{result.stderr}"
        return result

    def json(self, *args: str):
        return json.loads(self(*args, "--json").stdout)


@pytest.fixture
def cli(tmp_path):
    return Cli(str(tmp_path / "reg"))


@pytest.fixture
def loaded(cli, tmp_path):
    cli("init")
    cli("model", "add", "a", "--path", make_fake_model(tmp_path / "a", 16))
    cli("model", "add", "b", "--path", make_fake_model(tmp_path / "b", 24, seed=3))
    cli("task", "add", "rate", "--kind", "rating")
    users = tmp_path / "users.csv"
    users.write_text("user_id\n" + "\n".join(user_ids(30)) + "\n")
    cli("user", "import", users)
    np.save(tmp_path / "p.npy", prompts(30))
    return cli


def test_full_tour(loaded, tmp_path):
    cli = loaded
    out = cli("prompt", "import", tmp_path / "p.npy", "--model", "a", "--task", "rate", "--users", tmp_path / "users.csv", "--alias", "production").stdout
    assert "imported set 1 = a/rate@v1: 30 rows written, 30 users visible" in out
    models = cli.json("model", "list")
    assert [m["name"] for m in models] == ["a", "b"] and models[0]["hidden_size"] == 16
    assert cli.json("model", "show", "a")["files"].keys() == {"config.json", "model.safetensors"}
    assert "FINGERPRINT" in cli("model", "list").stdout
    assert [u["external_id"] for u in cli.json("user", "list", "--limit", "3")] == user_ids(3)
    shown = cli.json("prompt", "show", "u004", "--model", "a", "--task", "rate", "--alias", "production")
    np.testing.assert_allclose(np.array(shown["values"]), prompts(30)[4], rtol=1e-6)
    assert shown["shape"] == [1, 16]
    assert "norm" in cli("prompt", "show", "u004", "--model", "a", "--task", "rate", "--version", "1").stdout

    # incremental version from a safetensors file with two new users
    from safetensors.numpy import save_file

    save_file({"new1": prompts(1, seed=5)[0], "new2": prompts(1, seed=6)[0]}, str(tmp_path / "inc.safetensors"))
    inc = cli.json("prompt", "import", tmp_path / "inc.safetensors", "--model", "a", "--task", "rate",
                   "--base", "a/rate@production", "--create-users", "--tag", "daily")
    assert (inc["version"], inc["n_rows"], inc["n_users"], inc["base_id"]) == (2, 2, 32, 1)
    cli("alias", "set", "production", "a/rate@latest", "--reason", "daily refresh")
    listed = cli.json("prompt", "list", "--model", "a")
    assert [(s["version"], s["aliases"]) for s in listed] == [(2, ["production"]), (1, [])]
    assert [s["id"] for s in cli.json("prompt", "list", "--tag", "daily")] == [2]
    assert "production" in cli("prompt", "list").stdout
    aliases = cli.json("alias", "list")
    assert [(a["name"], a["set_id"]) for a in aliases] == [("production", 2)]
    hist = cli.json("alias", "history", "production")
    assert [(h["old_set_id"], h["new_set_id"], h["actor"]) for h in hist] == [(None, 1, "cli-test"), (1, 2, "cli-test")]
    assert "daily refresh" in cli("alias", "history", "production").stdout

    exported = cli.json("prompt", "export", "a/rate@production", tmp_path / "out.safetensors")
    assert exported["n_users"] == 32
    assert "exported set 2" in cli("prompt", "export", "2", tmp_path / "out.npy").stdout
    assert (tmp_path / "out.users.csv").read_text().splitlines()[0] == "user_id"
    assert cli.json("doctor")["problems"] == []
    assert cli("doctor").stdout.strip().endswith("ok")
    assert cli.json("gc", "--dry-run")["removed"] == []
    cli("prompt", "tag", "1", "reviewed", "--value", "bob")
    assert [s["id"] for s in cli.json("prompt", "list", "--tag", "reviewed")] == [1]
    cli("alias", "delete", "production", "--model", "a", "--task", "rate")
    assert cli.json("alias", "list") == []


def test_errors_are_one_line_and_exit_1(loaded, tmp_path):
    res = loaded("prompt", "show", "u001", "--model", "a", "--task", "rate", code=1)
    assert res.stderr.startswith("error: ") and len(res.stderr.strip().splitlines()) == 1
    assert "import some" in res.stderr
    res = loaded("prompt", "import", tmp_path / "p.npy", "--model", "b", "--task", "rate", "--users", tmp_path / "users.csv", code=1)
    assert "hidden size 24" in res.stderr
    res = loaded("model", "show", "zzz", code=1)
    assert "unknown model 'zzz'" in res.stderr
    with pytest.raises(Exception, match="unknown model"):
        CliRunner().invoke(main, [*loaded.base, "--debug", "model", "show", "zzz"], catch_exceptions=False)


def test_usage_errors_exit_2(cli):
    assert cli("prompt", "show", code=2).exit_code == 2


def test_doctor_fails_and_gc_cleans_orphans(loaded, tmp_path):
    from prompt_registry import Registry
    from prompt_registry.store import keys

    with Registry.open(tmp_path / "reg") as reg:
        orphan = keys.new_key(reg.catalog_id, "set")
        reg.store.create_array(orphan, (2, 1, 16), "float32")
        reg.store.create_array("set-put-here-by-hand", (2, 1, 16), "float32")
    res = loaded("doctor", code=1)
    assert "PROBLEM [orphan]" in res.stdout and "prompt-registry gc" in res.stdout
    assert "1 store object(s) were not written by this catalogue" in res.stdout
    assert "kept 1 orphan" in loaded("gc").stdout
    assert loaded.json("gc", "--dry-run", "--grace", "0")["removed"] == [orphan]
    out = loaded("gc", "--grace", "0").stdout
    assert "removed 1 orphan" in out and "left 1 store object(s) this catalogue did not write" in out
    assert "set-put-here-by-hand" in loaded("doctor").stdout


def test_open_without_init_explains(cli):
    res = cli("model", "list", code=1)
    assert "prompt-registry init" in res.stderr


def test_db_upgrade(loaded):
    assert "schema already at" in loaded("db", "upgrade").stdout


def test_env_vars_select_the_registry(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPT_REGISTRY_URL", str(tmp_path / "env-reg"))
    runner = CliRunner()
    assert runner.invoke(main, ["init"]).exit_code == 0
    assert (tmp_path / "env-reg" / "registry.db").exists()


def test_postgres_registry_through_the_cli(pg_url, tmp_path):
    cli = Cli(pg_url, str(tmp_path / "pg-store"))
    cli("init")
    cli("model", "add", "a", "--path", make_fake_model(tmp_path / "a", 16))
    assert [m["name"] for m in cli.json("model", "list")] == ["a"]


def _commands(group: click.Group, prefix: str = ""):
    for name, cmd in group.commands.items():
        full = f"{prefix}{name}"
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, full + " ")
        else:
            yield full, cmd


READING = {"model list", "model show", "task list", "user list", "prompt show", "prompt list", "alias list", "alias history", "doctor", "gc"}


def test_every_command_has_help_and_reading_commands_have_json():
    commands = dict(_commands(main))
    assert READING <= set(commands)
    for name, cmd in commands.items():
        assert cmd.help, f"`{name}` has no help text"
        if name in READING:
            assert any(p.name == "as_json" for p in cmd.params), f"`{name}` lacks --json"


def test_every_command_is_documented_in_the_readme():
    text = README.read_text()
    for name, _ in _commands(main):
        assert re.search(rf"prompt-registry (\S+ )*{re.escape(name)}\b", text), f"README does not mention `prompt-registry {name}`"


def _all_commands(group: click.Group, path: tuple[str, ...] = ()):
    """Every group and command under ``group`` (groups included, unlike ``_commands``), by path."""
    for name, cmd in group.commands.items():
        yield (*path, name), cmd
        if isinstance(cmd, click.Group):
            yield from _all_commands(cmd, (*path, name))


@pytest.mark.parametrize("path", [" ".join(path) for path, _ in _all_commands(main)])
def test_every_command_and_group_has_a_docstring_shown_by_help(path):
    cmd = main
    for name in path.split():
        cmd = cmd.commands[name]
    assert cmd.callback is not None and cmd.callback.__doc__, f"`prompt-registry {path}` has no docstring"
    result = CliRunner().invoke(main, [*path.split(), "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    first_line = cmd.callback.__doc__.strip().splitlines()[0].strip()
    assert first_line in result.output, f"`prompt-registry {path} --help` does not show its docstring"


def test_command_modules_import_alone_without_main():
    # A fresh interpreter: the modules must not need main (which imports them) to be loaded first.
    code = (
        "import sys\n"
        "import prompt_registry.cli.ml_cmds, prompt_registry.cli.audit_cmds\n"
        "import prompt_registry.cli.registry_cmds, prompt_registry.cli.admin_cmds\n"
        "assert 'prompt_registry.cli.main' not in sys.modules, 'a command module imported main'\n"
        "print(len(prompt_registry.cli.ml_cmds.COMMANDS))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "7"
    package = Path(prompt_registry.cli.__file__).parent
    for module in package.glob("*.py"):
        if module.name in ("main.py", "__main__.py"):
            continue
        imported = {
            node.module if isinstance(node, ast.ImportFrom) and node.module else alias.name  # `from . import main` too
            for node in ast.walk(ast.parse(module.read_text()))
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for alias in node.names
        }
        assert not imported & {"main", "prompt_registry.cli.main"}, f"{module.name} imports main: an import circle"


def test_option_defaults_are_the_library_defaults():
    def defaults(*path: str) -> dict:
        cmd = main
        for name in path:
            cmd = cmd.commands[name]
        return {p.name: p.default for p in cmd.params}

    train_fields = ("epochs", "lr", "head_lr", "batch_size", "prompt_len", "history_len", "seed")
    train = defaults("prompt", "train")
    assert {k: train[k] for k in train_fields} == {k: getattr(TrainConfig(), k) for k in train_fields}
    migration, selection = MigrationConfig(), SelectionConfig()
    run = defaults("migrate", "run")
    shared = ("method", "head_lr", "batch_size", "min_steps", "warmup_steps", "validate_on", "refine_epochs", "refine_share", "refine_lr", "seed")
    assert {k: run[k] for k in shared} == {k: getattr(migration, k) for k in shared}
    # the adapter's own options are the method's: not given, its config's defaults apply (and the help names them)
    params = {p.name: p for p in main.commands["migrate"].commands["run"].params}
    assert all(not isinstance(run[k], (int, float, str)) for k in ("epochs", "lr", "phi"))
    assert f"default {PumaConfig().epochs}" in params["epochs"].help and f"{PumaConfig().lr:g}" in params["lr"].help
    assert f"default {PumaConfig().phi}" in params["phi"].help
    assert (run["selection"], run["min_per_cluster"], run["allocation"]) == (selection.method, selection.min_per_cluster, selection.allocation)
    assert selection.n_clusters is None and not isinstance(run["clusters"], int)  # scaled with the budget
    assert defaults("gc")["grace_seconds"] == DEFAULT_GC_GRACE_SECONDS
    choices = {p.name: tuple(p.type.choices) for p in main.commands["task"].commands["add"].params if p.name == "kind"}
    assert choices == {"kind": TASK_KINDS}
    dtype = next(p for p in main.commands["prompt"].commands["import"].params if p.name == "dtype")
    assert tuple(dtype.type.choices) == SUPPORTED_DTYPES
