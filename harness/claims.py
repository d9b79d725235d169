"""Who trains what: a configuration is trained by one process at a time."""

from __future__ import annotations

import fcntl
import os

from pathlib import Path


class ConfigLock:
    """An flock per configuration, in the store's state root: a second process on the same
    store (from any folder) skips it instead of training it twice; the kernel drops the lock
    when a holder dies, even by SIGKILL."""

    def __init__(self, key: str, root: Path):
        root.mkdir(parents=True, exist_ok=True)
        self.path = root / f"{key}.lock"
        self.fd = None

    def acquire(self) -> bool:
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            return False

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
