"""PUMA (Don't Start Over): a small adapter Phi maps source prompts to the target, trained on the
target's task loss over a selected subset of users. ``config.py`` (its options), ``adapter.py``
(Phi), ``selection.py`` (group-based user selection), ``method.py`` (the method)."""

from ..base import register_method
from .config import PumaConfig
from .method import PumaMethod

register_method("puma", PumaMethod)

__all__ = ["PumaConfig", "PumaMethod"]
