"""`gan-dist train` as a user runs it: overrides anywhere on the line, and expected failures (bad, stalled or
missing data) as one line with exit status 1, before anything is written where that is possible."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from gan_dist.cli import main as cli_main
from gan_dist.data.shards import shard_name


def train_args(shards: Path, out_dir: Path, *overrides: str) -> list[str]:
    return ["train", "configs/debug.yaml", f"data.root={shards}", f"run.out_dir={out_dir}", "run.name=r",
            "log.tracker=none", "log.sample_every=0", "eval.eval_every=0", *overrides]


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_overrides_may_follow_resume(mnist_shards, tmp_path, capsys):
    assert cli_main(train_args(mnist_shards, tmp_path, "train.num_steps=2", "checkpoint.every=2")) == 0
    # `--resume auto` first, then more overrides: argparse alone refuses these ("unrecognized arguments").
    status = cli_main(["train", "configs/debug.yaml", "--resume", "auto", f"data.root={mnist_shards}",
                       f"run.out_dir={tmp_path}", "run.name=r", "log.tracker=none", "log.sample_every=0",
                       "eval.eval_every=0", "train.num_steps=4"])
    assert status == 0
    out = capsys.readouterr().out
    assert "at step 2" in out
    assert json.loads((tmp_path / "r" / "done.json").read_text())["step"] == 4
    # The evaluation at the end: printed with its protocol, which evals.jsonl records beside the numbers.
    assert "protocol: classifier" in out and "200 generated vs the 10000 test images" in out
    record = json.loads((tmp_path / "r" / "evals.jsonl").read_text().splitlines()[-1])
    assert record["step"] == 4 and "fid" in record["metrics"] and "kid" in record["metrics"]
    assert record["protocol"]["feature_net"] == "classifier" and record["protocol"]["num_generated"] == 200
    assert record["protocol"]["reference"] == {"split": "test"} and record["protocol"]["floor"]["split"] == "train"


def test_an_unknown_option_after_resume_is_still_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as raised:
        cli_main(["train", "configs/debug.yaml", "--resume", "auto", "--bogus", f"run.out_dir={tmp_path}"])
    assert raised.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("urls", ["'  '", "'/data/a.tar::'"])
def test_a_train_shard_list_that_names_no_shard_is_refused_before_anything_is_written(mnist_shards, tmp_path,
                                                                                      capsys, urls):
    status = cli_main(train_args(mnist_shards, tmp_path / "runs", f"data.train_urls={urls}", "train.num_steps=2"))
    line = one_line(capsys.readouterr().err)
    assert status == 1
    assert "data.train_urls=" in line and "names no shard (an empty or blank URL)" in line
    assert not (tmp_path / "runs").exists()


def test_train_shards_that_are_not_there_are_named(mnist_shards, tmp_path, capsys):
    status = cli_main(train_args(mnist_shards, tmp_path / "runs", "data.train_urls=/no/such/mnist-train-{000000..000001}.tar",
                                 "data.loader=stream", "train.num_steps=2"))
    assert status == 1
    assert "/no/such/mnist-train-00000" in one_line(capsys.readouterr().err)


def test_a_corrupt_shard_read_by_a_loader_worker_is_one_line(mnist_shards, tmp_path, capsys):
    shards = tmp_path / "shards"
    shards.mkdir()
    for index in range(12):  # every train shard cut short (copies: the cached shards stay intact)
        name = shard_name("train", index)
        (shards / name).write_bytes((mnist_shards / name).read_bytes()[:20_000])
    urls = f"{shards}/mnist-train-{{000000..000011}}.tar"
    status = cli_main(train_args(mnist_shards, tmp_path / "runs", f"data.train_urls={urls}", "data.num_workers=1",
                                 "data.loader=stream", "train.num_steps=2"))
    line = one_line(capsys.readouterr().err)
    assert status == 1
    assert "corrupt or truncated shard" in line and f"{shards}/mnist-train-0000" in line
    assert "data.on_corrupt=warn" in line and "Caught" not in line


def test_a_stalled_shard_source_times_out_with_one_line(mnist_shards, tmp_path, capsys):
    start = time.monotonic()
    status = cli_main(train_args(mnist_shards, tmp_path / "runs", "data.train_urls=pipe:sleep 600",
                                 "data.read_timeout_s=2", "data.loader=stream", "train.num_steps=2"))
    line = one_line(capsys.readouterr().err)
    assert status == 1
    assert "shard pipe:sleep 600 sent no data for 2 s: the source stalled" in line
    assert time.monotonic() - start < 60


def _listing(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


def test_dry_run_prints_the_config_and_record_and_writes_nothing(mnist_shards, tmp_path, capsys):
    before = _listing(mnist_shards)
    status = cli_main(["train", "--dry-run", f"data.root={mnist_shards}", f"run.out_dir={tmp_path / 'runs'}",
                       "run.name=dry", "train.batch_size_per_process=64", "data.memory_max_mb=10"])
    assert status == 0
    out = capsys.readouterr().out
    config_text, record_text = out.split("# run record (not written: --dry-run)\n")
    assert "# resolved config" in config_text and "num_steps: 4000" in config_text
    record = json.loads(record_text)
    assert record["run_dir"] == str(tmp_path / "runs" / "dry") and record["device"] == "cpu"
    assert record["image_shape"] == [1, 28, 28] and record["num_classes"] == 10
    assert record["global_batch_size"] == 64 and record["loader"] == "stream"  # 45 MiB > memory_max_mb
    # The seed DCGAN's parameter counts (the Keras tutorial's trainable counts), counted on the meta device.
    assert record["parameters"] == {"G": 855_809, "D": 392_833}
    assert not (tmp_path / "runs").exists() and _listing(mnist_shards) == before


def test_dry_run_of_a_dataset_not_prepared_yet_writes_no_shards(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GAN_DIST_DATA_DIR", str(tmp_path / "data"))
    assert cli_main(["train", "--dry-run", "data.dataset=fashion_mnist", "model.name=dcgan",
                     f"run.out_dir={tmp_path / 'runs'}"]) == 0
    record = json.loads(capsys.readouterr().out.split("--dry-run)\n")[1])
    assert record["shards"].startswith("not written yet") and record["train_size"] == 60_000
    assert not (tmp_path / "data").exists() and not (tmp_path / "runs").exists()
