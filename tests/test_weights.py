"""Weights: model folders round-trip exactly, the default falls back loudly, and every bad weights file or folder
is a WeightsError that says what is wrong. Nano models only (the sd15 strict load lives in tests/models)."""
import json
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from onedc_lib import weights
from onedc_lib.bitstream import BitstreamError
from onedc_lib.config import preset_names
from onedc_lib.weights import (
    WeightsError, build_model, load_dmd2_unet_state_dict, load_model, load_model_folder, load_release_checkpoint,
    save_model,
)


@pytest.fixture(scope="module")
def model():
    return build_model("nano_q3")


@pytest.fixture(scope="module")
def image():
    return torch.rand(1, 3, 40, 70, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    return save_model(model, tmp_path_factory.mktemp("model") / "nano", provenance={"note": "test"})


@pytest.fixture
def copy_of_saved(saved, tmp_path):
    """A copy of the saved folder that a test may damage."""
    folder = tmp_path / "copy"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        (folder / name).write_bytes((saved / name).read_bytes())
    return folder


def test_save_and_load_model_folder(model, saved, image):
    assert sorted(p.name for p in saved.iterdir()) == ["config.json", "model.safetensors"]  # no temp files
    meta = json.loads((saved / "config.json").read_text())
    assert meta["model_id"] == model.model_id.hex() and meta["provenance"] == {"note": "test"}

    loaded = load_model_folder(saved)
    assert loaded.model_id == model.model_id and loaded.config == model.config
    assert loaded.untrained_parts == () and not loaded.training
    data = model.compress(image).to_bytes()
    # the same z and y; only the random-weights note of the unsaved model differs
    assert loaded.compress(image).container.sections == model.compress(image).container.sections[:2]
    assert torch.equal(loaded.decompress(data), model.decompress(data))

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a model folder is trained weights: no warning
        assert load_model(str(saved)).model_id == model.model_id
    save_model(loaded, saved)  # overwriting a folder in place
    assert load_model_folder(saved).model_id == model.model_id


def test_default_model_falls_back_with_a_warning():
    if weights.bundled_models():
        pytest.skip("a bundled default model exists: no fallback")
    with pytest.warns(UserWarning, match="UNTRAINED"):
        default = load_model(None)
    assert default.config.name == weights.DEFAULT_MODEL
    assert default.model_id == build_model(weights.DEFAULT_MODEL).model_id  # seeded: the same weights everywhere
    x = torch.rand(1, 3, 1, 1)
    assert default.decompress(default.compress(x).to_bytes()).shape == (1, 3, 1, 1)
    with pytest.warns(UserWarning, match="no trained weights for 'nano_zonly'"):
        assert load_model("nano_zonly").config.codec.z_only


def test_unknown_model_lists_the_presets(tmp_path):
    with pytest.raises(WeightsError, match="unknown model 'nope'") as error:
        load_model("nope")
    message = str(error.value)
    assert "\n" not in message and all(name in message for name in preset_names())
    with pytest.raises(WeightsError, match="unknown model"):
        load_model(str(tmp_path / "no" / "folder"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="config.json is missing"):
        load_model(str(tmp_path / "empty"))


@pytest.mark.parametrize("damage, message", [
    (lambda data: b"", "not a readable safetensors file"),
    (lambda data: b"\x00" * 64, "not a readable safetensors file"),
    (lambda data: data[: len(data) // 2], "not a readable safetensors file"),
    (lambda data: data[:-1] + bytes([data[-1] ^ 1]), "do not belong together"),  # a flipped weight
])
def test_corrupt_weights_file(copy_of_saved, damage, message):
    path = copy_of_saved / "model.safetensors"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(WeightsError, match=message):
        load_model_folder(copy_of_saved)


def test_missing_weights_file(copy_of_saved):
    (copy_of_saved / "model.safetensors").unlink()
    with pytest.raises(WeightsError, match="missing weights file"):
        load_model_folder(copy_of_saved)


def test_mismatched_state_dict_is_refused(copy_of_saved):
    path = copy_of_saved / "model.safetensors"
    original = load_file(path)
    key = next(k for k in original if k.endswith("weight") and original[k].dim() == 4)
    cases = {
        "Missing key": {k: v for k, v in original.items() if k != key},
        "Unexpected key": {**original, "extra.weight": torch.zeros(1)},
        "size mismatch": {**original, key: torch.zeros(1, *original[key].shape[1:])},
    }
    for message, state in cases.items():
        save_file(state, path)
        with pytest.raises(WeightsError, match=f"does not fit this model: .*{message}"):
            load_model_folder(copy_of_saved)


def test_other_config_is_refused(copy_of_saved):
    """nano_zonly has the same tensors as nano_q3's family but another config: its id differs, so it is refused."""
    path = copy_of_saved / "config.json"
    meta = json.loads(path.read_text())
    meta["config"] = json.loads(json.dumps(weights.config_to_dict(build_model("nano_zonly").config)))
    path.write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match="do not belong together: config.json names model"):
        load_model_folder(copy_of_saved)


@pytest.mark.parametrize("content, message", [
    ("not json", "is not a valid model config"),
    ("[1, 2]", "is not a valid model config"),
    ('{"config": {"codec": {"no_such_field": 1}}}', "is not a valid model config"),
])
def test_bad_config_json(copy_of_saved, content, message):
    (copy_of_saved / "config.json").write_text(content)
    with pytest.raises(WeightsError, match=message):
        load_model_folder(copy_of_saved)


def test_release_checkpoint_errors(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        load_release_checkpoint(tmp_path / "missing")
    with pytest.raises(WeightsError, match="model.safetensors is missing"):  # refused before building sd15
        load_release_checkpoint(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(WeightsError, match="model_1.safetensors is missing"):
        load_release_checkpoint(tmp_path)


def test_release_checkpoint_layout_with_a_nano_model(model, tmp_path, image):
    """The release layout (generator UNet + codec files, no VAE) loads strictly; swapped files are refused."""
    save_file({k: v.contiguous() for k, v in model.generator.unet.state_dict().items()}, tmp_path / "model.safetensors")
    save_file({k: v.contiguous() for k, v in model.codec.state_dict().items()}, tmp_path / "model_1.safetensors")
    with pytest.warns(UserWarning, match="no SD-2.1 VAE"):
        loaded = load_release_checkpoint(tmp_path, preset="nano_q3")
    assert loaded.untrained_parts == ("vae",)
    for name, tensor in model.codec.state_dict().items():
        assert torch.equal(loaded.codec.state_dict()[name], tensor), name
    with pytest.warns(UserWarning):
        again = load_release_checkpoint(tmp_path, preset="nano_q3")
    assert again.model_id == loaded.model_id  # the same folder is the same model in every process
    assert again.decompress(loaded.compress(image).to_bytes()).shape == image.shape

    (tmp_path / "swap").mkdir()
    (tmp_path / "swap" / "model.safetensors").write_bytes((tmp_path / "model_1.safetensors").read_bytes())
    (tmp_path / "swap" / "model_1.safetensors").write_bytes((tmp_path / "model.safetensors").read_bytes())
    with pytest.raises(WeightsError, match="model.safetensors does not fit this model"):
        load_release_checkpoint(tmp_path / "swap", preset="nano_q3")


def test_files_of_one_model_are_refused_by_another(model, saved, image):
    data = model.compress(image).to_bytes()
    other = build_model("nano_q3", seed=1)
    with pytest.raises(BitstreamError, match=f"written by model {model.model_id.hex()}"):
        other.decompress(data)


def test_model_id_ignores_settings_that_do_not_change_decoding():
    """Same weights, other rate weight or training settings: the same decoder, so the same id."""
    assert build_model("nano_q2").model_id == build_model("nano_q3").model_id
    assert build_model("nano_q3", **{"codec.z_only": True}).model_id != build_model("nano_q3").model_id


def test_dmd2_unet_state_dict(tmp_path):
    torch.save({"a.weight": torch.ones(2)}, tmp_path / "unet.bin")
    assert torch.equal(load_dmd2_unet_state_dict(tmp_path / "unet.bin")["a.weight"], torch.ones(2))
    with pytest.raises(WeightsError, match="missing weights file"):
        load_dmd2_unet_state_dict(tmp_path / "missing.bin")
    (tmp_path / "garbage.bin").write_bytes(b"garbage")
    with pytest.raises(WeightsError, match="not a loadable weights file"):
        load_dmd2_unet_state_dict(tmp_path / "garbage.bin")
    torch.save([torch.ones(1)], tmp_path / "list.bin")
    with pytest.raises(WeightsError, match="holds a list, not a state_dict"):
        load_dmd2_unet_state_dict(tmp_path / "list.bin")


def test_unet_state_dict_from_a_diffusers_folder_or_a_file(tmp_path):
    from diffusers import UNet2DConditionModel

    from onedc_lib.weights import load_unet_state_dict

    unet = UNet2DConditionModel(sample_size=8, block_out_channels=(32, 32), layers_per_block=1,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32)
    unet.save_pretrained(tmp_path / "pipeline" / "unet")
    for path in (tmp_path / "pipeline", tmp_path / "pipeline" / "unet",
                 tmp_path / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors"):
        state = load_unet_state_dict(path)
        assert state.keys() == unet.state_dict().keys()
        assert all(torch.equal(state[k], v) for k, v in unet.state_dict().items())
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="no UNet weights"):
        load_unet_state_dict(tmp_path / "empty")


def test_a_family_is_its_rate_points_not_a_name_prefix(monkeypatch):
    """nano_sr extends nano's name: a family is `<family>_zonly` and `<family>_q<N>`, never a prefix; the default
    family is the default model's."""
    names = ["nano_q10", "nano_sr_q1", "nano_zonly", "nano_q2", "nano_sr_zonly", "nano", "nano_qx", "nanoq1", "x_q1"]
    assert weights.family_members("nano", names) == ["nano_zonly", "nano_q2", "nano_q10"]
    assert weights.family_members("nano_sr", names) == ["nano_sr_zonly", "nano_sr_q1"]
    assert weights.family_of("runs/nano_sr_q3") == "nano_sr" and weights.family_of("runs/q3/model") is None
    monkeypatch.setattr(weights, "DEFAULT_MODEL", "nano_sr_q3")
    assert weights.default_family() == "nano_sr"
    monkeypatch.setattr(weights, "DEFAULT_MODEL", "runs/model")
    with pytest.raises(ValueError, match="is not a rate point"):
        weights.default_family()
