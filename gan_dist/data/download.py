"""Download one file over HTTP(S): progress bar, checksum, temp name then rename, resume with a Range request.

`download_file(url, dest, sha256=...)`:
  - dest already there: its digest is checked (and it is used as it is when it matches);
  - bytes arrive in a stable hidden partial file next to dest (`.NAME.part`); when one is left from an
    interrupted run, the download resumes from its end with `Range: bytes=N-` (206 Partial Content); a
    server that ignores the range (200) or refuses it (416) gets a clean restart from byte 0;
  - the digest is computed while the bytes arrive (the partial part first, when resuming); a mismatch
    deletes the partial file (the next run starts clean) and raises one line naming the file, unless
    verify_checksum=False: then one warning, and the file is kept;
  - complete and checked: fsync, then renamed to dest (readers never see half a file);
  - offline: the host is probed first with a short deadline (DNS included), so a machine without network
    fails within seconds with one line naming the URL and where to put the file by hand.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import os
import re
import sys
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from gan_dist.data.sources import SourceError, probe_host

PROBE_TIMEOUT_S = 4.0  # DNS + TCP connect
READ_TIMEOUT_S = 30.0  # per socket operation while downloading
CHUNK_BYTES = 1 << 20
USER_AGENT = "gan_dist-download/1"
_CONTENT_RANGE_RE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


@dataclass(frozen=True)
class Downloaded:
    """What `download_file` did: the file, its digest, whether it matched, and how it got there."""

    path: Path
    digest: str  # hex, of `algorithm`
    algorithm: str
    verified: bool  # the digest equals the expected one (False: no expected digest, or verify_checksum=False)
    resumed_from: int  # bytes already on disk when this download started (0: fresh, -1: dest was already there)


def file_digest(path: str | os.PathLike, algorithm: str = "sha256", chunk_bytes: int = CHUNK_BYTES) -> str:
    """Hex digest (sha256 | md5 | any hashlib name) of a file, read in chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as stream:
        while chunk := stream.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def partial_path(dest: Path) -> Path:
    """Where the bytes of `dest` accumulate until it is complete and checked."""
    return dest.with_name(f".{dest.name}.part")


def _by_hand(url: str, dest: Path, digest: str | None, algorithm: str) -> str:
    check = f" ({algorithm} {digest})" if digest else ""
    return f"download {url}{check} by hand to {dest} (then data.source=archive:{dest})"


def _mismatch(dest: Path, url: str, actual: str, expected: str, algorithm: str, verify: bool, action: str) -> None:
    message = (f"{dest.name} from {url}: {algorithm} {actual} differs from the official {expected}; a different "
               f"or damaged file ({action})")
    if verify:
        raise SourceError(f"{message}; verify_checksums=False (data.verify_checksums=false) uses it anyway")
    warnings.warn(f"{message}; used anyway because verify_checksums=False", UserWarning, stacklevel=3)


def download_file(url: str, dest: str | os.PathLike, *, digest: str | None = None, algorithm: str = "sha256",
                  size_bytes: int | None = None, verify_checksum: bool = True, progress: bool = True,
                  probe_timeout_s: float = PROBE_TIMEOUT_S, read_timeout_s: float = READ_TIMEOUT_S) -> Downloaded:
    """Make `dest` hold the file at `url` (see the module docstring); returns what was done.

    digest / algorithm: the expected hex digest (None: nothing to check). size_bytes: the expected size, for
    the progress bar when the server does not say. progress: a tqdm bar on stderr.
    """
    dest = Path(dest).expanduser()
    if dest.is_file():
        actual = file_digest(dest, algorithm)
        if digest is not None and actual != digest:
            _mismatch(dest, url, actual, digest, algorithm, verify_checksum,
                      f"already at {dest}: remove it to download again")
        return Downloaded(dest, actual, algorithm, digest is not None and actual == digest, -1)
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(dest)
    with open(partial, "ab") as lock:  # one writer per partial file (another process: refuse, don't mix)
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise SourceError(f"{partial} is being written by another process; wait for it to finish") from None
        try:
            resumed_from, actual = _fetch(url, dest, partial, digest, algorithm, size_bytes, progress,
                                          probe_timeout_s, read_timeout_s)
        except BaseException:
            if partial.stat().st_size == 0:
                partial.unlink(missing_ok=True)  # nothing to resume from
            raise
        if digest is not None and actual != digest:
            if verify_checksum:
                partial.unlink(missing_ok=True)
            _mismatch(dest, url, actual, digest, algorithm, verify_checksum, f"{partial.name} deleted"
                      if verify_checksum else "kept")
        os.replace(partial, dest)
    return Downloaded(dest, actual, algorithm, digest is not None and actual == digest, resumed_from)


def _open(url: str, start: int, timeout_s: float) -> http.client.HTTPResponse:
    headers = {"User-Agent": USER_AGENT}
    if start:
        headers["Range"] = f"bytes={start}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s)  # noqa: S310


def _request(url: str, start: int, timeout_s: float) -> tuple[http.client.HTTPResponse, int, int | None]:
    """(response, the byte it starts at, the file's total size if the server says) for bytes start.. of url:
    a range request when start > 0, falling back to the whole file when the server cannot give that range."""
    try:
        response = _open(url, start, timeout_s)
    except urllib.error.HTTPError as error:
        if error.code != 416 or not start:  # 416: the partial file is not a prefix the server can extend
            raise
        error.close()
        return _request(url, 0, timeout_s)
    if start and response.status == 206:
        match = _CONTENT_RANGE_RE.match(response.headers.get("Content-Range", ""))
        if match and int(match[1]) == start:
            return response, start, None if match[3] == "*" else int(match[3])
        response.close()  # not the range asked for: start over
        return _request(url, 0, timeout_s)
    length = response.headers.get("Content-Length")  # 200: the whole file (a server may ignore ranges)
    return response, 0, int(length) if length and length.isdigit() else None


def _fetch(url: str, dest: Path, partial: Path, digest: str | None, algorithm: str, size_bytes: int | None,
           progress: bool, probe_timeout_s: float, read_timeout_s: float) -> tuple[int, str]:
    """Complete `partial` from `url` (resuming when it holds bytes); (bytes kept from before, digest)."""
    from tqdm import tqdm

    start = partial.stat().st_size
    if size_bytes is not None and start == size_bytes:  # complete, killed before the rename: just check it
        return start, file_digest(partial, algorithm)
    if size_bytes is not None and start > size_bytes:
        start = 0  # longer than the official file: not a prefix of it
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise SourceError(f"cannot download {url}: only http(s) URLs; {_by_hand(url, dest, digest, algorithm)}")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        probe_host(parsed.hostname, port, probe_timeout_s)
        response, start, total = _request(url, start, read_timeout_s)
    except (SourceError, urllib.error.URLError, OSError, http.client.HTTPException) as error:
        reason = " ".join(str(getattr(error, "reason", error)).split())
        raise SourceError(f"cannot download {url}: {reason}; {_by_hand(url, dest, digest, algorithm)}") from None
    total = total if total is not None else size_bytes
    hasher = hashlib.new(algorithm)
    if start:
        with open(partial, "rb") as stream:
            while chunk := stream.read(CHUNK_BYTES):
                hasher.update(chunk)
    received = start
    with response, open(partial, "r+b") as out, \
            tqdm(total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
                 disable=not progress, file=sys.stderr, mininterval=0.5) as bar:
        out.seek(start)
        out.truncate()
        try:
            while chunk := response.read(CHUNK_BYTES):
                out.write(chunk)
                hasher.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as error:  # timeouts, resets, IncompleteRead
            reason = f"{type(error).__name__}: {' '.join(str(error).split())}"
            raise SourceError(f"download of {url} interrupted at {received} of {total or '?'} bytes ({reason}); "
                              f"run again to resume from {partial}") from None
        finally:
            out.flush()
            os.fsync(out.fileno())
    if total is not None and received != total:
        raise SourceError(f"download of {url} interrupted at {received} of {total} bytes (the connection closed "
                          f"early); run again to resume from {partial}")
    return start, hasher.hexdigest()
