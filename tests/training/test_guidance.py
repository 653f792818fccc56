"""Stage I of the guidance ablation's variants: a text-guided model trains its projection on the batch captions,
and without distillation (loss.distill_weight 0) the head is frozen and its teacher never runs."""
import warnings

import pytest
import torch

from onedc_lib.config import load_config
from onedc_lib.training import loop

TINY = {"train.crop": 64, "train.batch_size": 2, "train.log_every": 1, "train.sample_every": 0,
        "train.warmup_steps": 1, "loss.distill_weight": 0}


def _task(config):
    from onedc_lib.training.stage1 import Stage1Task

    loop.seed_everything(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Stage1Task(config, lpips="off")


def _train(task, config, out, dataset):
    accelerator = loop.make_accelerator(config.train, cpu=True)
    batches = loop.Batches(dataset, config.train.batch_size, config.train.crop, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loop.train(accelerator, task, batches, out, 2)


def _dataset():
    from onedc_lib.data.samples import sample_images

    images = list(sample_images().values())[:2]
    return [(images[0], "a cup of espresso on a saucer"), (images[1], "a smiling astronaut")]


def test_text_variant_trains_the_projection_without_distillation(tmp_path, monkeypatch):
    import onedc_lib.losses
    from onedc_lib.weights import load_model_folder

    config = load_config("nano", {**TINY, "codec.guidance": "text"})
    task = _task(config)
    seen = []
    original = task.model.text_guidance.forward
    monkeypatch.setattr(task.model.text_guidance, "forward", lambda captions: seen.append(captions) or
                        original(captions))
    monkeypatch.setattr(onedc_lib.losses, "distillation_term", lambda *a: pytest.fail("the teacher ran"))
    proj = task.model.text_guidance.proj.weight.detach().clone()
    head = {k: v.clone() for k, v in task.step_module.head.state_dict().items()}
    assert not any(p.requires_grad for p in task.step_module.head.parameters())
    _train(task, config, tmp_path, _dataset())
    assert seen and all(set(c) <= {"a cup of espresso on a saucer", "a smiling astronaut"} for c in seen)
    assert not torch.equal(proj, task.model.text_guidance.proj.weight)
    assert all(torch.equal(v, task.step_module.head.state_dict()[k]) for k, v in head.items())
    loaded = load_model_folder(tmp_path / "model")
    assert loaded.text_guided and torch.equal(loaded.text_guidance.proj.weight,
                                              task.model.text_guidance.proj.weight)
