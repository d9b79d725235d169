"""One machine's quick skip: an flock per configuration, so processes of this machine that share
a store do not both claim it (claims.py then settles it in the store, for every machine)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class ConfigLock:
    """An flock per configuration, in the store's lock folder (checkpoints.lock_root, which
    depends on the store only): a second process on the same store (from any folder, with any
    state folder) skips it instead of training it twice; the kernel drops the lock when a holder
    dies, even by SIGKILL. The holder removes the file as it releases it, so no lock file outlives
    its run; a claimer that locked a file removed meanwhile sees it is not the path's any more and
    locks the new one (the usual unlink-while-locked protocol)."""

    def __init__(self, key: str, root: Path):
        root.mkdir(parents=True, exist_ok=True)
        self.path = root / f"{key}.lock"
        self.fd = None

    def acquire(self) -> bool:
        while True:
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                return True
            os.close(fd)  # its holder removed it as we opened it: lock the path's file now

    def release(self) -> None:
        if self.fd is not None:
            try:
                os.unlink(self.path)  # while still locked: whoever opens the path next makes a new file
            except FileNotFoundError:
                pass
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
