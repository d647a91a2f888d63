"""The shipped fast recipes (configs/mnist_fast.yaml, and mnist_fastest.yaml: the same with a class-conditional G
and a projection D) load and train a few steps as written: hinge loss, spectral norm, EMA, bf16 where the CPU
has it, the train split on the device (data.loader=auto)."""

from __future__ import annotations

import json
import math
import re

import pytest

from gan_dist.configure import load_config
from gan_dist.train.trainer import train

LOSSES = re.compile(r"^(\d+) \[D loss: (\S+)\] \[G loss: (\S+)\]", re.MULTILINE)


@pytest.mark.slow  # about 30 s here: data.loader=auto decodes the 60,000 train images onto the device first
@pytest.mark.parametrize("name, conditioning", [("mnist_fast", "none"), ("mnist_fastest", "projection")])
def test_the_fast_recipe_trains_a_few_steps(mnist_shards, tmp_path, capsys, name, conditioning):
    config = load_config(f"configs/{name}.yaml", [
        f"data.root={mnist_shards}", f"run.out_dir={tmp_path}", "run.name=fast", "train.num_steps=3",
        "eval.eval_every=-1", "log.tracker=none", "log.log_every=1", "log.progress_bar=false"])
    assert (config.loss.name, config.model.spectral_norm, config.train.ema_decay) == ("hinge", True, 0.999)
    assert config.model.conditioning == conditioning
    assert train(config) == 0
    losses = LOSSES.findall(capsys.readouterr().out)
    assert [int(step) for step, *_ in losses] == [1, 2, 3]
    assert all(math.isfinite(float(value)) for _, d_loss, g_loss in losses for value in (d_loss, g_loss))
    run_dir = tmp_path / "fast"
    assert json.loads((run_dir / "done.json").read_text())["step"] == 3
    assert (run_dir / "checkpoints" / "step_00000003" / "meta.json").is_file()
    assert (run_dir / "generator.safetensors").is_file() and (run_dir / "samples" / "step_00000003.png").is_file()
    assert json.loads((run_dir / "run.json").read_text())["num_classes"] == (10 if conditioning != "none" else 0)
