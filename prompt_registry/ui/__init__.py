"""The read-only web UI and JSON API over the public Python API (``prompt-registry ui``; the ``ui`` extra)."""

from .server import check_bind, create_app, serve

__all__ = ["check_bind", "create_app", "serve"]
