"""A full disk for tests: stands in for the builtin `open` in gan_dist.files (monkeypatched there)."""

from __future__ import annotations

import builtins
import errno
import os


class FillingDisk:
    """Stands in for the builtin open in gan_dist.files: files opened for writing take bytes from a budget;
    the write that would exceed it writes what fits and raises ENOSPC, as a full disk does."""

    def __init__(self, budget: int | None) -> None:
        self.left = budget
        self.written = 0

    def open(self, file, mode="r", *args, **kwargs):
        handle = builtins.open(file, mode, *args, **kwargs)
        return _Metered(handle, self) if any(flag in mode for flag in "wa+") else handle


class _Metered:
    def __init__(self, handle, disk: FillingDisk) -> None:
        self._handle, self._disk = handle, disk

    def write(self, data) -> int:
        size = memoryview(data).nbytes
        disk = self._disk
        if disk.left is not None and size > disk.left:
            self._handle.write(memoryview(data).cast("B")[:disk.left])
            disk.written += disk.left
            disk.left = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if disk.left is not None:
            disk.left -= size
        disk.written += size
        return self._handle.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._handle.close()

    def __getattr__(self, name):
        return getattr(self._handle, name)
