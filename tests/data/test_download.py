"""The download source against a local HTTP server (127.0.0.1, in a thread) that honours Range requests:
a full download with its progress bar, resume from a partial file (after an interrupted transfer too),
clean restarts when the server cannot resume, checksum refusal, and a fast one-line failure offline."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import socket
import threading
import time

import numpy as np
import pytest

from gan_dist.data.benchmarks import write_archive_shards
from gan_dist.data.download import download_file, partial_path
from gan_dist.data.sources import SourceError
from gan_dist.registry.datasets import CIFAR10
from tests.data.official_formats import cifar10_files, random_images, write_archive

PAYLOAD = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that hangs up mid-file is part of these tests."""


@pytest.fixture
def server():
    """A server of `files` (path -> bytes) with knobs: ignore_range (answer 200), cut_after (send that many
    body bytes of the next response, then drop the connection). `requests` records (path, Range header)."""
    state = {"files": {}, "ignore_range": False, "cut_after": None, "requests": []}

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            data = state["files"].get(self.path)
            state["requests"].append((self.path, self.headers.get("Range")))
            if data is None:
                self.send_error(404)
                return
            start, status = 0, 200
            wanted = self.headers.get("Range")
            if wanted and not state["ignore_range"]:
                start = int(wanted.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
            self.send_response(status)
            self.send_header("Content-Length", str(len(data) - start))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            body = data[start:]
            if state["cut_after"] is not None:
                body, state["cut_after"] = body[: state["cut_after"]], None
                self.wfile.write(body)
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(body)

    httpd = _Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    state["url"] = f"http://127.0.0.1:{httpd.server_address[1]}"
    state["files"]["/data.bin"] = PAYLOAD
    yield state
    httpd.shutdown()
    httpd.server_close()


def test_a_full_download_shows_progress_is_checked_and_renamed(server, tmp_path, capsys):
    dest = tmp_path / "cache" / "data.bin"
    done = download_file(f"{server['url']}/data.bin", dest, digest=SHA)
    assert dest.read_bytes() == PAYLOAD and done.verified and done.resumed_from == 0 and done.digest == SHA
    assert not partial_path(dest).exists()
    err = capsys.readouterr().err
    assert "data.bin" in err and "100%" in err  # tqdm's bar, on stderr
    assert download_file(f"{server['url']}/data.bin", dest, digest=SHA, progress=False).resumed_from == -1
    assert len(server["requests"]) == 1  # already there and verified: no second request


def test_a_partial_file_is_resumed_with_a_range_request(server, tmp_path):
    dest = tmp_path / "data.bin"
    partial_path(dest).write_bytes(PAYLOAD[:123_456])
    done = download_file(f"{server['url']}/data.bin", dest, digest=SHA, progress=False)
    assert server["requests"] == [("/data.bin", "bytes=123456-")]
    assert done.resumed_from == 123_456 and done.verified and dest.read_bytes() == PAYLOAD


def test_an_interrupted_download_keeps_its_bytes_and_the_next_run_resumes(server, tmp_path):
    dest = tmp_path / "data.bin"
    server["cut_after"] = 100_000
    with pytest.raises(SourceError, match=r"interrupted at 100000 of 300000 bytes.*run again to resume") as stopped:
        download_file(f"{server['url']}/data.bin", dest, digest=SHA, progress=False)
    assert "\n" not in str(stopped.value) and partial_path(dest).stat().st_size == 100_000 and not dest.exists()
    done = download_file(f"{server['url']}/data.bin", dest, digest=SHA, progress=False)
    assert server["requests"][-1] == ("/data.bin", "bytes=100000-") and done.resumed_from == 100_000
    assert dest.read_bytes() == PAYLOAD


@pytest.mark.parametrize("why", ["server ignores ranges", "partial longer than the file"])
def test_a_server_that_cannot_resume_gets_a_clean_restart(server, tmp_path, why):
    dest = tmp_path / "data.bin"
    if why == "server ignores ranges":
        server["ignore_range"] = True
        partial_path(dest).write_bytes(b"\xff" * 5000)  # would corrupt the file if appended to
    else:
        partial_path(dest).write_bytes(PAYLOAD + b"extra")  # the server answers 416
    done = download_file(f"{server['url']}/data.bin", dest, digest=SHA, progress=False)
    assert done.resumed_from == 0 and done.verified and dest.read_bytes() == PAYLOAD


def test_a_checksum_mismatch_is_refused_in_one_line_unless_not_verified(server, tmp_path):
    dest = tmp_path / "data.bin"
    wrong = "0" * 64
    with pytest.raises(SourceError) as refused:
        download_file(f"{server['url']}/data.bin", dest, digest=wrong, progress=False)
    message = str(refused.value)
    assert "\n" not in message and "data.bin" in message and server["url"] in message and SHA in message
    assert not dest.exists() and not partial_path(dest).exists()  # the next run starts clean
    with pytest.warns(UserWarning, match="used anyway") as caught:
        done = download_file(f"{server['url']}/data.bin", dest, digest=wrong, verify_checksum=False, progress=False)
    assert len(caught) == 1 and not done.verified and dest.read_bytes() == PAYLOAD


def test_offline_fails_fast_in_one_line_naming_the_url_and_where_to_put_the_file(tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/cifar-10-binary.tar.gz"
    dest = tmp_path / "archives" / "cifar-10-binary.tar.gz"
    started = time.perf_counter()
    with pytest.raises(SourceError) as failed:
        download_file(url, dest, digest=SHA, progress=False)
    assert time.perf_counter() - started < 5
    message = str(failed.value)
    assert "\n" not in message and url in message and f"by hand to {dest}" in message
    assert not partial_path(dest).exists()


def test_the_download_source_writes_shards_and_refuses_a_wrong_archive(server, tmp_path):
    images, labels = random_images(4, 32, 32, 7), [0, 1, 2, 3]
    archive = write_archive(tmp_path / "cifar-10-binary.tar.gz", cifar10_files([(images, labels)], (images, labels)),
                            False)
    data = archive.read_bytes()
    server["files"]["/cifar-10-binary.tar.gz"] = data
    official = CIFAR10.benchmark
    url = f"{server['url']}/cifar-10-binary.tar.gz"
    # the real protocol, served a tiny archive under the official name: refused, nothing kept
    real = dataclasses.replace(CIFAR10, benchmark=dataclasses.replace(
        official, archive=dataclasses.replace(official.archive, url=url)))
    with pytest.raises(SourceError, match=r"cifar-10-binary\.tar\.gz from .* differs from the official c4a38c50"):
        write_archive_shards(tmp_path / "out", real, "download", cache_dir=tmp_path / "cache", progress=False,
                             verify_official_counts=False)
    assert not (tmp_path / "cache" / "cifar-10-binary.tar.gz").exists()
    # a protocol declaring the tiny archive's digest: downloaded, verified, recorded
    tiny = dataclasses.replace(CIFAR10, benchmark=dataclasses.replace(official, archive=dataclasses.replace(
        official.archive, url=url, sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))))
    manifest = write_archive_shards(tmp_path / "out", tiny, "download", cache_dir=tmp_path / "cache", progress=False,
                                    verify_official_counts=False)
    assert manifest["source"] == f"download:{url}" and manifest["benchmark"]["checksums"]["verified"]
    assert manifest["splits"]["train"]["num_samples"] == 4
