"""One writer per run directory: an exclusive lock on ``output_dir/run.lock`` held for the whole run.

Two runs started in the same ``output_dir`` would interleave their checkpoints and metrics. On a local or
network file system the lock is ``fcntl.flock`` on the file, which the kernel drops when the holder exits
however it ends, so a lock is never stale there; the file's content names the holder (host, pid, start
time). On an object store (``gs://``) there is no lock primitive: the lock is an object with the holder's
name, created only when absent, and removed at the end; a crashed run leaves it behind, and the message
says to delete it.
"""

from __future__ import annotations

import json
import os
import socket
import time

LOCK_FILE = "run.lock"


class RunLockedError(ValueError):
    """Another process holds the run directory."""


def _holder() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime())}


def _describe(text: str) -> str:
    try:
        h = json.loads(text)
        return f"process {h['pid']} on host {h['host']}, started {h['started']}"
    except (ValueError, KeyError, TypeError):
        return "an unknown process"


class RunLock:
    """``with RunLock(output_dir):`` -- raises :class:`RunLockedError` naming the holder if it is taken."""

    def __init__(self, output_dir: str):
        self.output_dir = output_dir
        self.path = os.path.join(output_dir, LOCK_FILE)
        self._fd = None
        self._remote = None

    def acquire(self) -> "RunLock":
        if "://" in self.output_dir:
            return self._acquire_remote()
        import fcntl

        os.makedirs(self.output_dir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                who = _describe(f.read())
            os.close(fd)
            raise RunLockedError(
                f"output_dir {self.output_dir} is in use by {who} (lock {self.path}); two runs in one directory "
                "would mix their checkpoints and metrics. Wait for it to finish, stop it, or use another "
                "--output_dir. The lock is released when that process exits; if it is gone and the lock "
                f"remains (a network file system that kept it), delete {self.path}") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(_holder()).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def _acquire_remote(self) -> "RunLock":
        from etils import epath

        path = epath.Path(self.path)
        if path.exists():
            raise RunLockedError(
                f"output_dir {self.output_dir} is in use by {_describe(path.read_text())} (lock object "
                f"{self.path}); use another --output_dir, or, if that run is no longer alive (it crashed "
                f"without removing its lock), delete {self.path} and start again")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_holder()))
        self._remote = path
        return self

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._remote is not None:
            self._remote.unlink(missing_ok=True)
            self._remote = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
