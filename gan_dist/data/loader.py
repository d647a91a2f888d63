"""Streaming batches of any dataset's WebDataset shards: an endless, resumable training stream per
process, and an exact, non-resampled pass for evaluation.

Training (per process, `train_batches(dataset, data, ...)`), following docs/design-notes.md:
  in each DataLoader worker: resampled shard urls -> this rank's share (explicit node splitter) ->
  this worker's share -> tar samples -> shuffle buffer -> PNG decode (checked against the dataset's
  (C, H, W)) -> batches of B
  in the training process: WebLoader(batch_size=None) -> unbatched -> shuffle buffer -> batches of B
  -> with_epoch(steps per epoch) -> uint8 (B, C, H, W) tensors (pinned with pin_memory=True).
The training stream stays uint8 up to the device: a quarter of float32's bytes cross the host-device
link, and the consumer scales there (`to_unit_range`: x / 127.5 - 1, in [-1, 1]).
Every rank yields the same number of batches per epoch (the stream is endless; an epoch is
ceil(train_size / (B * world_size)) batches). Each epoch's pipeline is seeded from (seed, epoch, rank)
(and the worker id inside a worker), so batch k is a function of (seed, rank, world_size, B,
data.num_workers, data.shuffle_buffer, urls); `start_step=s` rebuilds epoch s // steps_per_epoch and
skips s % steps_per_epoch batches without decoding them. Not for `accelerator.prepare` (docs/design-notes.md).

Any WebDataset URL works: a brace pattern of local files, `pipe:cat ...`, http(s):// (read with curl).
A shard that is missing, corrupt or truncated raises ShardError naming it; with data.on_corrupt=warn
it is skipped with a warning and counted in `.stats`.
"""

from __future__ import annotations

import functools
import hashlib
import io
import itertools
import math
import os
import select
import signal
import tarfile
import traceback
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch import Tensor
from webdataset import tariterators

from gan_dist.config import DEFAULT_READ_TIMEOUT_S, ON_CORRUPT, DataConfig
from gan_dist.data.shards import ShardError
from gan_dist.data.sources import DataError

if TYPE_CHECKING:
    from gan_dist.data.datasets import ResolvedDataset

TAR_BLOCK_BYTES = 512
_ZERO_BLOCK = bytes(TAR_BLOCK_BYTES)
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")  # gzip, bzip2, xz: their own checks catch cuts
_DRAIN_CHUNK_BYTES = 1 << 16


@dataclass
class LoaderStats:
    """What on_corrupt=warn skipped so far: shard reads abandoned, and single samples dropped."""

    skipped_shards: int = 0
    skipped_samples: int = 0


MAX_AUTO_WORKERS = 8  # data.num_workers=None never starts more decoders per process than this


def resolve_num_workers(configured: int | None, local_processes: int = 1) -> int:
    """data.num_workers, with None resolved to the machine's share: the CPUs this process may use (its
    affinity mask: SLURM's --cpus-per-task) divided among the node's processes, minus one for the training
    process, between 1 and MAX_AUTO_WORKERS."""
    if configured is not None:
        return configured
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_AUTO_WORKERS, cpus // max(1, local_processes) - 1))


def steps_per_epoch(train_size: int, batch_size: int, world_size: int) -> int:
    """Batches per rank per epoch: ceil(train_size / (batch_size * world_size))."""
    return math.ceil(train_size / (batch_size * world_size))


def _derive_seed(*parts: Any) -> int:
    """A 63-bit seed from the parts' reprs: the same in every process (no hash randomization)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "big") >> 1


def _worker_id() -> int:
    """DataLoader worker id, 0 in the main process (also ResampledShards' worker_seed)."""
    info = torch.utils.data.get_worker_info()
    return 0 if info is None else info.id


def _split_by_rank(urls: Iterable[dict[str, Any]], rank: int, world_size: int) -> Iterator[dict[str, Any]]:
    """Explicit node splitter: every world_size-th shard url from position rank (never the raising default)."""
    return itertools.islice(urls, rank, None, world_size)


def to_unit_range(images: Tensor) -> Tensor:
    """uint8 (B, C, H, W) -> float32 x / 127.5 - 1 in [-1, 1], on the images' device (the training
    stream's consumer calls it after moving the uint8 batch to its device)."""
    return images.to(torch.float32).div_(127.5).sub_(1.0)


def _stack(samples: list[tuple[np.ndarray, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Collate (image (C, H, W) uint8, label) samples into (images (B, C, H, W) uint8, labels (B,) int64).

    Samples stay numpy arrays until the final batch: small arrays cross from the DataLoader workers
    pickled through the pipe, cheaper than one shared-memory tensor each.
    """
    return np.stack([image for image, _ in samples]), np.array([label for _, label in samples], dtype=np.int64)


def _stack_tensors(samples: list[tuple[np.ndarray, int]], pin_memory: bool = False) -> tuple[Tensor, Tensor]:
    """The final collation in the training process: (images uint8 (B, C, H, W), labels int64 (B,)) tensors,
    written straight into page-locked memory with pin_memory (for non_blocking copies to a CUDA device)."""
    if not pin_memory:
        images, labels = _stack(samples)
        return torch.from_numpy(images), torch.from_numpy(labels)
    first = samples[0][0]
    images_t = torch.empty((len(samples), *first.shape), dtype=torch.uint8, pin_memory=True)
    labels_t = torch.empty((len(samples),), dtype=torch.int64, pin_memory=True)
    np.stack([image for image, _ in samples], out=images_t.numpy())
    labels_t.numpy()[:] = [label for _, label in samples]
    return images_t, labels_t


class _CheckedTarStream:
    """A shard's byte stream that checks tar framing while tarfile reads it.

    Python's tarfile, in the streaming mode WebDataset uses, ends an archive silently at a damaged
    header, or at a cut that falls between members (a copy killed on a 4 KiB boundary does exactly
    that with these shards): the shard would just look shorter. This wrapper checks each header's
    checksum and member size as the bytes pass and remembers the first problem; `finish()` (at the
    end of the shard) reads the rest, checks the end-of-archive marker and raises ShardError. Problems
    are reported at the end because tarfile reads ahead: raising at once would lose the good samples
    before the damage. Compressed tars are passed through unchecked (gzip/bz2/xz catch cuts).
    """

    def __init__(self, stream: Any, url: str) -> None:
        self._stream = stream
        self.url = url
        self.problem: str | None = None  # first framing problem seen, reported by finish()
        self.failed = False  # finish() or close() raised for this shard
        self.reported = False  # the problem of this shard read was already handled (counted once)
        self._offset = 0  # bytes read so far
        self._next_header = 0  # offset of the next header block
        self._header = bytearray()  # header block bytes collected so far
        self._zero_blocks = 0
        self._ended = False
        self._checking = True

    def __repr__(self) -> str:
        return f"<shard {self.url}>"

    def _fail(self, problem: str) -> None:
        self.failed = True
        raise ShardError(f"corrupt or truncated shard {self.url}: {problem}", self.url)

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        if data and self._checking and self.problem is None:
            self._scan(data)
        return data

    def _scan(self, data: bytes) -> None:
        if self._offset == 0 and data.startswith(_COMPRESSED_MAGIC):
            self._checking = False
            return
        start, end = self._offset, self._offset + len(data)
        self._offset = end
        while not self._ended:
            cursor = self._next_header + len(self._header)
            if cursor >= end:
                return
            take = min(TAR_BLOCK_BYTES - len(self._header), end - cursor)
            self._header += data[cursor - start: cursor - start + take]
            if len(self._header) < TAR_BLOCK_BYTES:
                return
            block, at = bytes(self._header), self._next_header
            self._header.clear()
            if block == _ZERO_BLOCK:
                self._zero_blocks += 1
                self._next_header += TAR_BLOCK_BYTES
                self._ended = self._zero_blocks == 2
                continue
            if self._zero_blocks:
                self.problem = f"member header at byte {at} after an end-of-archive block"
                return
            try:
                stored = tarfile.nti(block[148:156])
                # unsigned sum with the checksum field read as spaces (fast path of tarfile.calc_chksums)
                checksum_ok = stored == sum(block) - sum(block[148:156]) + 256 or stored in tarfile.calc_chksums(
                    block)
                size = tarfile.nti(block[124:136])
            except tarfile.HeaderError:
                checksum_ok, size = False, 0
            if not checksum_ok or size < 0:
                self.problem = f"damaged tar header at byte {at}"
                return
            self._next_header += TAR_BLOCK_BYTES + math.ceil(size / TAR_BLOCK_BYTES) * TAR_BLOCK_BYTES

    def finish(self) -> None:
        """Read what tarfile left unread, check the end-of-archive marker, close the stream."""
        try:
            if self._checking:
                while self.read(_DRAIN_CHUNK_BYTES):
                    pass
                if self.problem is not None:
                    self._fail(self.problem)
                if not self._ended:
                    where = "inside a member" if self._offset < self._next_header else "between members"
                    self._fail(f"ends at byte {self._offset} ({where}) without the tar end-of-archive "
                               "marker: truncated")
        finally:
            self.close()

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            try:
                close()  # a pipe: (curl, cat) reports its exit status here
            except Exception as error:  # noqa: BLE001
                if not self.failed:
                    self._fail(f"reading it failed: {error}")


class _DeadlinePipe:
    """A shard read through a subprocess (a `pipe:` command, or curl for http(s)) that fails when the source
    sends nothing for timeout_s seconds, instead of blocking forever.

    WebDataset's Pipe reads its subprocess's stdout with a blocking read, and curl (as WebDataset runs it)
    has no overall time limit: a server that accepts the connection and never answers, or a `pipe:` command
    that hangs, would stall every rank of the job until SLURM's time limit. Here each read waits at most
    timeout_s for the pipe to become readable (select on its file descriptor), then reads what is there with
    os.read (short reads are fine: tarfile's stream mode loops). The buffered stdout object is never read,
    so no bytes sit unseen in its buffer. On a stall the subprocess is killed (its exit status would
    otherwise be awaited for WebDataset's 2-hour close timeout) and ShardError names the shard.
    """

    def __init__(self, pipe: Any, url: str, timeout_s: float) -> None:
        self._pipe, self.url, self._timeout_s = pipe, url, timeout_s
        self._fd = pipe.stream.fileno()

    def read(self, size: int = -1) -> bytes:
        ready, _, _ = select.select([self._fd], [], [], self._timeout_s)
        if not ready:
            self._pipe.proc.kill()
            raise ShardError(f"shard {self.url} sent no data for {self._timeout_s:g} s: the source stalled "
                             "(raise data.read_timeout_s for a slow source, or check the server / pipe: command)",
                             self.url)
        data = os.read(self._fd, size if size is not None and size > 0 else _DRAIN_CHUNK_BYTES)
        if not data:
            self._pipe.check_status()  # end of stream: a non-zero exit status of the command raises here
        return data

    def close(self) -> None:
        self._pipe.close()


def _open_shard(url: str, read_timeout_s: float) -> Any:
    """WebDataset's opener (files, pipe:, http(s) via curl), with a read deadline for subprocess sources."""
    stream = wds.gopen(url)
    if read_timeout_s > 0 and hasattr(stream, "proc") and hasattr(stream, "stream"):  # webdataset's Pipe
        return _DeadlinePipe(stream, url, read_timeout_s)
    return stream


def worker_error_message(error: BaseException) -> str:
    """The message of an error as the user should see it: one line for an error that a DataLoader worker
    raised (torch re-raises it in the training process with the worker's whole traceback in the message:
    "Caught ShardError in DataLoader worker process 0. Original Traceback ... ShardError: <message>")."""
    message = str(error)
    if not (message.startswith("Caught ") and "Original Traceback" in message):
        return message
    last = next((line for line in reversed(message.splitlines()) if line.strip()), message)
    prefix = f"{type(error).__module__}.{type(error).__name__}: "
    for candidate in (prefix, f"{type(error).__name__}: "):
        if last.startswith(candidate):
            return last[len(candidate):]
    return last


def reraise_data_error(error: BaseException) -> None:
    """Re-raise a DataError from a loader worker with its one-line message (same type, same url)."""
    if isinstance(error, DataError):
        message = worker_error_message(error)
        if message != str(error):
            clean = ShardError(message, getattr(error, "url", None)) if isinstance(error, ShardError) \
                else type(error)(message)
            raise clean from None


class _ShardSamples:
    """Pipeline stage: {url} dicts -> raw samples {__key__, __url__, png, cls}, enforcing on_corrupt.

    Uses WebDataset's own opener (gopen: files, pipe:, http via curl), tar expander and key grouping;
    adds the tar framing check and turns any read error into ShardError naming the shard.
    """

    def __init__(self, on_corrupt: str, stats: LoaderStats, max_failures_in_a_row: int | None = None, *,
                 image_shape: tuple[int, int, int], num_classes: int | None = None,
                 read_timeout_s: float = DEFAULT_READ_TIMEOUT_S) -> None:
        if on_corrupt not in ON_CORRUPT:
            raise ValueError(f"on_corrupt (data.on_corrupt) must be one of {', '.join(ON_CORRUPT)}, "
                             f"got {on_corrupt!r}")
        channels, height, width = image_shape
        if channels not in (1, 3):
            raise ValueError(f"image_shape must be (1 | 3, H, W), got {image_shape}")
        self.image_shape = image_shape
        self.num_classes = num_classes  # None: any label >= 0; 0: unlabeled (label -1); K: labels 0..K-1
        self._mode = "L" if channels == 1 else "RGB"
        self._size = (width, height)  # PIL's order
        self.on_corrupt = on_corrupt
        self.stats = stats
        self.max_failures_in_a_row = max_failures_in_a_row  # None: finite stream, no limit needed
        self.read_timeout_s = read_timeout_s  # 0: no deadline
        self._current: _CheckedTarStream | None = None
        self._failures_in_a_row = 0

    def __call__(self, urls: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        files = tariterators.tar_file_expander(self._open(urls), handler=self._handle)
        return tariterators.group_by_keys(self._end_of_shard(files), handler=self._handle)

    def _open(self, urls: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for item in urls:
            url = item["url"]
            self._current = None
            try:
                stream = _open_shard(url, self.read_timeout_s)
            except Exception as error:  # noqa: BLE001
                self._handle(ShardError(f"cannot open shard {url}: {type(error).__name__}: {error}", url))
                continue
            self._current = _CheckedTarStream(stream, url)
            yield {"url": url, "stream": self._current}

    def _end_of_shard(self, files: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for item in files:
            if item == {}:  # tar_file_expander's end-of-shard marker
                if self._current is not None:
                    try:
                        self._current.finish()
                    except ShardError as error:
                        self._handle(error)
            else:
                self._failures_in_a_row = 0
            yield item

    def _handle(self, error: BaseException) -> bool:
        """WebDataset exception handler: raise ShardError (on_corrupt=raise) or warn, count, go on."""
        current = self._current
        if getattr(error, "handled", False):  # raised by this handler already, passing outwards
            error.args = error.args[:1]  # drop the (stream, url) that tar_file_expander appended
            raise error
        if isinstance(error, ShardError):
            url, message = error.url, str(error.args[0]).split(" @ ")[0]
        else:
            url = current.url if current is not None else next(
                (a for a in reversed(error.args) if isinstance(a, str)), "?")
            reason = str(error.args[0]).split(" @ ")[0] if error.args else ""
            message = f"corrupt or truncated shard {url}: {type(error).__name__}: {reason}"
        this_shard = current is not None and current.url == url
        repeat = this_shard and current.reported  # one broken read can raise more than once: count it once
        if this_shard:
            current.reported = True
        if self.on_corrupt == "raise":
            raised = ShardError(f"{message} (data.on_corrupt=warn skips such shards; `gan-dist prepare-data` "
                                "rewrites damaged local shards)", url)
            raised.handled = True  # type: ignore[attr-defined]
            raise raised from error
        if not repeat:
            self.stats.skipped_shards += 1
            self._failures_in_a_row += 1
            warnings.warn(f"skipping the rest of shard {url} (data.on_corrupt=warn): {message}",
                          RuntimeWarning, stacklevel=2)
        if self.max_failures_in_a_row is not None and self._failures_in_a_row > self.max_failures_in_a_row:
            raise ShardError(f"{self._failures_in_a_row} shard reads in a row failed (last: {message}); "
                             "no readable shard among the data urls", url) from error
        return True

    def decode(self, sample: dict[str, Any]) -> tuple[np.ndarray, int] | None:
        """(image uint8 (C, H, W), label) of a raw sample; None if dropped (on_corrupt=warn).

        The PNG must have the dataset's mode (L for C=1, RGB for C=3) and size; the label must be in
        0..num_classes-1, and is -1 for an unlabeled dataset (num_classes 0, no .cls member).
        """
        try:
            png, cls = sample.get("png"), sample.get("cls")
            unlabeled = self.num_classes == 0
            if png is None or (cls is None and not unlabeled):
                raise ValueError(f"has {sorted(k for k in sample if not k.startswith('__'))}, needs png and cls")
            with Image.open(io.BytesIO(png)) as image:
                if image.mode != self._mode or image.size != self._size:
                    raise ValueError(f"image is {image.mode} {image.size}, expected {self._mode} {self._size}")
                pixels = np.array(image, dtype=np.uint8)  # (H, W) or (H, W, 3), a writable copy
            label = -1 if unlabeled else int(cls)  # type: ignore[arg-type]
            if not unlabeled and (label < 0 or (self.num_classes is not None and label >= self.num_classes)):
                top = "" if self.num_classes is None else f"..{self.num_classes - 1}"
                raise ValueError(f"label {label} outside 0{top}")
        except Exception as error:  # noqa: BLE001 - PIL raises many types
            message = (f"corrupt sample {sample.get('__key__')} in shard {sample.get('__url__')}: "
                       f"{type(error).__name__}: {error}")
            if self.on_corrupt == "raise":
                raise ShardError(f"{message} (data.on_corrupt=warn skips such samples; `gan-dist prepare-data` "
                                 "rewrites damaged local shards)", sample.get("__url__")) from error
            self.stats.skipped_samples += 1
            warnings.warn(f"{message} (skipped: data.on_corrupt=warn)", RuntimeWarning, stacklevel=2)
            return None
        return (pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)), label  # (C, H, W)


class _WorkerShuffle:
    """Sample shuffle buffer inside a worker, seeded per (epoch seed, worker id)."""

    def __init__(self, buffer_size: int, seed: int) -> None:
        self.buffer_size, self.seed = buffer_size, seed

    def __call__(self, samples: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        if self.buffer_size < 1:
            return samples
        return wds.shuffle(self.buffer_size, seed=_derive_seed(self.seed, _worker_id()))(samples)


class _DecodeUnlessSkipped:
    """Decode each sample, except the ones a resumed epoch skips anyway (their positions in this
    worker's output are in `skip[worker id]`): those become cheap placeholders that are dropped later."""

    def __init__(self, reader: _ShardSamples, skip: dict[int, frozenset[int]]) -> None:
        self.reader, self.skip = reader, skip

    def __call__(self, samples: Iterable[dict[str, Any]]) -> Iterator[tuple[np.ndarray, int]]:
        skip = self.skip.get(_worker_id(), frozenset())
        placeholder = (np.zeros(self.reader.image_shape, dtype=np.uint8), -1)
        position = 0
        for sample in samples:
            if position in skip:
                yield placeholder
                position += 1
                continue
            decoded = self.reader.decode(sample)
            if decoded is not None:
                yield decoded
                position += 1


class _AttachStats:
    """Append the counts skipped since the last batch, so they reach the training process from workers."""

    def __init__(self, stats: LoaderStats) -> None:
        self.stats = stats

    def __call__(self, batches: Iterable[tuple[np.ndarray, np.ndarray]]
                 ) -> Iterator[tuple[np.ndarray, np.ndarray, tuple[int, int]]]:
        sent = (0, 0)
        for images, labels in batches:
            now = (self.stats.skipped_shards, self.stats.skipped_samples)
            yield images, labels, (now[0] - sent[0], now[1] - sent[1])
            sent = now


class _CollectStats:
    """Training-process side of _AttachStats: add the counts up, pass (images, labels) on."""

    def __init__(self, stats: LoaderStats) -> None:
        self.stats = stats

    def __call__(self, batches: Iterable[tuple[np.ndarray, np.ndarray, tuple[int, int]]]
                 ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for images, labels, (skipped_shards, skipped_samples) in batches:
            self.stats.skipped_shards += skipped_shards
            self.stats.skipped_samples += skipped_samples
            yield images, labels


def _unchanged(items: Iterator[Any]) -> Iterator[Any]:
    return items


def _loader_shuffle(buffer_size: int, seed: int) -> Callable[[Iterator[Any]], Iterator[Any]]:
    """The training-process shuffle (the same stage is replayed by `_skipped_positions`)."""
    if buffer_size < 1:
        return _unchanged
    return wds.shuffle(buffer_size, seed=seed)


def _skipped_positions(num_batches: int, batch_size: int, num_streams: int, loader_shuffle: Callable[
        [Iterator[Any]], Iterator[Any]]) -> dict[int, frozenset[int]]:
    """Which (worker, position in that worker's output) samples end up in the first num_batches batches.

    The DataLoader takes in-pipeline batches of batch_size from workers 0, 1, ..., W-1, 0, ... in turn,
    and the loader shuffle's choices depend only on how many items passed, never on their content:
    replaying the same shuffle stage on (worker, position) labels gives exactly the samples to skip.
    """
    if num_batches == 0:
        return {}

    def labels() -> Iterator[tuple[int, int]]:
        for batch_index in itertools.count():
            worker, round_index = batch_index % num_streams, batch_index // num_streams
            for i in range(batch_size):
                yield worker, round_index * batch_size + i

    positions: dict[int, set[int]] = defaultdict(set)
    for worker, position in itertools.islice(loader_shuffle(labels()), num_batches * batch_size):
        positions[worker].add(position)
    return {worker: frozenset(found) for worker, found in positions.items()}


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers ignore SIGTERM, SIGUSR1 and SIGINT.

    SLURM (scancel, preemption, the time-limit warning) and `timeout` signal every process of the job
    step or process group, workers included, and a terminal's Ctrl-C reaches the whole foreground process
    group. A worker killed by the signal makes the training process raise "DataLoader worker ... is
    killed by signal" (or a worker's KeyboardInterrupt traceback) in the middle of a step, before the
    trainer can finish the step and write its checkpoint. Workers stop with the training process anyway
    (their queues close; SLURM's SIGKILL follows its SIGTERM).
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def expand_urls(urls: str) -> list[str]:
    """The shard URLs of a WebDataset pattern (braces expanded); DataError if there are none."""
    return _expand(urls)


def _expand(urls: str) -> list[str]:
    url_list = wds.shardlists.expand_urls(urls)
    if not url_list or not all(url_list):
        raise DataError(f"no shard urls in {urls!r} (data.train_urls / data.test_urls, or the local manifest)")
    return url_list


def _check_batch_args(batch_size: int, rank: int, world_size: int) -> None:
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")


def epoch_batches(dataset: ResolvedDataset, data: DataConfig, batch_size: int, seed: int, rank: int,
                  world_size: int, epoch: int, skip_batches: int = 0, *, stats: LoaderStats | None = None,
                  pin_memory: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
    """Exactly steps_per_epoch - skip_batches training batches of one epoch of this rank.

    Reads dataset.train_urls (dataset.train_size samples per epoch across ranks); data gives num_workers,
    shuffle_buffer and on_corrupt. Yields (images uint8 (B, C, H, W), labels int64 (B,)) CPU tensors, in
    page-locked memory with pin_memory. Skipped batches are not decoded.
    """
    _check_batch_args(batch_size, rank, world_size)
    urls = dataset.train_urls
    steps = steps_per_epoch(dataset.train_size, batch_size, world_size)
    if not 0 <= skip_batches < steps:
        raise ValueError(f"skip_batches must be in [0, {steps}), got {skip_batches}")
    stats = stats if stats is not None else LoaderStats()
    num_urls = len(_expand(urls))
    num_workers = resolve_num_workers(data.num_workers)
    num_streams = max(1, num_workers)
    loader_shuffle = _loader_shuffle(data.shuffle_buffer, _derive_seed(seed, epoch, rank, "loader"))
    worker_stats = LoaderStats()  # lives in the worker; its counts travel with the batches
    reader = _ShardSamples(data.on_corrupt, worker_stats, max_failures_in_a_row=10 + 3 * num_urls,
                           image_shape=dataset.image_shape, num_classes=dataset.num_classes,
                           read_timeout_s=dataset.read_timeout_s)
    dataset_pipeline = wds.DataPipeline(
        # endless shard urls, seeded by (seed, epoch, rank) and the worker id
        wds.ResampledShards(urls, seed=_derive_seed(seed, epoch, rank, "shards"), worker_seed=_worker_id,
                            deterministic=True),
        functools.partial(_split_by_rank, rank=rank, world_size=world_size),  # this rank's share
        wds.split_by_worker,  # this worker's share
        reader,  # tar -> raw samples (png bytes, cls)
        _WorkerShuffle(data.shuffle_buffer, _derive_seed(seed, epoch, rank, "samples")),
        _DecodeUnlessSkipped(reader, _skipped_positions(skip_batches, batch_size, num_streams, loader_shuffle)),
        wds.batched(batch_size, collation_fn=_stack, partial=False),  # (uint8 (B, C, H, W), int64 (B,))
        _AttachStats(worker_stats),
    )
    # Own generator: DataLoader otherwise draws its base seed from the global torch RNG at every
    # iterator creation, which would shift the training RNG (dropout) after an exact resume.
    loader_rng = torch.Generator().manual_seed(_derive_seed(seed, epoch, rank, "dataloader"))
    # collate_fn=_unchanged keeps the numpy batches: no shared-memory tensor per small array
    loader = (wds.WebLoader(dataset_pipeline, batch_size=None, num_workers=num_workers, generator=loader_rng,
                            worker_init_fn=ignore_stop_signals if num_workers > 0 else None,
                            collate_fn=_unchanged)
              .compose(_CollectStats(stats))
              .unbatched()
              .compose(loader_shuffle)  # mixes the workers' batches
              .batched(batch_size, collation_fn=functools.partial(_stack_tensors, pin_memory=pin_memory),
                       partial=False)
              .with_epoch(steps))
    try:
        for index, batch in enumerate(loader):
            if index >= skip_batches:
                yield batch  # (B, C, H, W) uint8, (B,) int64
    except Exception as error:
        # An error re-raised from a worker keeps the DataLoader iterator in a reference cycle
        # (exception -> traceback -> frames); the cyclic GC's tear-down of it then waits 5 s per worker.
        traceback.clear_frames(error.__traceback__)
        reraise_data_error(error)
        raise


def _endless(args: tuple[Any, ...], start_step: int, steps: int, stats: LoaderStats,
             pin_memory: bool) -> Iterator[tuple[Tensor, Tensor]]:
    epoch, skip = divmod(start_step, steps)
    while True:
        yield from epoch_batches(*args, epoch=epoch, skip_batches=skip, stats=stats, pin_memory=pin_memory)
        epoch, skip = epoch + 1, 0


class TrainBatches(Iterator[tuple[Tensor, Tensor]]):
    """The endless training stream of one process; see `train_batches`.

    Attributes: steps_per_epoch; step (index of the next batch); stats (LoaderStats, on_corrupt=warn).
    Dropping the last reference (or `close()`) stops the DataLoader workers at once: the generator
    does not refer back to this object, so no reference cycle leaves them to the cyclic GC (whose
    tear-down of a DataLoader iterator waits 5 s per worker).
    """

    def __init__(self, dataset: ResolvedDataset, data: DataConfig, batch_size: int, seed: int, rank: int,
                 world_size: int, start_step: int = 0, pin_memory: bool = False) -> None:
        _check_batch_args(batch_size, rank, world_size)
        if start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {start_step}")
        if dataset.train_size <= 0:
            raise DataError(f"{dataset.describe()}: the train split is empty")
        self.image_shape = dataset.image_shape
        self.train_size = dataset.train_size
        self.steps_per_epoch = steps_per_epoch(self.train_size, batch_size, world_size)
        self.step = start_step
        self.stats = LoaderStats()
        self._batches = _endless((dataset, data, batch_size, seed, rank, world_size), start_step,
                                 self.steps_per_epoch, self.stats, pin_memory)

    def __next__(self) -> tuple[Tensor, Tensor]:
        batch = next(self._batches)
        self.step += 1
        return batch

    def close(self) -> None:
        """Stop the DataLoader workers now."""
        self._batches.close()


def train_batches(dataset: ResolvedDataset, data: DataConfig, batch_size: int, seed: int, rank: int,
                  world_size: int, start_step: int = 0, *, pin_memory: bool = False) -> TrainBatches:
    """Endless (images uint8 (B, C, H, W), labels int64 (B,)) CPU tensors of dataset's train split for
    process `rank`; labels are -1 for an unlabeled dataset.

    batch_size is per process. data.num_workers DataLoader workers decode; data.shuffle_buffer bounds both
    shuffle buffers; data.on_corrupt decides what a damaged shard does. `start_step=s` yields exactly
    batches s, s+1, ... of a fresh stream (exact resume; with data.on_corrupt=warn, only as long as no
    single undecodable sample was dropped before s). pin_memory=True (when a CUDA device consumes the
    batches) puts them in page-locked memory, for `.to(device, non_blocking=True)`; then
    `to_unit_range` on the device gives float32 in [-1, 1]. Never pass it through accelerator.prepare
    (docs/design-notes.md).
    """
    return TrainBatches(dataset, data, batch_size, seed, rank, world_size, start_step, pin_memory)


def _exact_pass(reader: _ShardSamples, urls: list[str], offset: int, stride: int, batch_size: int,
                with_keys: bool, as_uint8: bool) -> Iterator[tuple[Any, ...]]:
    decoded_samples: list[tuple[np.ndarray, int]] = []
    keys: list[str] = []

    def emit() -> tuple[Any, ...]:
        images, labels = _stack(decoded_samples)  # (b, C, H, W) uint8, (b,) int64
        pixels = torch.from_numpy(images)
        batch = (pixels if as_uint8 else to_unit_range(pixels), torch.from_numpy(labels))
        return (*batch, list(keys)) if with_keys else batch

    samples = reader(dict(url=url) for url in urls)
    for sample in itertools.islice(samples, offset, None, stride):  # select, then decode
        decoded = reader.decode(sample)
        if decoded is None:
            continue
        decoded_samples.append(decoded)
        keys.append(sample["__key__"])
        if len(decoded_samples) == batch_size:
            yield emit()
            decoded_samples.clear()
            keys.clear()
    if decoded_samples:
        yield emit()


class EvalBatches(Iterator[tuple[Any, ...]]):
    """One exact pass; see `eval_batches`. Attributes: num_samples (yielded so far), stats."""

    def __init__(self, urls: str, batch_size: int, rank: int, world_size: int, on_corrupt: str,
                 with_keys: bool, image_shape: tuple[int, int, int], num_classes: int | None = None,
                 as_uint8: bool = False, read_timeout_s: float = DEFAULT_READ_TIMEOUT_S) -> None:
        _check_batch_args(batch_size, rank, world_size)
        url_list = _expand(urls)
        if len(url_list) % world_size == 0:  # whole shards per rank
            self.urls, stride, offset = url_list[rank::world_size], 1, 0
        else:  # every rank reads every shard and keeps every world_size-th sample
            self.urls, stride, offset = url_list, world_size, rank
        self.num_samples = 0
        self.stats = LoaderStats()
        reader = _ShardSamples(on_corrupt, self.stats, image_shape=image_shape, num_classes=num_classes,
                               read_timeout_s=read_timeout_s)
        self._batches = _exact_pass(reader, self.urls, offset, stride, batch_size, with_keys, as_uint8)

    def __next__(self) -> tuple[Any, ...]:
        batch = next(self._batches)
        self.num_samples += len(batch[1])
        return batch


def eval_batches(urls: str, batch_size: int, rank: int, world_size: int, on_corrupt: str = "raise", *,
                 with_keys: bool = False, image_shape: tuple[int, int, int],
                 num_classes: int | None = None, as_uint8: bool = False,
                 read_timeout_s: float = DEFAULT_READ_TIMEOUT_S) -> EvalBatches:
    """One exact, non-resampled pass in a fixed order; across ranks every sample comes exactly once.

    Yields (images float32 (b, C, H, W) in [-1, 1] (uint8 with as_uint8), labels int64 (b,)) [+ keys
    list[str] with with_keys], b = batch_size except for the last batch. Every PNG must have image_shape
    (C, H, W); labels must be in 0..num_classes-1 (num_classes None: any label >= 0; 0: unlabeled, labels
    -1). When world_size divides the number of shards, each rank reads whole shards (shard i goes to rank
    i % world_size); otherwise every rank reads all shards and keeps samples rank, rank + world_size, ...
    (decoding only those). Per-rank counts can differ (by one sample in the second case): gather with
    padding, not per-batch collectives.
    """
    return EvalBatches(urls, batch_size, rank, world_size, on_corrupt, with_keys, image_shape, num_classes,
                       as_uint8, read_timeout_s)


def split_batches(dataset: ResolvedDataset, split: str, batch_size: int, rank: int = 0, world_size: int = 1, *,
                  with_keys: bool = False, as_uint8: bool = False) -> EvalBatches:
    """eval_batches over one split (train | test) of a resolved dataset, with its shape, classes and
    on_corrupt."""
    urls = {"train": dataset.train_urls, "test": dataset.test_urls}[split]
    if not urls:
        raise DataError(f"the {split} split of {dataset.describe()} has no samples")
    return eval_batches(urls, batch_size, rank, world_size, dataset.on_corrupt, with_keys=with_keys,
                        image_shape=dataset.image_shape, num_classes=dataset.num_classes, as_uint8=as_uint8,
                        read_timeout_s=dataset.read_timeout_s)
