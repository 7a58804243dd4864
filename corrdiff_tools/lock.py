"""The store lock: one run writes a store at a time, and a dead run's claim dies with it.

The lock is ``<store>.lock`` beside the store's *resolved* path (so a symlinked alias of a
busy store is refused too), held with ``flock``: the kernel releases it when its holder
exits, however it exits (SIGKILL, out-of-memory killer, node reboot on a local disk), so
``--resume`` after a kill never needs a person to delete a file. The file also carries the
holder's pid, host and start time, for the message a refused run prints.

Some parallel filesystems do not support ``flock`` (Lustre mounted without ``-o flock``
answers ENOSYS, some NFS set-ups ENOLCK). There the lock falls back to creating the file
exclusively (``O_EXCL``): still exclusive, but a killed run leaves the file behind, and the
next run reports it (with the pid that took it, and whether that process is still alive on
this host) instead of taking it over, because on a shared filesystem it may belong to a live
run on another node.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time
from pathlib import Path

from corrdiff_tools.errors import RunError

logger = logging.getLogger(__name__)

#: errno values meaning "this filesystem cannot flock", not "someone holds it".
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


def lock_path(store: str | Path) -> Path:
    """``<store>.lock`` beside the store's resolved path (symlinks followed)."""
    resolved = Path(store).expanduser().resolve()
    return resolved.with_name(f"{resolved.name}.lock")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StoreLock:
    """An exclusive claim on a store for one run (see the module docstring).

    Parameters
    ----------
    store : str or Path
        The store the run writes; it need not exist yet.
    """

    def __init__(self, store: str | Path) -> None:
        self.store = Path(store)
        self.path = lock_path(store)
        self._fd: int | None = None
        self._exclusive_file = False
        self._made: list[Path] = []

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None or self._exclusive_file

    def acquire(self) -> None:
        """Take the lock, or raise ValueError saying who holds it and what to do."""
        import fcntl

        self._make_parents()
        while True:
            existed = self.path.exists()
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                self._remove_parents()
                if self.path.is_dir() or self.path.is_symlink():
                    what = "a directory" if self.path.is_dir() else "a link to nowhere"
                    raise RunError(
                        f"the lock {self.path} is {what}, not a lock file: move it away, then rerun"
                    ) from err
                raise RunError(
                    f"could not create the lock {self.path} ({err.strerror or err}): free some "
                    "space or fix the permissions, then rerun"
                ) from err
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                self._remove_parents()
                raise ValueError(self._in_use()) from None
            except OSError as err:
                os.close(fd)
                if not existed:
                    self.path.unlink(missing_ok=True)  # ours: the fallback creates it anew
                if err.errno not in _NO_FLOCK:
                    raise
                logger.warning(
                    "%s: this filesystem cannot flock (%s); using an exclusive lock file that "
                    "a killed run leaves behind",
                    self.path,
                    err.strerror,
                )
                self._acquire_exclusive()
                return
            # A run releasing the lock unlinks the file; if that happened between our open
            # and our flock, we hold a lock on a file nobody else can see: try again.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self._fd = fd
        self._write_owner(fd)

    def _write_owner(self, fd: int) -> None:
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        try:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(owner).encode())
        except OSError as err:  # a full disk: the flock alone still excludes others
            logger.debug("could not record the lock's owner in %s: %s", self.path, err)

    def _acquire_exclusive(self) -> None:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            self._remove_parents()
            raise ValueError(self._stale_or_in_use()) from None
        self._exclusive_file = True
        try:
            self._write_owner(fd)
        finally:
            os.close(fd)

    def _owner(self) -> tuple[int, str, str] | None:
        try:
            owner = json.loads(self.path.read_text())
            since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(owner["started"])))
            return int(owner["pid"]), str(owner["host"]), since
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _in_use(self) -> str:
        owner = self._owner()
        who = f" (pid {owner[0]} on {owner[1]}, started {owner[2]})" if owner else ""
        return (
            f"{self.store.name} is in use by another run{who}: wait for it to finish, or "
            "choose another --output"
        )

    def _stale_or_in_use(self) -> str:
        owner = self._owner()
        if owner is None:
            return (
                f"{self.path} exists but is unreadable: if no run is writing this store, delete "
                "it (this filesystem has no flock, so a killed run leaves its lock file)"
            )
        pid, host, since = owner
        if host == socket.gethostname() and not _process_alive(pid):
            return (
                f"stale lock {self.path}: the run that took it (pid {pid}, started {since}) is "
                "no longer running and this filesystem has no flock; delete the lock file, then "
                f"rerun with --resume to finish {self.store.name}"
            )
        return (
            f"{self.store.name} is in use by another run (pid {pid} on {host}, started {since}): "
            f"wait for it, or choose another --output; if that run is dead, delete {self.path}"
        )

    def _make_parents(self) -> None:
        missing = []
        parent = self.path.parent
        while not parent.exists():
            missing.append(parent)
            parent = parent.parent
        for directory in reversed(missing):
            directory.mkdir()
            self._made.append(directory)

    def _remove_parents(self) -> None:
        """Remove the directories this lock created, where they are still empty."""
        for directory in reversed(self._made):
            try:
                directory.rmdir()
            except OSError:
                break  # not empty: the run wrote its store there
        self._made = []

    def release(self) -> None:
        """Give the lock up and remove its file (and any directories made for it, if empty)."""
        if not self.held:
            return
        # Unlink while still holding it, so no one can take the old file after us.
        self.path.unlink(missing_ok=True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._exclusive_file = False
        self._remove_parents()

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
