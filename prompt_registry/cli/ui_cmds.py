"""``prompt-registry ui``: the read-only web UI and JSON API (``prompt_registry.ui``; the ``ui`` extra)."""

from __future__ import annotations

import click

from ._common import Context, pass_ctx


@click.command("ui")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; anything but loopback needs --token.")
@click.option("--port", type=click.IntRange(1, 65535), default=8765, show_default=True)
@click.option("--token", envvar="PROMPT_REGISTRY_UI_TOKEN", help="Every request must carry it (Authorization: Bearer TOKEN). "
              "Env: PROMPT_REGISTRY_UI_TOKEN.")
@pass_ctx
def ui(obj: Context, host: str, port: int, token: str | None) -> None:
    """Serve the read-only web UI and JSON API (/api/...) over this registry until interrupted."""
    try:
        from prompt_registry.ui import check_bind, serve
    except ImportError as exc:
        raise click.ClickException(f"the UI needs the ui extra ({exc.name} is missing): pip install 'prompt-registry[ui]'") from None
    check_bind(host, token)  # refuse a bad bind before opening the registry
    serve(obj.registry, host=host, port=port, token=token, ready=lambda url: click.echo(f"prompt-registry UI at {url} (read-only; Ctrl-C stops it)"))


COMMANDS = (ui,)
