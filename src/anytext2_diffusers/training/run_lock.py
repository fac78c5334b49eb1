"""One writer per output folder: an exclusive lock file holding the writer's host and pid.

Two runs on one ``--output_dir`` would replace each other's checkpoints and delete each other's
in-progress ``checkpoint-N.partial``. The main process of a run takes ``output_dir/.anytext2_run.lock``
before it writes anything and releases it when the run ends; a second run stops with one line naming the
holder. The exclusion itself is ``fcntl.flock`` on the file (atomic, and dropped by the kernel when the
holder dies, however it dies); the host and pid written into it are for the message, and for filesystems
where ``flock`` does not reach across hosts: a lock left by another host is not taken over (we cannot tell
whether that process lives), one left by a dead process of this host is (stale, with a warning).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time

logger = logging.getLogger(__name__)

LOCK_FILE = ".anytext2_run.lock"


class OutputDirLocked(RuntimeError):
    """Another run writes into this output folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _describe(holder: dict) -> str:
    started = holder.get("started")
    since = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(started)) if started else ""
    return f"pid {holder.get('pid')} on {holder.get('host')}{since}"


class OutputLock:
    """The lock of one output folder; ``acquire`` / ``release`` or a ``with`` block."""

    def __init__(self, output_dir: str):
        self.path = os.path.join(output_dir, LOCK_FILE)
        self._fd: int | None = None

    def _read(self, fd: int) -> dict:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 4096)
        try:
            holder = json.loads(raw) if raw.strip() else {}
        except ValueError:
            holder = {}
        return holder if isinstance(holder, dict) else {}

    def _holder(self, fd: int) -> dict:
        """The holder's host and pid; a holder that has just taken the lock writes them a moment later."""
        for _ in range(50):
            holder = self._read(fd)
            if "pid" in holder:
                return holder
            time.sleep(0.02)
        return holder

    def acquire(self) -> OutputLock:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        host = socket.gethostname()
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._holder(fd)
                os.close(fd)
                raise OutputDirLocked(
                    f"{os.path.dirname(self.path)} is in use by another run ({_describe(holder)}; lock file "
                    f"{self.path}): use another --output_dir or wait for that run to end"
                ) from None
            # The holder may have released (and deleted) the file between our open and our flock: then we
            # hold a lock on a file nobody else will open. Retry on the path's current file.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        holder = self._read(fd)
        if holder.get("host") not in (None, host):
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise OutputDirLocked(
                f"{os.path.dirname(self.path)} is locked by {_describe(holder)}, which cannot be checked from "
                f"{host}: if that run has ended, delete {self.path}"
            )
        pid = holder.get("pid")
        if isinstance(pid, int) and pid != os.getpid():
            if _alive(pid):  # alive, yet not holding flock: a filesystem without flock; stay on the safe side
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                raise OutputDirLocked(
                    f"{os.path.dirname(self.path)} is in use by another run ({_describe(holder)}; lock file "
                    f"{self.path}): use another --output_dir or wait for that run to end"
                )
            logger.warning("taking over the stale lock %s (%s): that process has ended", self.path, _describe(holder))
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps({"host": host, "pid": os.getpid(), "started": time.time()}).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """Delete the file, then drop the lock (in that order, see the inode check in ``acquire``)."""
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire() if self._fd is None else self

    def __exit__(self, *exc) -> None:
        self.release()


class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def lock_output_dir(accelerator, output_dir: str):
    """The run's lock: taken by the main process only (the others write nothing outside checkpoints,
    which the main process coordinates); every process learns whether it was refused and raises together,
    so none waits alone in a collective. Use as ``with lock_output_dir(...):``."""
    from .checkpointing import failed_anywhere

    lock, error = None, None
    if accelerator.is_main_process:
        try:
            lock = OutputLock(output_dir).acquire()
        except OutputDirLocked as err:
            error = err
    if failed_anywhere(accelerator, error is not None):
        raise error or OutputDirLocked(f"{output_dir} is in use by another run (see the main process's log)")
    return lock if lock is not None else _NoLock()
