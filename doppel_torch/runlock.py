"""One writer per run folder: an advisory lock on ``<folder>/.run.lock`` held by the process that writes the run.

Two `doppel-torch train` into one folder used to both run to the end, interleaving metrics.csv and last.pt
(found from outside); two started at once with the default --out both took the same free folder. The lock is
``flock`` on the file (released by the kernel when its process dies, so a killed run leaves no stale lock), taken
without waiting; the file holds who took it (pid, host, time) for the message of the one refused. Only the
process that writes (rank 0 under torchrun) takes it.
"""

from __future__ import annotations

import datetime
import fcntl
import os
import socket
from pathlib import Path

from doppel_torch.options import out_folder

LOCK_NAME = ".run.lock"


class RunLock:
    """A held lock; `release()` (idempotent) removes the file and lets the folder go."""

    def __init__(self, folder: Path, fd: int) -> None:
        self.folder, self._fd = folder, fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            (self.folder / LOCK_NAME).unlink()  # while still held: a process waiting on this file sees it gone
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None


def try_lock(folder: str | os.PathLike, option: str = "--out") -> RunLock | None:
    """Take `folder`'s run lock (creating the folder, as `out_folder`), or None where another process holds it."""
    folder = out_folder(folder, option)
    path = folder / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError:  # a file system without locks (ENOLCK, EOPNOTSUPP): the run goes on unguarded
            os.close(fd)
            path.unlink(missing_ok=True)
            return RunLock(folder, None)
        try:  # the file may have been removed by its last holder between our open and our lock: take it again
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    stamp = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n".encode())
    return RunLock(folder, fd)


def is_locked(folder: str | os.PathLike) -> bool:
    """Whether another process holds `folder`'s lock now (creates nothing)."""
    try:
        fd = os.open(Path(folder) / LOCK_NAME, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing drops a lock taken here
    return False


def holder(folder: str | os.PathLike) -> str:
    """Who holds `folder`'s lock, as its file says ("pid 123 on host since ..."), or "another process"."""
    try:
        text = (Path(folder) / LOCK_NAME).read_text().strip()
    except OSError:
        text = ""
    return text or "another process"
