"""Is a ``running`` run still running? Process identities, heartbeats and the stale rule.

A run records who runs it: the host name, the pid and a *process token* naming that very process
(the kernel's boot id and the process's start time, because pids are reused). While it runs, its
registry beats: every ``HEARTBEAT_SECONDS`` a background thread stamps ``heartbeat_at`` on the
runs this process has open. A run is **stale** (its process died without closing it: SIGKILL,
OOM, a lost machine) when

* it was started on this machine (same host name and boot) and its process no longer exists
  (certain, immediate); or
* it was started elsewhere, or before runs recorded their process, and its last sign of life
  (heartbeat, else start) is older than ``STALE_AFTER_SECONDS`` (a live run beats far more
  often).

``doctor`` reports stale runs; ``gc`` and a rerun of the same kind of run on the same model and
task close them as ``failed``.

Limits: two containers that share a kernel *and* a host name would see each other's pids as gone
(give containers their own host names, as Docker and Kubernetes do by default).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import socket
import threading
from collections.abc import Callable

from sqlalchemy import Engine, update

from ._forksafe import reset_in_child
from .db.engine import write_session
from .db.schema import RunRow

HEARTBEAT_SECONDS = 30.0
STALE_AFTER_SECONDS = 600.0

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ProcessIdentity:
    host: str
    pid: int
    token: str  # "<boot id>/<start time in clock ticks>", or "" where /proc is missing


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> str | None:
    """Field 22 of ``/proc/PID/stat`` (the start time); ``None`` if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except FileNotFoundError:
        return None
    except OSError:
        return ""
    # the command name (field 2) may hold spaces and parentheses: split after its last ")"
    return stat[stat.rfind(b")") + 2 :].split()[19].decode()


def current() -> ProcessIdentity:
    pid = os.getpid()
    boot, start = _boot_id(), _start_ticks(pid)
    return ProcessIdentity(socket.gethostname(), pid, f"{boot}/{start}" if boot and start else "")


def _alive_here(pid: int, token: str) -> bool:
    if token:
        return _start_ticks(pid) == token.split("/", 1)[1]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def stale_reason(run: RunRow, now: dt.datetime, stale_after: float = STALE_AFTER_SECONDS,
                 me: ProcessIdentity | None = None) -> str | None:
    """Why ``run`` (status ``running``) is stale, or ``None`` if it may still be running."""
    me = me or current()
    if run.host is not None and run.pid is not None and run.host == me.host:
        token = run.process_token or ""
        same_boot = not token or not me.token or token.split("/", 1)[0] == me.token.split("/", 1)[0]
        if not same_boot:
            return f"its host {run.host} rebooted since it started (process {run.pid} is gone)"
        if not _alive_here(run.pid, token):
            return f"its process {run.pid} on {run.host} is gone"
        return None
    last = run.heartbeat_at or run.started_at
    if last.tzinfo is None:
        last = last.replace(tzinfo=dt.timezone.utc)
    age = (now - last).total_seconds()
    if age <= stale_after:
        return None
    who = f"process {run.pid} on {run.host}" if run.host else "a process that recorded no identity"
    return f"no sign of life from {who} for {age:.0f} s (more than {stale_after:.0f} s)"


class Heartbeat:
    """Stamps ``heartbeat_at`` on the runs this process has open, every ``interval`` seconds,
    from one daemon thread that lives while there is a run to beat for."""

    def __init__(self, engine: Engine, clock: Callable[[], dt.datetime], interval: float = HEARTBEAT_SECONDS) -> None:
        self._engine, self._clock, self._interval = engine, clock, interval
        self._reset()
        reset_in_child(self, Heartbeat._reset)  # a forked child does not own its parent's runs

    def _reset(self) -> None:
        self._runs: set[int] = set()
        self._lock = threading.Lock()
        self._stop: threading.Event | None = None  # the running thread's; set: it is leaving
        self._thread: threading.Thread | None = None

    def add(self, run_id: int) -> None:
        with self._lock:
            self._runs.add(run_id)
            if self._stop is None or self._stop.is_set():
                self._stop = threading.Event()
                self._thread = threading.Thread(target=self._beat, args=(self._stop,), name="prompt-registry-heartbeat",
                                                daemon=True)
                self._thread.start()

    def discard(self, run_id: int) -> None:
        with self._lock:
            self._runs.discard(run_id)
            if not self._runs and self._stop is not None:
                self._stop.set()

    def stop(self) -> None:
        with self._lock:
            self._runs.clear()
            if self._stop is not None:
                self._stop.set()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _beat(self, stop: threading.Event) -> None:
        while not stop.wait(self._interval):
            with self._lock:
                runs = sorted(self._runs)
            try:
                with write_session(self._engine) as session:
                    session.execute(update(RunRow).where(RunRow.id.in_(runs), RunRow.status == "running")
                                    .values(heartbeat_at=self._clock()))
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried; the run goes on
                _log.warning("prompt-registry: heartbeat of runs %s failed: %s", runs, exc)
