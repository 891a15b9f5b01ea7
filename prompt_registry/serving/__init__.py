"""Serving: the read path of an inference service (``PromptReader``, what ``Registry.reader`` returns)."""

from .reader import MISSING, PromptReader, ReaderConfig

__all__ = ["MISSING", "PromptReader", "ReaderConfig"]
