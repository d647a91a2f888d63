"""Files that are never seen half-written: durable and atomic writes, append-only logs, sha256, the cache.

Every file gan_dist writes for others to read (shards, manifests, checkpoints, run records, metric caches)
goes through here: written under a hidden temp name, fsynced, renamed into place (a reader sees the old
file or the new one, never a torn one), with the folder fsynced so the rename survives a crash.

A full disk or quota (ENOSPC, EDQUOT) raised by these writers is a `DiskFullError` naming the file and the
free space, in one line. `FolderLock` is the exclusive lock of a folder (a run folder: one writer at a
time); `write_npz` streams arrays into an .npz chunk by chunk (memory stays flat).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """No space (ENOSPC) or quota (EDQUOT) left; str() is one line naming the path, the free space there and,
    where known, the size needed. `errno` is the original one, `filename` the path."""

    def __init__(self, message: str, path: str | None = None, code: int = errno.ENOSPC) -> None:
        super().__init__(code, message, path)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.filename, self.errno))


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and (isinstance(error, DiskFullError) or error.errno in DISK_FULL_ERRNOS)


def format_bytes(size: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def free_bytes(path: Path | str) -> int | None:
    """Free bytes for an unprivileged user on the filesystem of `path` (or of its nearest existing parent)."""
    import shutil

    current = Path(path).absolute()
    for candidate in (current, *current.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def disk_full_message(error: OSError, path: Path | str | None = None, needed: int | None = None) -> str:
    """One line: what could not be written (`path`, else the error's file), the free space there and the size
    needed when known. A quota (EDQUOT) is said as such: df shows space the quota does not give."""
    where = path or error.filename
    free = free_bytes(where) if where is not None else None
    cause = "disk quota exceeded" if error.errno == errno.EDQUOT else "no space left on device"
    parts = [f"{cause} writing {where if where is not None else '(unknown file)'}"]
    if free is not None:
        parts.append(f"{format_bytes(free)} free there")
    if needed is not None:
        parts.append(f"about {format_bytes(needed)} needed")
    return "; ".join(parts)


def disk_full_error(error: OSError, path: Path | str | None = None, needed: int | None = None) -> DiskFullError:
    """The DiskFullError for an ENOSPC/EDQUOT `error` met writing `path`."""
    where = path or error.filename
    return DiskFullError(disk_full_message(error, path, needed), None if where is None else str(where),
                         error.errno if error.errno in DISK_FULL_ERRNOS else errno.ENOSPC)


def user_cache_dir() -> Path:
    """$XDG_CACHE_HOME/gan_dist, else ~/.cache/gan_dist."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gan_dist"


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in `path` durable (POSIX: the directory entry is in the directory)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories
    finally:
        os.close(fd)


def sha256_file(path: Path | str, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (memory stays flat whatever the file's size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def write_bytes_durably(path: Path, data: bytes) -> str:
    """Write `data` to `path` (no temp name: callers write into a temp folder), fsync; returns its sha256."""
    try:
        with open(path, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        if is_disk_full(error):
            raise disk_full_error(error, path, len(data)) from None
        raise
    return hashlib.sha256(data).hexdigest()


def atomic_write(path: Path, write: Callable[[IO[bytes]], None], size: int | None = None) -> None:
    """write(stream) into a hidden temp file beside `path`, fsync, then rename it to `path`. The temp name is
    unique per host, process and call, so processes racing on a shared filesystem never share one. `size`
    (bytes, when known) is said in the DiskFullError of a full disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}-{time.monotonic_ns()}")
    try:
        with open(temp, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    except OSError as error:
        if is_disk_full(error):
            raise disk_full_error(error, path, size) from None
        raise
    finally:
        temp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace `path` by `text` whole (a kill leaves the old file or the new one, never a torn one)."""
    data = text.encode()
    atomic_write(path, lambda stream: stream.write(data), len(data))


def write_json_atomic(path: Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def append_line_durably(path: Path, line: str) -> None:
    """Append one line to an append-only log and fsync it. A line torn by a kill is ended first, so that
    it cannot merge with this one (a reader skips the torn line, see `read_lines`)."""
    try:
        with open(path, "a+b") as handle:
            handle.seek(0, os.SEEK_END)
            ends_open = False
            if handle.tell() > 0:
                handle.seek(-1, os.SEEK_END)
                ends_open = handle.read(1) != b"\n"
            handle.write((b"\n" if ends_open else b"") + line.encode() + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        if is_disk_full(error):
            raise disk_full_error(error, path, len(line) + 1) from None
        raise


def read_lines(path: Path) -> list[Any]:
    """The JSON values of an append-only log's lines; a line torn by a kill is skipped."""
    if not path.is_file():
        return []
    values = []
    for text in path.read_text().splitlines():
        try:
            values.append(json.loads(text))
        except ValueError:
            continue
    return values


# -- the lock of a folder ----------------------------------------------------------------------------------

# flock's errors when the filesystem cannot lock at all (Lustre mounted without -o flock: ENOSYS; NFSv3
# without lockd: ENOLCK), as opposed to EWOULDBLOCK (another process holds it).
_NO_LOCKING_ERRNOS = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)
_held_lock_fds: set[int] = set()  # this process's FolderLock descriptors (closed in forked children)


class LockHeld(RuntimeError):
    """Another process holds the lock; `holder` is what it recorded (host, pid, started, command), or None
    when it has not written it yet (it is starting)."""

    def __init__(self, path: Path, holder: dict[str, Any] | None) -> None:
        super().__init__(f"{path} is locked by {holder or 'a process that is starting'}")
        self.path = path
        self.holder = holder


class LockUnsupported(OSError):
    """The filesystem refuses flock (not "held": it cannot lock at all)."""


class FolderLock:
    """An exclusive `fcntl.flock` on one file (RUN_DIR/.lock), held until `release()` or the end of the
    process: the OS drops it when the process dies, SIGKILL included, so a killed run never blocks its own
    resume. The file records the holder (host, pid, start time, command), which a refused process reads.
    Forked children (DataLoader workers) close their copy of the descriptor at fork: the lock stays the
    taking process's alone (flock locks belong to the open file description, shared across fork)."""

    def __init__(self, path: Path, fd: int) -> None:
        import weakref

        self.path = path
        self._fd: int | None = fd
        self._close = weakref.finalize(self, _close_lock_fd, fd)  # a lock object forgotten is a lock released

    @classmethod
    def acquire(cls, path: Path, holder: dict[str, Any]) -> FolderLock:
        """Take the lock without waiting, then record `holder` in the file. Raises LockHeld (another process
        has it: nothing was written) or LockUnsupported (flock fails on this filesystem)."""
        import fcntl

        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)  # no O_TRUNC: the holder's record stays
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            recorded = _read_holder(fd)
            os.close(fd)
            raise LockHeld(path, recorded) from None
        except OSError as error:
            os.close(fd)
            if error.errno in _NO_LOCKING_ERRNOS:
                raise LockUnsupported(error.errno, f"flock is not supported here ({error.strerror})",
                                      str(path)) from None
            raise
        _held_lock_fds.add(fd)
        lock = cls(path, fd)
        try:
            data = (json.dumps(holder, sort_keys=True) + "\n").encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            os.fsync(fd)
        except OSError as error:
            lock.release()
            if is_disk_full(error):
                raise disk_full_error(error, path) from None
            raise
        return lock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Drop the lock (closing the descriptor). The file stays: removing it would let a third process lock
        a new file while a second one still waits on the old one."""
        if self._fd is not None:
            self._fd = None
            self._close()


def _close_lock_fd(fd: int) -> None:
    _held_lock_fds.discard(fd)
    os.close(fd)


def _read_holder(fd: int) -> dict[str, Any] | None:
    try:
        value = json.loads(os.pread(fd, 1 << 16, 0) or b"null")
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _close_held_locks_in_child() -> None:
    for fd in list(_held_lock_fds):
        try:
            os.close(fd)
        except OSError:
            pass
    _held_lock_fds.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_held_locks_in_child)


# -- .npz written in chunks -------------------------------------------------------------------------------

def write_npz(stream: IO[bytes], members: Iterable[tuple[str, Any, tuple[int, ...], Iterable[Any]]],
              compress: bool = True) -> None:
    """An .npz (numpy's zip of .npy files) written member by member, each from an iterable of numpy chunks
    along its first axis, so only one chunk is in memory at a time: members are (name, dtype, full shape,
    chunks). The .npy header (numpy.lib.format, version 1.0) is written first, then the chunks' bytes;
    `np.load` reads the file like one from `np.savez` / `np.savez_compressed`. Raises ValueError when the
    chunks do not add up to the declared shape and dtype. Use inside `atomic_write` (a kill leaves no file)."""
    import zipfile

    import numpy as np
    from numpy.lib import format as npy_format

    compression = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(stream, "w", compression=compression, allowZip64=True) as archive:
        for name, dtype, shape, chunks in members:
            dtype = np.dtype(dtype)
            header = {"descr": npy_format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
            rows = 0
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                npy_format.write_array_header_1_0(member, header)
                for chunk in chunks:
                    chunk = np.ascontiguousarray(chunk)
                    if chunk.dtype != dtype or chunk.shape[1:] != tuple(shape[1:]):
                        raise ValueError(f"{name}: a chunk of {chunk.dtype} {chunk.shape}, declared {dtype} {shape}")
                    rows += len(chunk)
                    if rows > shape[0]:
                        raise ValueError(f"{name}: more than the {shape[0]} rows declared")
                    member.write(chunk.tobytes())
            if rows != shape[0]:
                raise ValueError(f"{name}: {rows} rows written, {shape[0]} declared")
