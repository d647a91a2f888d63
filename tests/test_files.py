"""gan_dist.files: the run folder's lock (FolderLock) and the one-line error of a full disk."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from gan_dist.files import (
    DiskFullError,
    FolderLock,
    LockHeld,
    LockUnsupported,
    atomic_write,
    write_bytes_durably,
)


def test_a_second_taker_is_refused_with_the_recorded_holder_and_takes_it_once_released(tmp_path):
    path = tmp_path / ".lock"
    first = FolderLock.acquire(path, {"pid": 1, "host": "a"})
    with pytest.raises(LockHeld) as held:
        FolderLock.acquire(path, {"pid": 2, "host": "b"})
    assert held.value.holder == {"pid": 1, "host": "a"}
    assert json.loads(path.read_text()) == {"host": "a", "pid": 1}  # the refused taker wrote nothing
    first.release()
    FolderLock.acquire(path, {"pid": 2, "host": "b"}).release()
    assert json.loads(path.read_text()) == {"host": "b", "pid": 2}


def test_a_forked_child_does_not_keep_the_lock(tmp_path):
    """flock belongs to the open file description, which fork shares: a DataLoader worker (or any child forked
    while the lock is held) would keep it after the trainer died. Children close their copy at fork."""
    path = tmp_path / ".lock"
    lock = FolderLock.acquire(path, {"pid": os.getpid()})
    to_child, from_parent = os.pipe()
    from_child, to_parent = os.pipe()
    child = os.fork()
    if child == 0:  # the child (its at-fork hooks have run): say so, wait for the parent, leave without cleanup
        os.write(to_parent, b"r")
        os.read(to_child, 1)
        os._exit(0)
    try:
        assert os.read(from_child, 1) == b"r"
        lock.release()  # as the OS does when the holder dies; the child still runs
        FolderLock.acquire(path, {"pid": "next"}).release()
    finally:
        os.write(from_parent, b"x")
        os.waitpid(child, 0)
        for fd in (to_child, from_parent, from_child, to_parent):
            os.close(fd)


def test_a_sigkilled_holder_never_blocks_the_next_start(tmp_path):
    path = tmp_path / ".lock"
    code = textwrap.dedent(f"""
        import os, time
        from pathlib import Path
        from gan_dist.files import FolderLock
        lock = FolderLock.acquire(Path({str(path)!r}), {{"pid": os.getpid()}})
        print("locked", flush=True)
        time.sleep(60)
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(LockHeld) as held:
            FolderLock.acquire(path, {})
        assert held.value.holder == {"pid": holder.pid}
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    FolderLock.acquire(path, {}).release()


def test_a_filesystem_without_flock_is_lock_unsupported_not_held(tmp_path, monkeypatch):
    import fcntl

    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_flock)
    with pytest.raises(LockUnsupported, match="flock is not supported here"):
        FolderLock.acquire(tmp_path / ".lock", {})


@pytest.mark.parametrize("code, cause", [(errno.ENOSPC, "no space left on device"),
                                         (errno.EDQUOT, "disk quota exceeded")])
def test_a_full_disk_is_one_line_naming_the_file_the_free_space_and_the_size(tmp_path, monkeypatch, code, cause):
    import gan_dist.files as files

    class Full:
        def __init__(self, *args, **kwargs) -> None:
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            pass

        def write(self, data) -> int:
            raise OSError(code, os.strerror(code))

    monkeypatch.setattr(files, "open", Full, raising=False)
    with pytest.raises(DiskFullError) as error:
        write_bytes_durably(tmp_path / "w.bin", b"x" * 3000)
    assert error.value.errno == code and error.value.filename == str(tmp_path / "w.bin")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{cause} writing {tmp_path / 'w.bin'}; ") and message.endswith(
        " free there; about 2.9 KiB needed"), message
    with pytest.raises(DiskFullError, match=f"{cause} writing {tmp_path / 'a.txt'}; .* free there"):
        atomic_write(tmp_path / "a.txt", lambda stream: stream.write(b"y"))
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # the temp file of the atomic write is gone
