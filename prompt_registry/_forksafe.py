"""What a forked child must not inherit as it is: locks a parent thread may hold, pools whose
threads did not come along, pooled database connections.

``os.fork`` copies only the calling thread. A lock another thread held at that moment stays held
forever in the child, and a thread pool's queue accepts work that no thread will run: the child
hangs (inside an import, holding SQLite's write lock, every other writer then times out). This is
what multiprocessing's default start method on Linux, ``gunicorn --preload`` and Celery's prefork
pool do. Module-level pools reset themselves with ``os.register_at_fork``; objects that own such
resources register a reset here, kept by weak reference so that registering never keeps an
object alive.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

_resets: weakref.WeakKeyDictionary[object, list[Callable[[object], None]]] = weakref.WeakKeyDictionary()
_resets_lock = threading.Lock()


def reset_in_child(owner: T, reset: Callable[[T], None]) -> None:
    """Call ``reset(owner)`` in every child forked while ``owner`` is alive (before the child
    runs anything else)."""
    with _resets_lock:
        _resets.setdefault(owner, []).append(reset)  # type: ignore[arg-type]  # each key's resets take that key: a per-entry type no mapping type expresses


def fresh_lock(owner: object, attribute: str = "_lock") -> threading.Lock:
    """A lock stored as ``owner.<attribute>`` that a forked child gets unheld."""
    reset_in_child(owner, lambda o: setattr(o, attribute, threading.Lock()))
    return threading.Lock()


def _after_fork_in_child() -> None:
    global _resets_lock
    _resets_lock = threading.Lock()
    for owner, resets in list(_resets.items()):
        for reset in resets:
            reset(owner)


os.register_at_fork(after_in_child=_after_fork_in_child)
