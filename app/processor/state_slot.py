"""A process's own sub-directory of --state-dir (the LevelDB stores of its partitions live in it)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from app.core.errors import FatalError


class StateSlot:
    """An exclusive sub-directory of --state-dir for this process (flock'ed `slot-N.lock`).

    A restarted instance gets slot 0 back (the lock died with the old process) and so finds
    the state it left; two live instances on one host, or a zombie and its successor, never
    share a LevelDB directory.
    """

    def __init__(self, root: Path, max_slots: int = 64) -> None:
        root.mkdir(parents=True, exist_ok=True)
        for i in range(max_slots):
            fd = os.open(root / f"slot-{i}.lock", os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self.fd: int | None = fd
            self.path = root / f"slot-{i}"
            self.path.mkdir(exist_ok=True)
            return
        raise FatalError(f"all {max_slots} state slots under {root} are in use by live processes")

    def partition_dir(self, topic: str, partition: int) -> Path:
        return self.path / f"{topic}-{partition}"

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the flock
            self.fd = None
