"""The sd15 codec against the manifest of the released `model_1.safetensors` (compat README 1)."""
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from onedc_lib.config import CodecConfig
from onedc_lib.models.codec import Codec


@pytest.fixture(scope="module")
def release_manifest(compat_dir):
    return json.loads((compat_dir / "manifest_model_1_codec.json").read_text())


@pytest.fixture(scope="module")
def sd15_codec():
    return Codec(CodecConfig())  # 394 M parameters, about 2 s on CPU


def param_count(module, prefix: str) -> int:
    return sum(p.numel() for name, p in module.named_parameters() if name.startswith(prefix + "."))


def test_state_dict_keys_order_and_shapes(sd15_codec, release_manifest):
    ours = [[key, list(t.shape), str(t.dtype).removeprefix("torch.")] for key, t in sd15_codec.state_dict().items()]
    assert ours == release_manifest["keys_in_state_dict_order"]
    assert release_manifest["buffers_saved_in_file"] == []  # FSQ's buffers are non-persistent, ours too


@pytest.mark.parametrize("level", ["param_counts_top_level", "param_counts_second_level"])
def test_parameter_counts_per_module(sd15_codec, release_manifest, level):
    expected = release_manifest[level]
    assert {name: param_count(sd15_codec, name) for name in expected} == expected
    assert sum(p.numel() for p in sd15_codec.parameters()) == release_manifest["param_count_total"] == 394_147_783


def test_loads_manifest_shapes_strictly(sd15_codec, release_manifest):
    """strict=True with the release's keys and shapes (meta tensors: no memory, shapes are still checked)."""
    state = {key: torch.empty(shape, device="meta") for key, shape, _ in release_manifest["keys_in_file_order"]}
    sd15_codec.load_state_dict(state, strict=True, assign=True)


@pytest.mark.slow
def test_loads_release_sized_file_strictly(release_manifest, tmp_path):
    """A 1.58 GB safetensors file laid out as the release's: same size and header length, loads strictly."""
    entries = release_manifest["keys_in_file_order"]
    path = tmp_path / "model_1.safetensors"
    save_file({key: torch.full(shape, float(i)) for i, (key, shape, _) in enumerate(entries)}, path,
              metadata=release_manifest["safetensors_metadata"])
    assert path.stat().st_size == release_manifest["file_size_bytes"]
    with open(path, "rb") as f:
        assert int.from_bytes(f.read(8), "little") == release_manifest["header_length_bytes"]
    with safe_open(path, "pt") as f:
        assert f.metadata() == release_manifest["safetensors_metadata"]

    codec = Codec(CodecConfig())
    codec.load_state_dict(load_file(path), strict=True)
    params = dict(codec.named_parameters())
    assert all(params[key].flatten()[0].item() == i for i, (key, _, _) in enumerate(entries))
