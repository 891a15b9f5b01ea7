"""Migration methods as plug-ins (``base.py``) and the method-agnostic orchestration (``migrate.py``).

Importing the package registers the built-in methods; a further method is a folder here whose
``__init__`` calls ``register_method`` once, imported below.
"""

from . import anchor_ridge, puma  # noqa: F401  (they register "anchor-ridge" and "puma")
