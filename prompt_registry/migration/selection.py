"""Moved to ``prompt_registry.migration.puma.selection`` (PUMA's group-based selection); kept so that
``from prompt_registry.migration.selection import SelectionConfig`` (README, CLI) keeps working."""

from .puma.selection import SelectionConfig

__all__ = ["SelectionConfig"]
