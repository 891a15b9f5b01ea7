"""What every command module shares: output helpers, shared options, the ``Context`` object
(``pass_ctx``) and the error handling of the main group.

Command modules import this module and the library, never ``main`` (which imports them).
"""

from __future__ import annotations

import errno
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click
from sqlalchemy.exc import DBAPIError

from prompt_registry import PromptRegistryError, Registry

# ---------------------------------------------------------------------------------------- output


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if hasattr(value, "isoformat"):
        return value.isoformat(timespec="seconds")
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "-"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" if v is not None else str(k) for k, v in value.items()) or "-"
    return str(value)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    if not rows:
        click.echo("(none)")
        return
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip())
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def print_record(record: dict[str, Any]) -> None:
    width = max(len(k) for k in record)
    for key, value in record.items():
        click.echo(f"{key.ljust(width)}  {_cell(value)}")


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--json`` (as ``as_json``): every reading command has it."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(func)


def device_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--device`` for the verbs that run a model (the library's functions default to ``auto`` too)."""
    return click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda[:N]")(func)


def precision_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--precision`` for the verbs that train through a model (default: the configs' own)."""
    from prompt_registry.backbones.loader import PRECISIONS
    from prompt_registry.training.config import TrainConfig

    return click.option("--precision", type=click.Choice(PRECISIONS), default=TrainConfig.precision, show_default=True,
                        help="The backbone's passes: fp32, bf16 (autocast) or auto (bf16 where the device has it natively).")(func)


def emit(data: Any, as_json: bool, columns: Sequence[str] | None = None) -> None:
    """Print entities (or lists of them) as JSON or a human table/record."""
    plain = [d.to_dict() for d in data] if isinstance(data, list) else (data.to_dict() if hasattr(data, "to_dict") else data)
    if as_json:
        print_json(plain)
    elif isinstance(plain, list):
        print_table(plain, columns or (list(plain[0]) if plain else []))
    else:
        print_record(plain)


# ---------------------------------------------------------------------------------------- context


class Context:
    def __init__(self, registry: str | None, store: str | None, actor: str | None, debug: bool) -> None:
        self.location, self.store, self.actor, self.debug = registry, store, actor, debug
        self._registry: Registry | None = None

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = Registry.open(self.location, store=self.store, actor=self.actor)
        return self._registry

    def close(self) -> None:
        if self._registry is not None:
            self._registry.close()


pass_ctx = click.make_pass_decorator(Context)


ERROR_CHARS = 1000  # the longest error line the CLI prints


class Group(click.Group):
    """Turns our errors into one line + exit 1 (a traceback only with --debug)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (PromptRegistryError, OSError, DBAPIError, ValueError) as exc:
            if ctx.params.get("debug") or (isinstance(exc, ValueError) and not isinstance(exc, PromptRegistryError) and str(exc) != "embedded null byte"):
                raise  # a ValueError of ours is a PromptRegistryError; another one is a bug: its traceback helps
            message = _one_line(exc)
            if len(message) > ERROR_CHARS:  # a net: messages echo values through _util.echo already
                message = f"{message[:ERROR_CHARS // 2]} ... {message[-ERROR_CHARS // 4:]}"
            click.echo(f"error: {message}", err=True)
            sys.exit(1)


_OS_ADVICE = {
    errno.ENOSPC: "the disk is full: free space and run the command again (nothing half-written is visible; "
                  "`prompt-registry gc` removes the orphan bytes)",
    errno.EROFS: "the file system is read-only: reads work, writes need a writable registry",
    errno.EACCES: "permission denied: run as the registry's owner, or ask for write access",
    errno.EDQUOT: "the disk quota is exhausted: free space and run the command again",
}


def _one_line(exc: BaseException) -> str:
    """Our errors say what and how to fix; system and database errors get their first line and advice."""
    if isinstance(exc, PromptRegistryError):
        return str(exc)
    if isinstance(exc, ValueError):  # os calls refuse a path with a NUL character this way
        return "a path holds a NUL character; give a path without one"
    if isinstance(exc, DBAPIError):
        first = (str(exc.orig).strip().splitlines() or [type(exc.orig).__name__])[0]
        if "readonly database" in first or "read-only" in first:
            return f"the catalogue is read-only ({first}): {_OS_ADVICE[errno.EROFS]}"
        return f"the catalogue database failed: {first} (check --registry / PROMPT_REGISTRY_URL and that the server is up); --debug shows more"
    assert isinstance(exc, OSError)
    where = f" ({exc.filename})" if exc.filename else ""
    advice = _OS_ADVICE.get(exc.errno or 0, "--debug shows more")
    return f"{exc.strerror or exc}{where}: {advice}"
