"""`gan-dist export`: the Hugging Face Hub folder of a real (debug) run, its model card's metadata, the round
trip to the trained G, the checkpoint choice, refusals, and the upload through huggingface_hub's HfApi
(monkeypatched: no network)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from gan_dist.api import load_generator
from gan_dist.checkpoint import mark_best
from gan_dist.cli import main as cli_main
from gan_dist.configure import load_config

FILES = {"model.safetensors", "config.json", "README.md", "sample_grid.png"}
METRICS_AT_4 = {"fid": 321.5, "is": 2.25, "precision": 0.5, "recall": 0.01, "classes": 7, "eval_seconds": 3.2}


@pytest.fixture(scope="module")
def run_dir(mnist_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A debug run of 8 steps (checkpoints at 4 and 8, the final export at 8) whose evaluation at step 4 is
    the best FID: best.json and evals.jsonl as the trainer writes them."""
    from gan_dist.train.trainer import train

    out = tmp_path_factory.mktemp("runs")
    config = load_config("configs/debug.yaml", [f"data.root={mnist_shards}", f"run.out_dir={out}", "run.name=r",
                                                "checkpoint.keep_last=2"])
    assert train(config) == 0
    run = out / "r"
    mark_best(run, 4, METRICS_AT_4)
    lines = [{"step": step, "images_seen": 8 * step, "elapsed_s": 1.0, "eval_s_total_this_start": 3.2,
              "num_samples": 200, "metrics": metrics, "floor": {"fid": 23.6, "is": 9.8, "classes": 10}}
             for step, metrics in ((4, METRICS_AT_4), (8, {**METRICS_AT_4, "fid": 400.0}))]
    (run / "evals.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"step": 9, "met')
    return run


def _front_matter(card: str) -> dict:
    match = re.match(r"^---\n(.*?)\n---\n", card, re.DOTALL)
    assert match, card[:200]
    return yaml.safe_load(match.group(1))


def test_export_writes_weights_record_card_and_grid_of_the_best_checkpoint(run_dir, tmp_path, capsys):
    out = tmp_path / "exported"
    assert cli_main(["export", "--run", str(run_dir), "--out", str(out)]) == 0
    assert "--checkpoint best" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == FILES
    assert [p.name for p in tmp_path.iterdir()] == ["exported"]  # no temp folder left beside it
    record = json.loads((out / "config.json").read_text())
    assert (record["step"], record["dataset"], record["image_shape"], record["num_classes"]) == (4, "mnist",
                                                                                               [1, 28, 28], 0)
    assert record["checkpoint"] == "best (step_00000004)" and record["model"]["name"] == "keras_dcgan"
    assert record["gan_dist_version"] and record["latent_space"] == "z" and record["is_ema"] is False
    assert record["metrics"]["fid"] == 321.5 and "eval_seconds" not in record["metrics"]
    assert record["evaluation_protocol"]["num_samples"] == 200

    card = (out / "README.md").read_text()
    meta = _front_matter(card)
    assert meta["library_name"] == "gan_dist" and meta["datasets"] == ["mnist"]
    assert {"gan_dist", "gan", "keras_dcgan", "mnist", "unconditional-image-generation"} <= set(meta["tags"])
    assert meta["pipeline_tag"] == "unconditional-image-generation"
    results = meta["model-index"][0]["results"][0]
    assert results["dataset"] == {"type": "mnist", "name": "MNIST", "split": "test"}
    fid = next(m for m in results["metrics"] if m["type"] == "fid")
    assert fid["value"] == 321.5
    assert fid["args"]["num_samples"] == 200 and "classifier" in fid["args"]["feature_network"]
    assert "test split" in fid["args"]["reference"]
    assert "best (step_00000004)" in card and "sample_grid.png" in card and "load_generator(" in card
    training_config = yaml.safe_load(card.split("## Training config")[1].split("```yaml\n")[1].split("```")[0])
    assert training_config["model"]["g_width"] == 16 and training_config["train"]["num_steps"] == 8
    # The Hub's own parser reads the same metadata.
    from huggingface_hub import ModelCard

    data = ModelCard.load(out / "README.md").data
    assert data.library_name == "gan_dist"
    fid_result = next(r for r in data.eval_results if r.metric_type == "fid")
    assert fid_result.metric_value == 321.5 and fid_result.metric_args["num_samples"] == 200


def test_the_exported_folder_samples_what_the_trained_g_samples(run_dir, tmp_path, capsys):
    out = tmp_path / "exported"
    assert cli_main(["export", "--run", str(run_dir), "--out", str(out), "--checkpoint", "step_4"]) == 0
    exported = load_generator(out)
    trained = load_generator(run_dir / "checkpoints" / "step_00000004")  # the checkpoint's own generator
    via_run = load_generator(run_dir, "best")
    seeds = [0, 5, 63, 2]
    images = exported.sample(seed=seeds)
    np.testing.assert_array_equal(images.numpy(), trained.sample(seed=seeds).numpy())
    np.testing.assert_array_equal(images.numpy(), via_run.sample(seed=seeds).numpy())
    assert exported.info == trained.info
    npz = tmp_path / "s.npz"
    assert cli_main(["sample", "--run", str(out), "--seeds", "0,5,63,2", "--out", str(tmp_path / "s.png"),
                     "--npz", str(npz)]) == 0
    np.testing.assert_array_equal(np.load(npz)["images"], images[..., 0].numpy())


def test_export_checkpoint_choices_and_their_metrics(run_dir, tmp_path, capsys):
    assert cli_main(["export", "--run", str(run_dir), "--out", str(tmp_path / "last"), "--checkpoint", "last"]) == 0
    record = json.loads((tmp_path / "last" / "config.json").read_text())
    assert record["step"] == 8 and record["metrics"]["fid"] == 400.0  # evals.jsonl's line at step 8
    assert "400.0" in (tmp_path / "last" / "README.md").read_text()
    capsys.readouterr()
    assert cli_main(["export", "--run", str(run_dir), "--out", str(tmp_path / "x"), "--checkpoint", "step_5"]) == 1
    assert "no complete checkpoint at step 5 (complete ones: step_4, step_8)" in capsys.readouterr().err
    assert cli_main(["export", "--run", str(run_dir), "--out", str(tmp_path / "x"), "--checkpoint", "first"]) == 2
    assert "best | last | step_N" in capsys.readouterr().err
    assert cli_main(["export", "--run", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 1
    assert "not a run folder" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_non_empty_folder_is_replaced_only_with_force(run_dir, tmp_path, capsys):
    out = tmp_path / "exported"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    assert cli_main(["export", "--run", str(run_dir), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--force" in err
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    assert cli_main(["export", "--run", str(run_dir), "--out", str(out), "--force"]) == 0
    assert {p.name for p in out.iterdir()} == FILES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli_main(["export", "--run", str(run_dir), "--out", str(empty)]) == 0  # an empty folder is fine


class FakeHfApi:
    """Records the calls gan_dist makes through huggingface_hub.HfApi."""

    calls: list = []
    fail_upload: Exception | None = None

    def __init__(self, token: str | None = None) -> None:
        FakeHfApi.calls.append(("init", token))

    def create_repo(self, repo_id: str, **kwargs) -> str:
        FakeHfApi.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, folder_path: str, repo_id: str, **kwargs) -> str:
        if FakeHfApi.fail_upload is not None:
            raise FakeHfApi.fail_upload
        FakeHfApi.calls.append(("upload_folder", repo_id, sorted(p.name for p in Path(folder_path).iterdir()), kwargs))
        return f"https://huggingface.co/{repo_id}/commit/abc"


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub

    FakeHfApi.calls, FakeHfApi.fail_upload = [], None
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test_token")
    return FakeHfApi


def test_push_to_hub_creates_the_repo_and_uploads_the_folder(run_dir, tmp_path, fake_hub, capsys):
    out = tmp_path / "exported"
    assert cli_main(["export", "--run", str(run_dir), "--out", str(out), "--push-to-hub", "me/mnist-gan"]) == 0
    assert fake_hub.calls[0] == ("init", "hf_test_token")
    assert fake_hub.calls[1][:2] == ("create_repo", "me/mnist-gan") and fake_hub.calls[1][2]["exist_ok"] is True
    assert fake_hub.calls[1][2]["repo_type"] == "model"
    assert fake_hub.calls[2][:3] == ("upload_folder", "me/mnist-gan", sorted(FILES))
    assert "https://huggingface.co/me/mnist-gan" in capsys.readouterr().out
    card = (out / "README.md").read_text()
    assert _front_matter(card)["model-index"][0]["name"] == "me/mnist-gan"
    assert 'snapshot_download("me/mnist-gan")' in card


def test_push_without_a_token_writes_nothing(run_dir, tmp_path, fake_hub, monkeypatch, capsys):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    out = tmp_path / "exported"
    assert cli_main(["export", "--run", str(run_dir), "--out", str(out), "--push-to-hub", "me/x"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no Hugging Face token" in err
    assert not out.exists() and fake_hub.calls == []


def test_a_failed_upload_is_one_line_and_leaves_the_complete_folder(run_dir, tmp_path, fake_hub, capsys):
    fake_hub.fail_upload = ConnectionError("Max retries exceeded with url: /api/repos/create\nmore detail")
    out = tmp_path / "exported"
    assert cli_main(["export", "--run", str(run_dir), "--out", str(out), "--push-to-hub", "me/x"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "ConnectionError" in err and "upload failed" in err
    assert {p.name for p in out.iterdir()} == FILES


def _python_block(text: str, after: str = "") -> str:
    """The first ```python block of `text` after the line `after`."""
    return text.split(after, 1)[1].split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_example_runs_on_a_run_folder(run_dir, monkeypatch):
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    code = _python_block(readme, "## Using a trained generator").replace('"runs/exp1"', repr(str(run_dir)))
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # the project's own README
    assert namespace["G"].info.step == 4  # checkpoint="best"
    assert tuple(namespace["images"].shape) == (3, 1, 28, 28) and namespace["walk"].shape == (61, 28, 28, 1)


def test_the_model_cards_example_runs_on_its_folder(run_dir, tmp_path):
    out = tmp_path / "exported"
    assert cli_main(["export", "--run", str(run_dir), "--out", str(out)]) == 0
    code = _python_block((out / "README.md").read_text(), "## Use it").replace('"path/to/this/folder"', repr(str(out)))
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # the card gan_dist just wrote
    assert tuple(namespace["images"].shape) == (3, 1, 28, 28)


def test_push_in_offline_mode_writes_nothing(run_dir, tmp_path, fake_hub, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    out = tmp_path / "exported"
    assert cli_main(["export", "--run", str(run_dir), "--out", str(out), "--push-to-hub", "me/x"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "offline mode" in err
    assert not out.exists() and fake_hub.calls == []
