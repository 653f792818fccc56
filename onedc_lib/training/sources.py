"""What a smoke run trains from when the folders it names are not there (a fresh checkout has no out/): the
bundled default model's parts instead of a missing stage-0 folder or stage-I model, the sample photographs instead
of a missing image folder, each replacement said in one line. Only smoke runs (CI, a first try) are so lenient: a
full run with a missing folder stops with an error, since hours of training on four photographs or random parts
by mistake cost more than the stop.

    stage0, init, data, notes = smoke_sources(1, config, stage0="out/s0", init="", data="out/nano_data/train")
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

from ..config import ModelConfig, config_from_dict

__all__ = ["Sources", "bundled_model_like", "smoke_sources"]

SAMPLES_NOTE = "training on the sample photographs shipped with the package"
UNBUNDLED = {1: "the tokenizer", 2: "the teacher UNet"}  # what a stage takes from a stage-0 folder alone


class Sources(NamedTuple):
    stage0: str | None
    init: str | None
    data: str | None
    notes: list[str]  # one line per replacement


def bundled_model_like(config: ModelConfig) -> Path | None:
    """The folder of a bundled model that can start a run of `config` (same architecture): the default model
    first, then the others by name; None when no bundled model fits."""
    from ..paths import bundled_dir
    from ..weights import DEFAULT_MODEL, bundled_models
    from .stage1 import architecture_differences

    names = bundled_models()
    for name in sorted(names, key=lambda n: n != DEFAULT_MODEL):
        meta = json.loads((bundled_dir() / name / "config.json").read_text())
        if not architecture_differences(config_from_dict(meta["config"]), config):
            return bundled_dir() / name
    return None


def smoke_sources(stage: int, config: ModelConfig, stage0: str | None = None, init: str | None = None,
                  data: str | None = None) -> Sources:
    """(stage0, init, data, notes) for a smoke run of `stage` with `config`: given folders that exist stay; a
    missing image folder becomes None (the sample photographs); a missing stage-0 folder or init model folder
    becomes None, and stages I and II without a model to start from then start from bundled_model_like(config)
    (its VAE, generator and codec; stage I's tokenizer and stage II's teacher UNet are not bundled and start
    random, with the stages' own warnings)."""
    notes = []
    if data and not Path(data).exists():
        notes.append(f"no image folder at {data}: {SAMPLES_NOTE}")
        data = None
    if stage == 0:
        return Sources(stage0, init, data, notes)
    lost = []
    if stage0 and not Path(stage0).is_dir():
        lost.append(f"no stage-0 folder at {stage0}")
        stage0 = None
    if init and not Path(init).is_dir():
        lost.append(f"no model folder at {init}")
        init = None
    if lost:
        if init:
            start = f"the model comes from {init}"
        else:
            bundled = bundled_model_like(config)
            init = str(bundled) if bundled else None
            start = (f"starting from the bundled model's parts ({bundled.name}: VAE, generator, codec)" if bundled
                     else f"no bundled model has the architecture of {config.name}: its parts start random")
        unbundled = "" if stage0 else f"; {UNBUNDLED[stage]} is not bundled: random"
        notes.append(f"{', '.join(lost)}: {start}{unbundled}")
    return Sources(stage0, init, data, notes)
