"""onedc_lib.training.sources and eval.sweep.smoke_images: on a fresh checkout (no out/) a smoke run starts from the
bundled model's parts and the sample photographs and says so in one line; a full run still stops at the missing
folder. Each run is a real 2-step smoke run in a working directory without out/ (tiny settings, 1 thread)."""
from __future__ import annotations

import json
import warnings

import pytest

from onedc_lib.config import load_config
from onedc_lib.eval.sweep import smoke_images
from onedc_lib.paths import bundled_dir
from onedc_lib.training.run import run_stage
from onedc_lib.training.sources import bundled_model_like, smoke_sources
from onedc_lib.weights import DEFAULT_MODEL, family_of

STAGE0 = "out/notebooks/10_train_stage0_nano"  # the notebooks' defaults, relative to the working directory
STAGE1 = "out/notebooks/11_train_stage1/model"
DATA = "out/nano_data/train"
START = DEFAULT_MODEL  # a run of the default model's preset starts from the bundled default model's parts
FAMILY = family_of(DEFAULT_MODEL)


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """A working directory as a fresh checkout has it: no out/, and the bundled models of the package (which the
    suite otherwise hides: conftest.no_bundled_models)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ONEDC_BUNDLED_DIR")
    return tmp_path


def _tensors(folder, prefix):
    from safetensors.torch import load_file

    return {k: v for k, v in load_file(str(folder / "model.safetensors")).items() if k.startswith(prefix)}


def test_stage1_smoke_starts_from_the_bundled_model_and_the_samples(fresh, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random tokenizer's warning
        model_dir = run_stage(1, DEFAULT_MODEL, "s1", stage0=STAGE0, data=DATA, lpips="off", threads=1, device="cpu",
                              smoke=True)
    lines = capsys.readouterr().out.splitlines()
    assert f"no image folder at {DATA}: training on the sample photographs shipped with the package" in lines
    assert (f"no stage-0 folder at {STAGE0}: starting from the bundled model's parts ({START}: VAE, "
            "generator, codec); the tokenizer is not bundled: random") in lines
    assert any(line.startswith(f"{DEFAULT_MODEL}: 2 steps on the sample photographs") for line in lines)
    provenance = json.loads((model_dir / "config.json").read_text())["provenance"]
    assert provenance["random_init"] == ["tokenizer"]
    # the frozen VAE is the bundled model's, value for value (the oracle: the bundled model loaded on its own)
    from onedc_lib.weights import load_model

    bundled = {k: v for k, v in load_model(START).state_dict().items() if k.startswith("vae.")}
    trained = _tensors(model_dir, "vae.")
    assert bundled and trained.keys() == bundled.keys()
    assert all(trained[k].equal(bundled[k]) for k in bundled)
    assert not (fresh / "out").exists()


def test_stage2_smoke_without_a_stage1_model_starts_from_the_bundled_model(fresh, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random teacher's warning
        model_dir = run_stage(2, DEFAULT_MODEL, "s2", stage0=STAGE0, init=STAGE1, lpips="off", threads=1, device="cpu",
                              smoke=True)
    lines = capsys.readouterr().out.splitlines()
    assert (f"no stage-0 folder at {STAGE0}, no model folder at {STAGE1}: starting from the bundled model's parts "
            f"({START}: VAE, generator, codec); the teacher UNet is not bundled: random") in lines
    provenance = json.loads((model_dir / "config.json").read_text())["provenance"]
    assert provenance["stage"] == 2 and provenance["random_init"] == ["teacher UNet"]
    # stage II freezes the codec: it is the bundled one
    from onedc_lib.weights import load_model

    bundled = {k: v for k, v in load_model(START).state_dict().items() if k.startswith("codec.")}
    trained = _tensors(model_dir, "codec.")
    assert bundled and all(trained[k].equal(bundled[k]) for k in bundled)


def test_a_full_run_still_stops_at_a_missing_stage0_folder(fresh):
    with pytest.raises(FileNotFoundError, match=f"stage-0 folder {STAGE0} does not exist"):
        run_stage(1, DEFAULT_MODEL, "s1", steps=1, stage0=STAGE0, lpips="off", threads=1, device="cpu")


def test_folders_that_exist_stay_and_given_init_is_kept(fresh):
    config = load_config(f"{FAMILY}_zonly")
    (fresh / "s0").mkdir()
    (fresh / "data").mkdir()
    assert smoke_sources(1, config, "s0", "", "data") == ("s0", "", "data", [])
    # a stage-0 folder missing but a model given: the model stays, only the unbundled parts start random
    init = str(bundled_dir() / f"{FAMILY}_q1")
    assert smoke_sources(1, config, STAGE0, init, None) == (
        None, init, None, [f"no stage-0 folder at {STAGE0}: the model comes from {init}; the tokenizer is not "
                           "bundled: random"])
    # stage 0 trains from scratch: only the data falls back
    assert smoke_sources(0, config, None, None, DATA) == (
        None, None, None, [f"no image folder at {DATA}: training on the sample photographs shipped with the package"])


def test_the_bundled_model_must_have_the_presets_architecture(fresh):
    assert bundled_model_like(load_config(f"{FAMILY}_q1")) == bundled_dir() / START  # the default model first
    assert bundled_model_like(load_config(f"{FAMILY}_zonly")) == bundled_dir() / START  # z_only: no architecture
    wider = load_config(DEFAULT_MODEL, {"codec.internal_ch": 96})
    assert bundled_model_like(wider) is None
    sources = smoke_sources(1, wider, STAGE0, None, None)
    assert sources.init is None and sources.notes == [
        f"no stage-0 folder at {STAGE0}: no bundled model has the architecture of {DEFAULT_MODEL}: its parts start "
        "random; the tokenizer is not bundled: random"]


def test_smoke_images_fall_back_to_the_samples_only_in_smoke_runs(fresh, capsys):
    assert smoke_images("nano", smoke=True) == "samples"
    assert smoke_images("missing/folder", smoke=True) == "samples"
    assert capsys.readouterr().out.splitlines() == [
        "no test images at out/nano_data/test: evaluating the sample photographs shipped with the package",
        "no test images at missing/folder: evaluating the sample photographs shipped with the package"]
    (fresh / "mine").mkdir()
    assert smoke_images("mine", smoke=True) == "mine"
    assert smoke_images("nano", smoke=False) == "nano"  # a full run stops at nano_test_folder's error
    assert capsys.readouterr().out == ""
