"""onedc_lib.training.run: the argument lists it builds parse back to the same config, a stage run in-process and
with two processes (torchrun, gloo), and the curves / samples / summary of a run (tiny nano settings, 1 thread)."""
from __future__ import annotations

import argparse
import warnings

import pytest

from onedc_lib.training import loop
from onedc_lib.training.run import (
    SMOKE,
    run_stage,
    stage_arguments,
    training_curves,
    training_samples,
    training_summary,
)
from onedc_lib.training.stage1 import add_pretrained_arguments

TINY = {**SMOKE, "train.batch_size": 1}


def _parse(args: list[str]):
    parser = argparse.ArgumentParser()
    loop.common_arguments(parser)
    add_pretrained_arguments(parser)
    return parser.parse_args(args)


def test_arguments_parse_back_to_the_same_config():
    overrides = {"loss.lmbda": 1.8, "train.betas": [0.9, 0.99], "loss.lpips_net": "alex",
                 "train.batch_transform": False, "train.stage1_lr": 1e-4, "codec.z_only": True}
    args = _parse(stage_arguments(1, "nano_q3", "runs/x", steps=5, overrides=overrides, seed=3, resume="auto",
                                  ckpt_every=2, threads=0, data="", init="m", weights={"vae": "v.safetensors"}))
    assert (args.preset, args.out, args.steps, args.seed, args.resume) == ("nano_q3", "runs/x", 5, 3, "auto")
    assert args.threads is None and args.data is None and args.init == "m" and args.vae == "v.safetensors"
    config = loop.config_from_args(args)
    assert config.loss.lmbda == 1.8 and config.train.betas == (0.9, 0.99) and config.loss.lpips_net == "alex"
    assert config.train.batch_transform is False and config.train.stage1_lr == 1e-4 and config.codec.z_only
    assert config.train.ckpt_every == 2


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"stage": 3}, "stage must be"),
    ({"stage": 1, "part": "vae"}, "part is an option of stage 0"),
    ({"stage": 0, "init": "m"}, "stage 0 starts from scratch"),
])
def test_bad_arguments_are_refused(kwargs, message):
    stage = kwargs.pop("stage")
    with pytest.raises(ValueError, match=message):
        stage_arguments(stage, "nano", "out", **kwargs)


def test_run_stage_in_process_then_resume_and_show(tmp_path):
    out = tmp_path / "s1"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random VAE / UNet / tokenizer warnings
        model = run_stage(1, "nano_q3", out, steps=2, overrides=TINY, lpips="off", threads=1, device="cpu")
        assert model == out / "model" and (model / "model.safetensors").is_file()
        with pytest.raises(FileExistsError, match="resume"):  # the loop refuses to overwrite an earlier run
            run_stage(1, "nano_q3", out, steps=3, overrides=TINY, lpips="off", device="cpu")
        run_stage(1, "nano_q3", out, steps=3, overrides=TINY, lpips="off", resume="auto", device="cpu")
    summary = training_summary(out)
    loss = summary[summary["value"] == "loss"].iloc[0]
    assert (loss["first_step"], loss["last_step"]) == (1, 3) and loss["first"] > 0
    assert set(summary["value"]) >= {"loss", "bpp_y", "l1", "psnr", "s_per_step"}
    curves = training_curves(out)
    titles = [ax.get_title() for ax in curves.axes if ax.get_title()]
    assert titles[0] == "loss" and "lr" not in titles and len(titles) == 6
    assert [len(line.get_xdata()) for line in curves.axes[0].lines] == [3]
    samples = training_samples(out)
    assert samples.axes[0].get_title() == "s1: step 3"
    assert samples.axes[0].images[0].get_array().shape == (2 * 64, 4 * 64, 3)  # inputs, reconstructions (4 each)


def test_run_stage_refuses_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="num_processes"):
        run_stage(1, "nano", tmp_path, num_processes=0)
    with pytest.raises(ValueError, match="device"):
        run_stage(1, "nano", tmp_path, device="tpu")
    with pytest.raises(FileNotFoundError, match="no log.csv"):
        training_curves(tmp_path)


def test_two_processes_through_torchrun(tmp_path, capfd):
    """Stage 0's VAE part in 2 CPU processes (threads=1 sets their OMP_NUM_THREADS): the launched run's output
    comes through, its files are written."""
    folder = run_stage(0, "nano", tmp_path, steps=1, overrides={**TINY, "train.stage0_batch_size": 1},
                       part="vae", lpips="off", threads=1, num_processes=2, device="cpu")
    printed = capfd.readouterr().out
    assert "--nproc_per_node 2" in printed and "stage 0 vae: 1 steps" in printed
    assert folder == tmp_path and (tmp_path / "vae.safetensors").is_file()
    assert (tmp_path / "vae" / "checkpoints" / "step_00000001" / "random_states_1.pkl").is_file()  # two ranks
