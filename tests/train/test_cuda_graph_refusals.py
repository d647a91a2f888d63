"""train.cuda_graph is refused, naming the keys, where it cannot work and the config alone cannot tell: a run
on a CPU, several processes, and a precision that resolved to fp16 at run time (auto on a GPU without bf16,
or `accelerate launch --mixed_precision fp16`). The config-level refusals (stream loader, accumulation,
penalties, a literal fp16, compile, a learning-rate decay) are in tests/test_config.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from gan_dist.cli import main as cli_main
from gan_dist.config import ConfigError
from gan_dist.configure import load_config
from gan_dist.train.trainer import Trainer

GRAPH = ["configs/debug.yaml", "train.cuda_graph=true", "data.loader=memory"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU refusal needs a machine without CUDA")
def test_cuda_graph_on_a_cpu_exits_2_naming_the_key_before_anything_is_written(tiny_shards, tmp_path, capsys):
    status = cli_main(["train", *GRAPH, f"data.root={tiny_shards}", "data.auto_prepare=false",
                       f"run.out_dir={tmp_path / 'runs'}", "run.name=graph"])
    err = capsys.readouterr().err
    assert status == 2 and "train.cuda_graph" in err and "CUDA GPU" in err
    assert not (tmp_path / "runs").exists()


def _check_on(accelerator: SimpleNamespace, *overrides: str) -> None:
    """The Trainer's device checks (run right after the Accelerator is built) against a stand-in one."""
    trainer = Trainer.__new__(Trainer)
    trainer.config = load_config(GRAPH[0], [*GRAPH[1:], *overrides])
    trainer.accelerator = accelerator
    trainer._check_device_features()


def _gpu_accelerator(**changes: object) -> SimpleNamespace:
    return SimpleNamespace(**{"device": torch.device("cuda", 0), "num_processes": 1, "scaler": None,
                              "mixed_precision": "bf16", **changes})


def test_the_stand_in_gpu_passes():
    _check_on(_gpu_accelerator())  # so the refusals below are each due to the one thing they change


def test_cuda_graph_with_several_processes_is_refused():
    with pytest.raises(ConfigError, match=r"train\.cuda_graph.*2 processes"):
        _check_on(_gpu_accelerator(num_processes=2))


@pytest.mark.parametrize("configured", ["auto", "no"])  # auto -> fp16 without bf16; no + launcher's fp16
def test_cuda_graph_refuses_a_grad_scaler_that_came_from_the_run_not_the_config(configured):
    with pytest.raises(ConfigError) as error:
        _check_on(_gpu_accelerator(scaler=object(), mixed_precision="fp16"), f"train.mixed_precision={configured}")
    message = str(error.value)
    assert "train.cuda_graph" in message and "train.mixed_precision" in message and "fp16" in message


def test_a_cuda_graph_run_turns_off_autocasts_cast_cache():
    """Cached casts made during capture are freed when autocast exits while the graph still writes them
    (on an H200 this corrupted the memory loader's sample indices: an out-of-bounds gather). The trainer's
    Accelerator, and so every autocast it opens and patches into G and D, has the cache off."""
    from gan_dist.config import DistConfig
    from gan_dist.distributed import build_accelerator, release_accelerator

    for cuda_graph, expected in ((True, False), (False, None)):
        accelerator = build_accelerator(DistConfig(cpu=True), "bf16", cuda_graph=cuda_graph)
        try:
            assert accelerator.autocast_handler.cache_enabled is expected
        finally:
            release_accelerator(accelerator)
