"""One writer per embedding set: an OS file lock, plus a record of who holds it.

Why an OS lock (``filelock``, ``flock`` on POSIX) and not a PID file: taking it is one atomic call
(no check-then-create race), and the kernel drops it when its process dies, so a killed job never
wedges a set. Beside the lock file, ``<name>.json`` records the holder (pid, host, command line,
start time) only for messages: a second job is told who holds the set and exits 2
(:class:`StoreLockedError`; an embedding job never waits), and a record left behind by a dead process
is reported when its lock is taken over.

The same lock guards the result rows of one family (:func:`family_lock`): a probe, fusion or
fine-tuning job takes it around "is this family stored yet? compute, append", so two jobs on the
same family never append the same rows twice. Such a writer may wait for the holder, bounded
(``acquire(wait_s=...)``: it is told who it waits for, then gets the same error when time runs out).

Within one process the lock is re-entrant (two writers opened by one job share it; ``finalize``
still catches duplicate keys). Layout: ``<store>/locks/<kind>-<id>.lock`` and ``.json``.
"""

from __future__ import annotations

import atexit
import datetime as dt
import json
import logging
import os
import shlex
import socket
import sys
import threading
import time
from pathlib import Path

from .atomic import env_errors, make_dirs, write_json
from .errors import StoreLockedError

log = logging.getLogger(__name__)

LOCKS_DIR = "locks"

POLL_S = 0.2  # how often a waiting writer retries
_held: dict[str, list] = {}  # lock path -> [FileLock, count, pid]: this process's holds
_guard = threading.Lock()


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this host (a zombie counts as running)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def describe(record: dict | None) -> str:
    """``pid 123 on host h (`mitoprobe embed ...`, since 2026-...)`` from a lock record."""
    if not record:
        return "another process (it has not recorded itself yet)"
    return (f"pid {record.get('pid')} on host {record.get('host')} (`{record.get('command')}`, "
            f"since {record.get('started')})")


class SetLock:
    """The write lock of one set. ``acquire`` raises :class:`StoreLockedError` naming a live holder."""

    def __init__(self, root: str | Path, key: str, label: str | None = None):
        self.root = Path(root)
        self.key = key
        self.label = label or key
        self.path = self.root / LOCKS_DIR / f"{key}.lock"
        self.record_path = self.path.with_suffix(".json")
        self.took_over: dict | None = None  # the stale record this acquire replaced, if any
        self._mine = False

    def record(self) -> dict | None:
        try:
            return json.loads(self.record_path.read_text())
        except (OSError, ValueError):
            return None

    def _holder_record(self, wait_s: float = 1.0) -> dict | None:
        """The holder's record; a holder that has just taken the lock writes it a moment later."""
        deadline = time.monotonic() + wait_s
        while (rec := self.record()) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        return rec

    def held_elsewhere(self) -> dict | None:
        """The holder's record when another process holds the lock now; None otherwise. Opens the
        lock file read-only and creates nothing (``store check`` must not write)."""
        entry = _held.get(str(self.path))
        if entry and entry[2] == os.getpid():
            return None
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: trust the record
            rec = self.record()
            return rec if rec and pid_alive(rec.get("pid", -1)) else None
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return self.record() or {}
        except OSError:
            return None
        finally:
            os.close(fd)
        return None

    def acquire(self, wait_s: float = 0.0, on_wait=None) -> "SetLock":
        """Take the lock; raise :class:`StoreLockedError` naming the holder when another live process
        holds it. ``wait_s`` > 0: retry until then first; ``on_wait(holder_text)`` is called once when
        the first try fails (to tell the user whom it waits for)."""
        deadline = time.monotonic() + max(0.0, float(wait_s))
        told = False
        while not self._try_acquire():
            left = deadline - time.monotonic()
            if left <= 0:
                waited = f" (waited {wait_s:g} s)" if wait_s > 0 else ""
                raise StoreLockedError(
                    f"{self.label} is being written by {describe(self._holder_record())}{waited}; lock "
                    f"{self.path}. Wait for that job to finish (a lock whose process has died is taken over "
                    "automatically)") from None
            if on_wait is not None and not told:
                told = True
                on_wait(describe(self._holder_record()))
            time.sleep(min(POLL_S, left))
        return self

    def _try_acquire(self) -> bool:
        import filelock

        key = str(self.path)
        with _guard:
            entry = _held.get(key)
            if entry and entry[2] == os.getpid():
                entry[1] += 1
                self._mine = True
                return True
            make_dirs(self.path.parent)
            lock = filelock.FileLock(key, timeout=0, thread_local=False)
            try:
                with env_errors(self.path):
                    lock.acquire()
            except filelock.Timeout:
                return False
            try:
                self._take_over_stale()
                command = shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "?"
                write_json(dict(pid=os.getpid(), host=socket.gethostname(), command=command,
                                started=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                                key=self.key), self.record_path)
            except BaseException:
                lock.release()
                raise
            _held[key] = [lock, 1, os.getpid()]
            self._mine = True
            return True

    def _take_over_stale(self) -> None:
        old = self.record()
        if not old:
            return
        self.took_over = old
        host = old.get("host")
        if host == socket.gethostname() and not pid_alive(old.get("pid", -1)):
            why = "that process is no longer running"
        else:
            why = "its lock was free (the holder ended without cleaning up)"
        log.warning("took over the stale lock of %s left by %s: %s", self.label, describe(old), why)

    def release(self) -> None:
        """Idempotent; the last release of this process removes the record and drops the lock."""
        if not self._mine:
            return
        self._mine = False
        key = str(self.path)
        with _guard:
            entry = _held.get(key)
            if not entry or entry[2] != os.getpid():
                return
            entry[1] -= 1
            if entry[1] > 0:
                return
            del _held[key]
            try:
                self.record_path.unlink(missing_ok=True)
            except OSError:
                pass
            entry[0].release()

    def __enter__(self) -> "SetLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@atexit.register
def _release_all() -> None:
    """At a normal exit, drop this process's records (the OS drops the locks themselves)."""
    for key, entry in list(_held.items()):
        if entry[2] == os.getpid():
            Path(key).with_suffix(".json").unlink(missing_ok=True)


def set_lock(root: str | Path, recipe_id: str, name: str | None = None) -> SetLock:
    """The write lock of the embedding set ``recipe_id`` (not taken yet)."""
    label = f"embedding set {name} ({recipe_id})" if name else f"embedding set {recipe_id}"
    return SetLock(root, f"embeddings-{recipe_id}", label)


def family_lock(root: str | Path, family_id: str, label: str | None = None) -> SetLock:
    """The write lock of one result family's rows in ``runs``/``predictions`` (not taken yet)."""
    return SetLock(root, f"family-{family_id}", f"result family {label or family_id}")


def patches_lock(root: str | Path) -> SetLock:
    """The write lock of the patches table (not taken yet): an import's commit, a store's migration."""
    return SetLock(root, "patches", "the patches table")
