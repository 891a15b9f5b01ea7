"""Anchor-ridge: retrain the selected ("anchor") users' prompts on the target, fit a ridge map from
source to target prompts on them (the regulariser chosen on the other users' validation rows), map
everyone else; anchors keep their retrained prompts. ``config.py`` (its options), ``method.py``."""

from ..base import register_method
from .config import AnchorRidgeConfig
from .method import AnchorRidgeMethod

register_method("anchor-ridge", AnchorRidgeMethod)

__all__ = ["AnchorRidgeConfig", "AnchorRidgeMethod"]
