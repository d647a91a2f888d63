"""Checkpoint folders: verification, fallback past damaged ones, atomic replacement, retention, safe
formats for optimizer state, validation of a shared generator.yaml, and RunFolder's load (checked before
anything is applied, with fallback) on a fake single-process accelerator."""

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from gan_dist.checkpoint import (
    REQUIRED_FILES,
    Checkpointable,
    CheckpointError,
    GeneratorInfo,
    apply_optimizer_state,
    apply_retention,
    clean_interrupted_writes,
    complete_checkpoints,
    export_generator,
    load_generator,
    mark_best,
    optimizer_state_files,
    publish_checkpoint,
    read_generator_record,
    read_optimizer_state,
    select_resume,
    set_aside,
    set_aside_newer_checkpoints,
    step_dir_name,
    tensors_to_bytes,
    verify_checkpoint,
)
from gan_dist.config import ConfigError, ModelConfig
from gan_dist.configure import load_config
from gan_dist.files import append_line_durably, read_lines, write_bytes_durably
from gan_dist.progress import StepCounters, TrainState
from gan_dist.train.run_folder import RunFolder
from gan_dist.train.step import EMA, NoiseSource


def _checkpoint(run_dir: Path, step: int, payload: float = 1.0) -> Path:
    """A checkpoint in the real format, with every file a resume reads (tiny tensors): written into a
    temp folder, then published. G.safetensors holds {"w": [payload, step]}."""
    root = run_dir / "checkpoints"
    tmp = root / f".tmp-{step_dir_name(step)}"
    tmp.mkdir(parents=True)
    contents = {name: tensors_to_bytes({"w": torch.tensor([payload, float(step)])}) if name.endswith(".safetensors")
                else b"{}" for name in (*REQUIRED_FILES, "rng_rank0.safetensors", "rng_rank0.json")}
    contents["train_state.json"] = b'{"step": %d}' % step
    files = {name: write_bytes_durably(tmp / name, data) for name, data in contents.items()}
    publish_checkpoint(tmp, root / step_dir_name(step), files, {"step": step})
    return root / step_dir_name(step)


def _rewrite(checkpoint: Path, name: str, data: bytes | None) -> None:
    """Replace (or, with None, delete) one file and make meta.json agree with it, as a bug, or anyone who can
    write to a shared run folder, could: verification of sizes and hashes then passes."""
    meta = json.loads((checkpoint / "meta.json").read_text())
    if data is None:
        (checkpoint / name).unlink()
        del meta["files"][name]
    else:
        (checkpoint / name).write_bytes(data)
        meta["files"][name] = {"size_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (checkpoint / "meta.json").write_text(json.dumps(meta))


def test_retention_keeps_the_newest_and_the_best(tmp_path):
    for step in (100, 200, 300, 400):
        _checkpoint(tmp_path, step)
    mark_best(tmp_path, 200, {"fid": 3.0})
    removed = apply_retention(tmp_path, keep_last=1)
    assert sorted(p.name for p in removed) == ["step_00000100", "step_00000300"]
    assert [step for step, _ in complete_checkpoints(tmp_path)] == [200, 400]


def test_incomplete_folders_are_never_resumed_from(tmp_path):
    _checkpoint(tmp_path, 100)
    (tmp_path / "checkpoints" / "step_00000200").mkdir()  # killed before meta.json
    (tmp_path / "checkpoints" / ".tmp-step_00000300").mkdir()  # killed before the rename
    assert select_resume(tmp_path, "auto").name == "step_00000100"
    assert select_resume(tmp_path, "") is None
    assert select_resume(tmp_path / "elsewhere", "auto") is None
    with pytest.raises(CheckpointError, match="no meta.json"):
        select_resume(tmp_path, str(tmp_path / "checkpoints" / "step_00000200"))
    with pytest.raises(ConfigError, match="checkpoint.resume"):
        select_resume(tmp_path, str(tmp_path / "checkpoints" / "step_99999999"))


@pytest.mark.parametrize("damage", ["truncate", "modify", "remove", "meta"])
def test_auto_sets_a_damaged_newest_checkpoint_aside_and_falls_back(tmp_path, damage):
    _checkpoint(tmp_path, 100)
    newest = _checkpoint(tmp_path, 200)
    target = newest / "G.safetensors"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:3])
    elif damage == "modify":
        target.write_bytes(target.read_bytes().replace(b'"w"', b'"W"'))
    elif damage == "remove":
        target.unlink()
    else:
        (newest / "meta.json").write_text("{not json")
    reports = []
    assert select_resume(tmp_path, "auto", report=reports.append).name == "step_00000100"
    assert len(reports) == 1 and "step 200 is damaged" in reports[0]
    [aside] = [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith("damaged-")]
    assert aside.name.endswith("step_00000200") and (aside / "SET_ASIDE.txt").is_file()
    assert [step for step, _ in complete_checkpoints(tmp_path)] == [100]


def test_an_explicit_damaged_checkpoint_is_refused_naming_the_file(tmp_path):
    path = _checkpoint(tmp_path, 100)
    (path / "G.safetensors").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"G\.safetensors: 1 bytes"):
        select_resume(tmp_path, str(path))
    assert path.is_dir()  # an explicit path is never renamed


def test_an_older_unverifiable_format_is_not_resumed(tmp_path):
    path = tmp_path / "checkpoints" / "step_00000100"
    path.mkdir(parents=True)
    (path / "meta.json").write_text("{}")  # format 1 (accelerate.save_state): no checksums
    (path / "custom_checkpoint_0.pkl").write_bytes(b"\x80\x04N.")
    with pytest.raises(CheckpointError, match="older gan_dist"):
        select_resume(tmp_path, str(path))


def test_replacing_a_step_is_atomic_and_leftovers_are_cleaned(tmp_path):
    first = _checkpoint(tmp_path, 100, payload=1.0)
    # A kill between the two renames of a replacement leaves the old folder under .old-: restored.
    os.replace(first, first.with_name(".old-step_00000100"))
    (tmp_path / "checkpoints" / ".tmp-step_00000200").mkdir()
    notes = clean_interrupted_writes(tmp_path)
    assert any("restored step_00000100" in note for note in notes)
    assert not (tmp_path / "checkpoints" / ".tmp-step_00000200").exists()
    assert select_resume(tmp_path, "auto") == first
    # A re-save of the same step replaces it whole.
    second = _checkpoint(tmp_path, 100, payload=2.0)
    assert second == first and verify_checkpoint(second)
    assert (second / "G.safetensors").read_bytes() == tensors_to_bytes({"w": torch.tensor([2.0, 100.0])})
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000100"]


def test_resuming_an_older_checkpoint_sets_the_newer_ones_aside(tmp_path):
    """Else a later --resume auto (a SLURM requeue) would jump back to the abandoned trajectory."""
    for step in (1000, 1500, 2000):
        _checkpoint(tmp_path, step)
    moved = set_aside_newer_checkpoints(tmp_path, 1000)
    assert [p.name.split("-")[-1] for p in moved] == ["step_00001500", "step_00002000"]
    assert all(p.is_dir() for p in moved)
    assert select_resume(tmp_path, "auto").name == "step_00001000"
    assert [step for step, _ in complete_checkpoints(tmp_path)] == [1000]


@pytest.mark.parametrize("implementation", [{"fused": True}, {"foreach": True}])
def test_optimizer_state_round_trips_through_safetensors_and_json(tmp_path, implementation):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.5, 0.9), **implementation)
    for _ in range(3):
        model(torch.randn(8, 3)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    tensors, record = optimizer_state_files(optimizer)
    (tmp_path / "o.safetensors").write_bytes(tensors)
    (tmp_path / "o.json").write_text(record)
    assert "pickle" not in record and json.loads(record)["param_groups"][0]["betas"] == [0.5, 0.9]
    restored = torch.optim.Adam(model.parameters(), lr=1.0, **implementation)
    apply_optimizer_state(restored, read_optimizer_state(restored, tmp_path / "o.safetensors", tmp_path / "o.json"))
    original, loaded = optimizer.state_dict(), restored.state_dict()
    # The state comes from the checkpoint, the hyperparameters stay the run's own (a resumed run may change lr).
    assert (loaded["param_groups"][0]["lr"], loaded["param_groups"][0]["betas"]) == (1.0, (0.9, 0.999))
    for index, state in original["state"].items():
        for name, value in state.items():
            torch.testing.assert_close(loaded["state"][index][name], value, rtol=0, atol=0)
    other = torch.optim.Adam(torch.nn.Linear(2, 2).parameters())
    with pytest.raises(CheckpointError, match="does not fit"):
        read_optimizer_state(other, tmp_path / "o.safetensors", tmp_path / "o.json")


def _record(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "generator.yaml"
    path.write_text(text)
    return path


def test_a_generator_record_reads_only_the_model_and_the_dataset(tmp_path):
    path = _record(tmp_path, "model:\n  name: mlp\n  g_width: 8\ndataset: mnist\nimage_shape: [1, 28, 28]\n"
                             "num_classes: 0\nstep: 4\nis_ema: true\n"
                             "data:\n  train_urls: 'pipe:touch MARKER; cat x'\n")
    info = read_generator_record(path)
    assert (info.model.name, info.model.g_width, info.dataset, info.image_shape, info.step, info.is_ema) == (
        "mlp", 8, "mnist", (1, 28, 28), 4, True)
    assert not hasattr(info, "data")


def test_a_shared_generator_with_non_finite_weights_is_refused_naming_the_tensor(tmp_path):
    """`gan-dist sample/eval` on a NaN generator would write NaN images (and FIDs): refuse it, exit 1."""
    from gan_dist.models.build import build_generator

    model = ModelConfig(name="mlp", g_width=8)
    G = build_generator(model, (1, 28, 28), 0)
    info = GeneratorInfo(model=model, dataset="mnist", image_shape=(1, 28, 28), num_classes=0, step=4, is_ema=False)
    export_generator(G, info, tmp_path)
    load_generator(checkpoint=tmp_path)  # fine as exported
    name = next(key for key, value in G.state_dict().items() if value.is_floating_point())
    with torch.no_grad():
        G.state_dict()[name].view(-1)[0] = float("nan")
    export_generator(G, info, tmp_path)
    with pytest.raises(CheckpointError, match=rf"generator.safetensors.*{name}"):
        load_generator(checkpoint=tmp_path)


@pytest.mark.parametrize(("text", "key"), [
    ("model:\n  name: mlp\n  g_width: 100000000\ndataset: mnist\nimage_shape: [1, 28, 28]\n", "model.g_width"),
    ("model:\n  name: evil\ndataset: mnist\nimage_shape: [1, 28, 28]\n", "model.name"),
    ("model:\n  name: mlp\n  extra: 1\ndataset: mnist\nimage_shape: [1, 28, 28]\n", "model.extra"),
    ("model:\n  name: mlp\ndataset: mnist\nimage_shape: [1, 99999, 28]\n", "image_shape"),
    ("model:\n  name: mlp\nimage_shape: [1, 28, 28]\n", "dataset"),
    ("model:\n  name: mlp\ndataset: mnist\nimage_shape: [1, 28, 28]\nnum_classes: -3\n", "num_classes"),
])
def test_a_hostile_generator_record_is_refused_naming_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        read_generator_record(_record(tmp_path, text))



def _builds_spied(monkeypatch) -> list[str]:
    """The device type of every build_generator call of load_generator ('meta': shapes only, no memory)."""
    import gan_dist.checkpoint as checkpoint_module

    devices, real = [], checkpoint_module.build_generator

    def spy(*args, **kwargs):
        devices.append(torch.empty(0).device.type)  # the default device load_generator builds under
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoint_module, "build_generator", spy)
    return devices


@pytest.mark.parametrize(("model", "shape"), [
    ("name: mlp\n  g_width: 4096", "[3, 1024, 1024]"),  # in bounds key by key: ~55 G parameters
    ("name: dcgan\n  g_width: 4096\n  latent_dim: 4096", "[3, 1024, 1024]"),
])
def test_a_generator_record_declaring_an_absurd_model_is_refused_before_anything_is_built(tmp_path, monkeypatch,
                                                                                           model, shape):
    """Each key within its bounds, the whole far too big (issue 16: 24 GiB for an mlp, TiB for a dcgan): the
    parameter count is bounded, from a build on the meta device, before memory is allocated or a weight read."""
    import gan_dist.checkpoint as checkpoint_module

    _record(tmp_path, f"model:\n  {model}\ndataset: mnist\nimage_shape: {shape}\n")
    (tmp_path / "generator.safetensors").write_bytes(tensors_to_bytes({"w": torch.zeros(1)}))
    devices = _builds_spied(monkeypatch)
    monkeypatch.setattr(checkpoint_module, "read_tensors", lambda path: pytest.fail("weights read"))
    with pytest.raises(ConfigError, match=r"generator\.yaml: key 'model': the model it declares has [\d,]+ "
                                          r"parameters and buffers, over the 1,073,741,824"):
        load_generator(checkpoint=tmp_path)
    assert devices == ["meta"]


def test_weights_whose_header_does_not_fit_the_record_are_refused_before_g_is_built_or_a_tensor_read(
        tmp_path, monkeypatch):
    """The shapes the safetensors header declares are checked against the model the record declares first."""
    import gan_dist.checkpoint as checkpoint_module
    from gan_dist.models.build import build_generator

    small = ModelConfig(name="mlp", g_width=8)
    info = GeneratorInfo(model=small, dataset="mnist", image_shape=(1, 28, 28), num_classes=0, step=4, is_ema=False)
    export_generator(build_generator(small, (1, 28, 28), 0), info, tmp_path)
    text = (tmp_path / "generator.yaml").read_text()
    assert "g_width: 8" in text
    (tmp_path / "generator.yaml").write_text(text.replace("g_width: 8", "g_width: 1024"))
    devices = _builds_spied(monkeypatch)
    monkeypatch.setattr(checkpoint_module, "read_tensors", lambda path: pytest.fail("weights read"))
    monkeypatch.setattr(checkpoint_module, "check_finite_file", lambda path: pytest.fail("weights read"))
    with pytest.raises(ConfigError, match=r"generator\.safetensors: its tensors do not fit the model generator\.yaml "
                                          r"declares \(model\.name=mlp\): first difference"):
        load_generator(checkpoint=tmp_path)
    assert devices == ["meta"]


# -- meta.json that lies about its files (audit findings a, b) and non-finite tensors -------------------

@pytest.mark.parametrize(("meta", "problem"), [
    ({"format_version": 2, "files": {"G.safetensors": "not an entry"}}, "entry of 'G.safetensors'"),
    ({"format_version": 2, "files": {"G.safetensors": ["size", "sha"]}}, "entry of 'G.safetensors'"),
    ({"format_version": 2, "files": {"G.safetensors": {"size_bytes": True, "sha256": "x"}}}, "entry of"),
    ({"format_version": 2, "files": ["G.safetensors"]}, "'files' is not an object"),
    (["format_version", 2], "not a JSON object"),
])
def test_a_malformed_meta_json_is_a_checkpoint_error_naming_it_and_auto_falls_back(tmp_path, meta, problem):
    _checkpoint(tmp_path, 100)
    newest = _checkpoint(tmp_path, 200)
    (newest / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=f"meta.json: .*{problem}"):
        verify_checkpoint(newest)
    reports = []
    assert select_resume(tmp_path, "auto", report=reports.append).name == "step_00000100"
    assert len(reports) == 1 and "meta.json" in reports[0]


@pytest.mark.parametrize("unlisted", ["optimizer_D.json", "rng_rank0.safetensors", "train_state.json", "G_ema"])
def test_verification_requires_every_file_a_resume_reads(tmp_path, unlisted):
    """A meta.json that lists fewer files must not pass: the loader would fail after verification (exit 1
    instead of a fallback), or silently rebuild the EMA from G."""
    _checkpoint(tmp_path, 100)
    newest = _checkpoint(tmp_path, 200)
    if unlisted == "G_ema":  # the run had an EMA, but its file is neither there nor listed
        meta = json.loads((newest / "meta.json").read_text())
        (newest / "meta.json").write_text(json.dumps({**meta, "ema": True}))
        unlisted = "G_ema.safetensors"
    else:
        _rewrite(newest, unlisted, None)
    with pytest.raises(CheckpointError, match=rf"meta.json: does not list .*{unlisted}"):
        verify_checkpoint(newest)
    assert select_resume(tmp_path, "auto", report=lambda _: None).name == "step_00000100"


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_tensors_fail_verification_even_with_a_consistent_meta_json(tmp_path, value):
    _checkpoint(tmp_path, 100)
    newest = _checkpoint(tmp_path, 200)
    _rewrite(newest, "optimizer_D.safetensors", tensors_to_bytes({"state.0.exp_avg": torch.tensor([0.0, value])}))
    with pytest.raises(CheckpointError, match=r"optimizer_D\.safetensors: tensor 'state\.0\.exp_avg' holds non-finite"):
        verify_checkpoint(newest)
    reports = []
    assert select_resume(tmp_path, "auto", report=reports.append).name == "step_00000100"
    [aside] = [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith("damaged-")]
    assert "non-finite" in (aside / "SET_ASIDE.txt").read_text()


def test_verification_reads_files_in_chunks_never_whole(tmp_path):
    """A 32 MiB weights file is hashed 1 MiB at a time and its tensors are memory-mapped: what Python itself
    allocates stays far below the file's size (reading it whole, as `read_bytes` did, allocates all of it)."""
    import tracemalloc

    path = _checkpoint(tmp_path, 2)
    _rewrite(path, "G.safetensors", tensors_to_bytes({"w": torch.zeros(8 << 20)}))  # 32 MiB
    tracemalloc.start()
    try:
        verify_checkpoint(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak


def test_set_aside_twice_in_one_second_keeps_both(tmp_path, monkeypatch):
    """A step set aside, written again and set aside again within one second (same timestamp in the name)."""
    monkeypatch.setattr("gan_dist.checkpoint.time.strftime", lambda *args: "20260101-000000")
    first = set_aside(_checkpoint(tmp_path, 100, payload=1.0), "first")
    second = set_aside(_checkpoint(tmp_path, 100, payload=2.0), "second")
    assert first != second and first.is_dir() and second.is_dir()
    assert [p.name.split("-")[-1] for p in (first, second)] == ["step_00000100"] * 2
    assert ((first / "SET_ASIDE.txt").read_text(), (second / "SET_ASIDE.txt").read_text()) == ("first\n", "second\n")


def test_an_append_only_log_survives_a_line_torn_by_a_kill(tmp_path):
    log = tmp_path / "starts.jsonl"
    append_line_durably(log, json.dumps({"start": 1}))
    with open(log, "a") as handle:
        handle.write('{"start": 2, "conf')  # killed mid-append
    append_line_durably(log, json.dumps({"start": 3}))
    assert read_lines(log) == [{"start": 1}, {"start": 3}]


@pytest.mark.parametrize(("text", "key"), [
    ("step: abc\n", "step"),
    ("step: 4.5\n", "step"),
    ("is_ema: 'false'\n", "is_ema"),
    ("is_ema: 1\n", "is_ema"),
    ("num_classes: true\n", "num_classes"),
])
def test_a_generator_record_checks_types_strictly(tmp_path, text, key):
    base = "model:\n  name: mlp\ndataset: mnist\nimage_shape: [1, 28, 28]\n"
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        read_generator_record(_record(tmp_path, base + text))


@pytest.mark.parametrize(("text", "key"), [
    ("model:\n  name: ${oc.env:GAN_DIST_TEST_SECRET}\ndataset: mnist\nimage_shape: [1, 28, 28]\n", "model.name"),
    ("model:\n  name: mlp\ndataset: ${oc.env:GAN_DIST_TEST_SECRET}\nimage_shape: [1, 28, 28]\n", "dataset"),
    ("model:\n  name: mlp\ndataset: mnist\nimage_shape: [1, 28, 28]\ndata:\n  urls: ['${oc.env:X}']\n",
     r"data.urls\[0\]"),
])
def test_a_generator_record_never_resolves_interpolations(tmp_path, monkeypatch, text, key):
    monkeypatch.setenv("GAN_DIST_TEST_SECRET", "s3cr3t-value")
    with pytest.raises(ConfigError, match=f"key '{key}' holds an interpolation") as caught:
        read_generator_record(_record(tmp_path, text))
    assert "s3cr3t-value" not in str(caught.value)


# -- RunFolder.load / resume on real (tiny) models --------------------------------------------------------

class FakeAccelerator:
    """What RunFolder needs of an Accelerator, for one process of a group of `num_processes`."""

    def __init__(self, process_index: int = 0, num_processes: int = 1) -> None:
        self.process_index, self.num_processes = process_index, num_processes
        self.is_main_process = process_index == 0

    def wait_for_everyone(self) -> None:
        pass


def _parts(seed: int = 0, width: int = 4, lr: float = 2e-4, betas: tuple[float, float] = (0.5, 0.999),
           lr_d: float = 2e-4) -> Checkpointable:
    """G (with BatchNorm buffers), D, EMA, Adam for both, trained a few steps so every state is non-trivial."""
    torch.manual_seed(seed)
    G = nn.Sequential(nn.Linear(3, width), nn.BatchNorm1d(width), nn.Linear(width, 2))
    D = nn.Sequential(nn.Linear(2, width), nn.Linear(width, 1))
    opt_g = torch.optim.Adam(G.parameters(), lr=lr, betas=betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=lr_d, betas=betas)
    ema = EMA(G, 0.9)
    for _ in range(2):
        D(G(torch.randn(5, 3))).mean().backward()
        opt_g.step()
        opt_d.step()
        ema.update(G, step=1)
    info = GeneratorInfo(model=ModelConfig(name="mlp"), dataset="mnist", image_shape=(1, 28, 28), num_classes=0,
                         step=0, is_ema=True)
    return Checkpointable(G=G, D=D, G_ema=ema.module, opt_g=opt_g, opt_d=opt_d, scaler=None,
                          noise=NoiseSource(seed, 0, torch.device("cpu")), state=TrainState(StepCounters()),
                          generator_info=lambda step: info, base_lrs={"optimizer_G": lr, "optimizer_D": lr_d})


def _save(run_dir: Path, parts: Checkpointable, step: int, folder: RunFolder | None = None) -> Path:
    parts.state.counters.step = step
    return (folder or RunFolder(run_dir, FakeAccelerator())).save(step, parts, {}, keep_last=5)


def _snapshot(parts: Checkpointable) -> dict[str, torch.Tensor]:
    tensors = {f"G.{k}": v.clone() for k, v in parts.G.state_dict().items()}
    tensors.update({f"D.{k}": v.clone() for k, v in parts.D.state_dict().items()})
    tensors.update({f"ema.{k}": v.clone() for k, v in parts.G_ema.state_dict().items()})
    for name, optimizer in (("opt_g", parts.opt_g), ("opt_d", parts.opt_d)):
        for index, state in optimizer.state_dict()["state"].items():
            tensors.update({f"{name}.{index}.{k}": v.clone() for k, v in state.items()})
    return tensors


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_checkpoint_that_does_not_load_leaves_nothing_behind(tmp_path):
    """G fits, D does not (its meta.json agrees, so it verifies): nothing may be loaded, G included."""
    saved = _parts(seed=0)
    path = _save(tmp_path, saved, 4)
    _rewrite(path, "D.safetensors", tensors_to_bytes(_parts(seed=0, width=5).D.state_dict()))
    run = _parts(seed=1)
    before = _snapshot(run)
    with pytest.raises(CheckpointError, match=r"D\.safetensors: weights do not fit this model"):
        RunFolder(tmp_path, FakeAccelerator()).load(path, run)
    _assert_same(_snapshot(run), before)
    assert run.state.counters.step == 0
    # Under auto, when no checkpoint loads (likelier a changed model.* than damage), the start fails naming
    # the file, and neither the run nor the checkpoints are touched (no silent fresh start).
    with pytest.raises(CheckpointError, match=r"no checkpoint of .* fits this run .*D\.safetensors: weights do not"):
        RunFolder(tmp_path, FakeAccelerator()).resume("auto", run)
    _assert_same(_snapshot(run), before)
    assert [step for step, _ in complete_checkpoints(tmp_path)] == [4]


@pytest.mark.parametrize("mismatch", ["G weights", "optimizer state shape", "train_state"])
def test_auto_falls_back_past_a_checkpoint_that_verifies_but_does_not_load(tmp_path, mismatch, capsys):
    parts = _parts(seed=0)
    older = _save(tmp_path, parts, 2)
    expected = _snapshot(parts)
    newest = _save(tmp_path, _parts(seed=2), 4)
    if mismatch == "G weights":
        _rewrite(newest, "G.safetensors", tensors_to_bytes(_parts(seed=0, width=5).G.state_dict()))
    elif mismatch == "optimizer state shape":
        record = json.loads((newest / "optimizer_D.json").read_text())
        tensors = {"state.0.exp_avg": torch.zeros(7), "state.0.exp_avg_sq": torch.zeros(7), "state.0.step": torch.tensor(2.0)}
        _rewrite(newest, "optimizer_D.safetensors", tensors_to_bytes(tensors))
        _rewrite(newest, "optimizer_D.json", json.dumps({**record, "scalar_state": {}}).encode())
    else:
        _rewrite(newest, "train_state.json", b'{"step": "4"}')
    run = _parts(seed=3)
    assert RunFolder(tmp_path, FakeAccelerator()).resume("auto", run) == older
    _assert_same(_snapshot(run), expected)
    assert run.state.counters.step == 2
    err = capsys.readouterr().err
    assert "step_00000004 could not be loaded and was set aside as damaged-" in err and "older step_00000002" in err
    assert [step for step, _ in complete_checkpoints(tmp_path)] == [2]
    # An explicit path to it is refused naming the file (here, the set-aside copy), nothing applied.
    [aside] = [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith("damaged-")]
    with pytest.raises(CheckpointError, match=r"(G\.safetensors|optimizer_D\.safetensors|train_state\.json)"):
        RunFolder(tmp_path, FakeAccelerator()).resume(str(aside), run)
    _assert_same(_snapshot(run), expected)


def test_a_resume_with_changed_optimizer_settings_says_so_and_uses_the_config(tmp_path, capsys):
    config = load_config("configs/debug.yaml", [f"run.out_dir={tmp_path}"])
    folder = RunFolder(tmp_path, FakeAccelerator())
    folder.prepare(config)
    saved = _parts(seed=0, lr=config.optim.lr_g)
    for optimizer in (saved.opt_g, saved.opt_d):
        optimizer.param_groups[0]["lr"] *= 0.5  # a decay schedule's lr at this step: not a changed setting
    path = _save(tmp_path, saved, 2, folder)
    folder.release()  # one training per run folder at a time (RUN_DIR/.lock)
    same = RunFolder(tmp_path, FakeAccelerator())
    same.prepare(config)
    same.load(path, _parts(seed=1, lr=config.optim.lr_g))
    assert "optimizer setting changed" not in capsys.readouterr().out and same.resume_notes == []
    same.release()

    changed = load_config("configs/debug.yaml", [f"run.out_dir={tmp_path}", "optim.lr_g=1e-4", "optim.beta1=0.9"])
    run = _parts(seed=1, lr=changed.optim.lr_g, betas=(changed.optim.beta1, changed.optim.beta2))
    folder = RunFolder(tmp_path, FakeAccelerator())
    folder.prepare(changed)
    folder.load(path, run)
    out = capsys.readouterr().out
    assert "optimizer_G lr 0.0002 -> 0.0001 (optim.lr_g" in out
    assert "optimizer_G betas [0.5, 0.999] -> [0.9, 0.999] (optim.beta1/optim.beta2" in out
    assert "optimizer_D betas [0.5, 0.999] -> [0.9, 0.999]" in out and "optimizer_D lr" not in out
    assert len(folder.resume_notes) == 3
    assert (run.opt_g.param_groups[0]["lr"], run.opt_g.param_groups[0]["betas"]) == (1e-4, (0.9, 0.999))


def test_a_missing_resume_path_is_a_config_error_on_every_rank(tmp_path, monkeypatch):
    """With several ranks the main process decides and broadcasts its outcome: the other ranks must raise the
    same ConfigError (one line from `gan-dist train`), not a RuntimeError traceback."""
    import accelerate.utils

    sent: list[list] = []

    def broadcast(objects: list, from_process: int = 0) -> list:
        if sent:
            objects[:] = sent[-1]  # another rank receives what the main process sent
        else:
            sent.append(list(objects))
        return objects

    monkeypatch.setattr(accelerate.utils, "broadcast_object_list", broadcast)
    missing = str(tmp_path / "no-such-checkpoint")
    for rank in (0, 1):
        with pytest.raises(ConfigError, match="checkpoint.resume="):
            folder = RunFolder(tmp_path, FakeAccelerator(rank, 2))
            folder.on_main(lambda folder=folder: select_resume(folder.path, missing))


def test_the_same_tensors_and_metadata_always_give_the_same_bytes():
    """Else an exported generator's sha256 changes from one save to the next (safetensors orders metadata
    randomly), and two identical runs export different files."""
    from safetensors.torch import load

    tensors = {"b": torch.arange(3.0), "a": torch.ones(2, 2)}
    metadata = {"step": "12", "ema": "True", "zz": "x"}
    encodings = {tensors_to_bytes(tensors, metadata) for _ in range(20)}
    assert len(encodings) == 1
    [data] = encodings
    length = int.from_bytes(data[:8], "little")
    assert (8 + length) % 8 == 0 and json.loads(data[8:8 + length])["__metadata__"] == dict(sorted(metadata.items()))
    _assert_same(load(data), tensors)
