"""Files that are never seen half-written: durable and atomic writes, append-only logs, sha256, the cache.

Every file gan_dist writes for others to read (shards, manifests, checkpoints, run records, metric caches)
goes through here: written under a hidden temp name, fsynced, renamed into place (a reader sees the old
file or the new one, never a torn one), with the folder fsynced so the rename survives a crash.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


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
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return hashlib.sha256(data).hexdigest()


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """write(stream) into a hidden temp file beside `path`, fsync, then rename it to `path`. The temp name is
    unique per host, process and call, so processes racing on a shared filesystem never share one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}-{time.monotonic_ns()}")
    try:
        with open(temp, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace `path` by `text` whole (a kill leaves the old file or the new one, never a torn one)."""
    atomic_write(path, lambda stream: stream.write(text.encode()))


def write_json_atomic(path: Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def append_line_durably(path: Path, line: str) -> None:
    """Append one line to an append-only log and fsync it. A line torn by a kill is ended first, so that
    it cannot merge with this one (a reader skips the torn line, see `read_lines`)."""
    with open(path, "a+b") as handle:
        handle.seek(0, os.SEEK_END)
        ends_open = False
        if handle.tell() > 0:
            handle.seek(-1, os.SEEK_END)
            ends_open = handle.read(1) != b"\n"
        handle.write((b"\n" if ends_open else b"") + line.encode() + b"\n")
        handle.flush()
        os.fsync(handle.fileno())


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
