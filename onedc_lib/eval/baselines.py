"""Classical baseline codecs with real encoders: JPEG, WebP, AVIF, JPEG XL and HEVC-intra (HEIF, BPG-like).

    from onedc_lib.eval.baselines import BASELINES, bpp
    codec = BASELINES["avif"]
    for q in codec.qualities:                    # the sweep, in order of increasing rate
        data = codec.encode(image, q)            # uint8 [H, W, 3] RGB -> the file's bytes
        rate = bpp(data, image)                  # 8 * len(bytes) / (H * W)
        recon = codec.decode(data)               # -> uint8 [H, W, 3]

Every codec takes a `quality` in 0..100 (higher = better, more bits) so that sweeps read the same way; the
codec's own parameter is recorded in `settings` (JPEG XL: the Butteraugli distance from libjxl's own
quality -> distance mapping, as `cjxl -q`). `describe()` gives name, sweep, settings and library versions for
the results' provenance; `coded_subsampling(data)` reads the chroma subsampling back from the bitstream.

Encoders and settings (chosen for reproducible bytes: the same bytes on any machine with the same libraries):

    jpeg  Pillow / libjpeg-turbo, 4:4:4, optimized Huffman tables (baseline, not progressive)
    webp  Pillow / libwebp, method 6; lossy WebP (VP8) is always 4:2:0
    avif  Pillow / libavif + aom, 4:4:4, speed 6, one thread (aom's output depends on the thread count)
    jxl   imagecodecs / libjxl, effort 7 (XYB VarDCT: no chroma subsampling)
    hevc  pillow-heif / libheif + x265 (decoded by libde265), 4:4:4, HEIF container, no NCLX box

bpp is always measured from the whole file. HEIF and AVIF files carry about 300-450 bytes of ISOBMFF
container (0.01 bpp at 512 x 512) that BPG would not; `payload_bytes(data)` gives the size of the coded
stream with its parameter sets only (what a BPG-like container would store), reported beside bpp, never
instead of it.

Rate floors (quality 0) on the scikit-image photographs (astronaut 512x512, coffee 400x600, chelsea 300x451):
jpeg 0.14-0.16 bpp, webp 0.09-0.14, avif 0.08-0.11, jxl 0.11-0.17, hevc 0.04-0.06 (payload 0.036-0.055); none
of these codecs reaches 0.02 bpp on photographs of this size (AVIF and HEVC are at their largest quantizer).
The sweeps reach 1.1-1.6 bpp at the top.
"""
from __future__ import annotations

import functools
import io
import struct
from dataclasses import dataclass, field

import numpy as np

__all__ = ["ALL_BASELINES", "BASELINES", "DOWNSAMPLED_BASELINES", "Baseline", "Downsampled", "bpp", "check_image"]


def check_image(image) -> np.ndarray:
    """An RGB uint8 [H, W, 3] array (C-contiguous), or a ValueError saying what is wrong."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 RGB image of shape [H, W, 3], got {image.dtype} {list(image.shape)}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"empty image of shape {list(image.shape)}")
    return np.ascontiguousarray(image)


def bpp(data: bytes, image) -> float:
    """8 * encoded bytes / original pixels."""
    shape = np.shape(image)
    return 8.0 * len(data) / (shape[0] * shape[1])


def _pil_encode(image: np.ndarray, fmt: str, **options) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(check_image(image)).save(buffer, fmt, **options)
    return buffer.getvalue()


def _pil_decode(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _boxes(data: bytes, start: int = 0, end: int | None = None):
    """(type, payload start, payload end) of the ISOBMFF boxes in data[start:end]."""
    end = len(data) if end is None else end
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", data[pos + 8:pos + 16])[0], 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise ValueError(f"bad ISOBMFF box {kind!r} at byte {pos}")
        yield kind.decode("latin-1"), pos + header, pos + size
        pos += size


def _find_box(data: bytes, path: tuple[str, ...]) -> tuple[int, int]:
    """Payload (start, end) of the box at path, e.g. ("meta", "iprp", "ipco", "hvcC")."""
    start, end = 0, len(data)
    for depth, name in enumerate(path):
        for kind, s, e in _boxes(data, start, end):
            if kind == name:
                start, end = s + (4 if kind == "meta" else 0), e  # meta is a full box (version + flags)
                break
        else:
            raise ValueError(f"no {'/'.join(path[:depth + 1])} box")
    return start, end


def _heif_payload_bytes(data: bytes, config_box: str) -> int:
    """Coded stream + decoder configuration (parameter sets): mdat payload(s) + the config box payload."""
    start, end = _find_box(data, ("meta", "iprp", "ipco", config_box))
    mdat = sum(e - s for kind, s, e in _boxes(data) if kind == "mdat")
    return mdat + (end - start)


@dataclass(frozen=True)
class Baseline:
    """A classical codec: `encode(image, quality) -> bytes`, `decode(bytes) -> image`, a quality sweep."""

    name: str
    label: str
    qualities: tuple[int, ...]
    subsampling: str
    settings: dict = field(default_factory=dict)

    def encode(self, image, quality: int) -> bytes:
        raise NotImplementedError

    def decode(self, data: bytes) -> np.ndarray:
        raise NotImplementedError

    def versions(self) -> dict[str, str]:
        raise NotImplementedError

    def coded_subsampling(self, data: bytes) -> str:
        """The chroma subsampling written in the bitstream ("4:4:4", "4:2:0", ...)."""
        return self.subsampling

    def payload_bytes(self, data: bytes) -> int:
        """Bytes of the coded stream without container boxes (the whole file unless the codec has a container)."""
        return len(data)

    @property
    def file_extension(self) -> str:
        return {"jpeg": "jpg", "webp": "webp", "avif": "avif", "jxl": "jxl", "hevc": "heic"}[self.name]

    def describe(self) -> dict:
        return {"name": self.name, "label": self.label, "qualities": list(self.qualities),
                "subsampling": self.subsampling, "settings": dict(self.settings), "versions": self.versions()}

    def _check_quality(self, quality) -> int:
        if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not 0 <= quality <= 100:
            raise ValueError(f"{self.name}: quality must be an integer in 0..100, got {quality!r}")
        return int(quality)


def _pillow_version() -> str:
    import PIL

    return PIL.__version__


class _Jpeg(Baseline):
    def encode(self, image, quality):
        return _pil_encode(image, "JPEG", quality=self._check_quality(quality), subsampling=0, optimize=True,
                           progressive=False)

    def decode(self, data):
        return _pil_decode(data)

    def coded_subsampling(self, data):
        from PIL import Image, JpegImagePlugin

        with Image.open(io.BytesIO(data)) as im:
            return {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}.get(JpegImagePlugin.get_sampling(im), "other")

    def versions(self):
        from PIL import features

        return {"pillow": _pillow_version(), "libjpeg-turbo": str(features.version("libjpeg_turbo"))}


class _WebP(Baseline):
    def encode(self, image, quality):
        return _pil_encode(image, "WEBP", quality=self._check_quality(quality), method=6, lossless=False,
                           exact=False)

    def decode(self, data):
        return _pil_decode(data)

    def coded_subsampling(self, data):
        kinds = [kind for kind, _, _ in _boxes_riff(data)]
        return "4:2:0" if "VP8 " in kinds else "4:4:4 (lossless)" if "VP8L" in kinds else "unknown"

    def versions(self):
        from PIL import features

        return {"pillow": _pillow_version(), "libwebp": str(features.version("webp"))}


def _boxes_riff(data: bytes):
    """(fourcc, start, end) of the chunks of a RIFF/WEBP file."""
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise ValueError("not a WebP file")
    pos = 12
    while pos + 8 <= len(data):
        kind, size = data[pos:pos + 4].decode("latin-1"), struct.unpack("<I", data[pos + 4:pos + 8])[0]
        yield kind, pos + 8, pos + 8 + size
        pos += 8 + size + (size & 1)


class _Avif(Baseline):
    def encode(self, image, quality):
        return _pil_encode(image, "AVIF", quality=self._check_quality(quality), subsampling="4:4:4",
                           speed=self.settings["speed"], max_threads=1, codec="aom", range="full")

    def decode(self, data):
        return _pil_decode(data)

    def coded_subsampling(self, data):
        start, end = _find_box(data, ("meta", "iprp", "ipco", "av1C"))
        flags = data[start + 2]  # high_bitdepth twelve_bit monochrome subsampling_x subsampling_y position(2)
        if flags & 0x10:
            return "4:0:0"
        return {(0, 0): "4:4:4", (1, 0): "4:2:2", (1, 1): "4:2:0"}.get(((flags >> 3) & 1, (flags >> 2) & 1), "other")

    def payload_bytes(self, data):
        return _heif_payload_bytes(data, "av1C")

    def versions(self):
        from PIL import _avif, features

        return {"pillow": _pillow_version(), "libavif": str(features.version("avif")),
                "codecs": _avif.codec_versions()}


def jxl_distance(quality: float) -> float:
    """libjxl's JxlEncoderDistanceFromQuality (the mapping of `cjxl -q`): 100 -> 0 (lossless), 90 -> 1.0,
    30 -> 6.4, 0 -> 25 (the largest distance libjxl accepts)."""
    if quality >= 100:
        return 0.0
    if quality >= 30:
        return 0.1 + (100 - quality) * 0.09
    return 53.0 / 3000.0 * quality * quality - 23.0 / 20.0 * quality + 25.0


class _Jxl(Baseline):
    def encode(self, image, quality):
        import imagecodecs

        q = self._check_quality(quality)
        if q == 100:
            raise ValueError("jxl: quality 100 would be lossless; use 0..99")
        return bytes(imagecodecs.jpegxl_encode(check_image(image), distance=jxl_distance(q),
                                               effort=self.settings["effort"], lossless=False))

    def decode(self, data):
        import imagecodecs

        image = np.asarray(imagecodecs.jpegxl_decode(data))
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"jxl: decoded {image.dtype} {list(image.shape)}, expected uint8 RGB")
        return image

    def versions(self):
        import imagecodecs

        return {"imagecodecs": imagecodecs.__version__, "libjxl": imagecodecs.jpegxl_version().split()[-1]}


class _Hevc(Baseline):
    def encode(self, image, quality):
        import pillow_heif
        from PIL import Image

        heif = pillow_heif.from_pillow(Image.fromarray(check_image(image)))
        buffer = io.BytesIO()
        heif.save(buffer, quality=self._check_quality(quality), chroma=444, save_nclx_profile=False,
                  enc_params={"preset": self.settings["x265_preset"]})
        return buffer.getvalue()

    def decode(self, data):
        import pillow_heif

        heif = pillow_heif.open_heif(io.BytesIO(data), convert_hdr_to_8bit=True)
        return np.asarray(heif.to_pillow().convert("RGB"))

    def coded_subsampling(self, data):
        start, _ = _find_box(data, ("meta", "iprp", "ipco", "hvcC"))
        return {0: "4:0:0", 1: "4:2:0", 2: "4:2:2", 3: "4:4:4"}[data[start + 16] & 3]  # chroma_format_idc

    def payload_bytes(self, data):
        return _heif_payload_bytes(data, "hvcC")

    def versions(self):
        import pillow_heif

        info = pillow_heif.libheif_info()
        return {"pillow-heif": pillow_heif.__version__, "libheif": info["libheif"],
                "encoder": info["encoders"].get("x265", info.get("HEIF", "")),
                "decoder": info["decoders"].get("libde265", "")}


BASELINES: dict[str, Baseline] = {
    "jpeg": _Jpeg("jpeg", "JPEG (4:4:4)", (1, 3, 5, 8, 10, 15, 20, 25, 30, 40, 50, 60, 70), "4:4:4",
                  {"subsampling": "4:4:4", "optimize": True, "progressive": False}),
    "webp": _WebP("webp", "WebP", (0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 85), "4:2:0", {"method": 6}),
    "avif": _Avif("avif", "AVIF (aom, 4:4:4)", (0, 5, 8, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 70, 75), "4:4:4",
                  {"subsampling": "4:4:4", "speed": 6, "codec": "aom", "max_threads": 1}),
    "jxl": _Jxl("jxl", "JPEG XL", (0, 5, 10, 15, 20, 25, 30, 40, 50, 60, 70, 80, 85), "4:4:4",
                {"effort": 7, "distance": "jxl_distance(quality)", "color": "XYB"}),
    "hevc": _Hevc("hevc", "HEVC-intra (x265, 4:4:4)", (0, 2, 5, 8, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55), "4:4:4",
                  {"chroma": "4:4:4", "x265_preset": "slow", "container": "HEIF"}),
}


# ------------------------------------------------------------------------------------------------ at a quarter size
@dataclass(frozen=True)
class Downsampled(Baseline):
    """A classical codec on the image area-downsampled x4 (what a pixel_sr VAE slot codes: models/pixel_vae.py),
    brought back to full size by bicubic interpolation or by that slot's pretrained decoder ("sr"): the classical
    codec in the learned codec's latent, at the rates it reaches. The file is the inner codec's file and 4 bytes
    of original height and width (counted in bpp); images are edge-padded to multiples of 4 first."""

    inner: Baseline | None = None
    upsampler: str = "bicubic"
    factor: int = 4

    def encode(self, image, quality):
        image = check_image(image)
        h, w = image.shape[:2]
        f = self.factor
        padded = np.pad(image, ((0, -h % f), (0, -w % f), (0, 0)), mode="edge").astype(np.float32)
        small = padded.reshape(padded.shape[0] // f, f, padded.shape[1] // f, f, 3).mean(axis=(1, 3))
        return self.inner.encode(np.round(small).astype(np.uint8), quality) + struct.pack("<HH", h, w)

    def decode(self, data):
        if len(data) < 5:
            raise ValueError(f"{self.name}: {len(data)} bytes is too short for a file of this codec")
        h, w = struct.unpack("<HH", data[-4:])
        small = self.inner.decode(data[:-4])
        if self.upsampler == "bicubic":
            from PIL import Image

            size = (small.shape[1] * self.factor, small.shape[0] * self.factor)
            large = np.asarray(Image.fromarray(small).resize(size, Image.BICUBIC))
        else:
            large = _sr_upscale(small)
        return np.ascontiguousarray(large[:h, :w])

    def coded_subsampling(self, data):
        return self.inner.coded_subsampling(data[:-4])

    def payload_bytes(self, data):
        return self.inner.payload_bytes(data[:-4]) + 4

    @property
    def file_extension(self) -> str:
        return f"{self.inner.file_extension}.x{self.factor}"

    def versions(self):
        versions = dict(self.inner.versions())
        if self.upsampler == "sr":
            import torch

            versions["torch"] = torch.__version__
        return versions


def _sr_upscale(small: np.ndarray) -> np.ndarray:
    """uint8 [h, w, 3] -> uint8 [4h, 4w, 3] through the provisioned decoder of the nano VAE slot, in the dtype and
    layout a OneDC file decodes in on this machine (DecodeOptions: bf16 where the CPU has bf16 units)."""
    import torch

    from ..models.onedc import DecodeOptions

    net = _sr_network()
    dtype = DecodeOptions().autocast_dtype(torch.device("cpu"))
    x = torch.from_numpy(small.astype(np.float32) / 255).permute(2, 0, 1)[None]
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        y = net(x.contiguous(memory_format=torch.channels_last))[0].float().clamp(0, 1)
    return (y.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


@functools.lru_cache(maxsize=1)
def _sr_network():
    import torch

    from ..models import sr_decoder

    name = "realesrgan-x4plus"
    net = sr_decoder.build_network(sr_decoder.PRETRAINED[name].arch)
    net.load_state_dict({k: v.float() for k, v in sr_decoder.load_state_dict(None, name).items()})
    return net.eval().to(memory_format=torch.channels_last)


DOWNSAMPLED_BASELINES: dict[str, Baseline] = {
    f"{name}_x4_{up}": Downsampled(f"{name}_x4_{up}",
                                   f"{codec.label.split(' (')[0]}/4 + {'bicubic' if up == 'bicubic' else 'decoder'}",
                                   # the decoder takes seconds per image: every third quality (six or so)
                                   codec.qualities if up == "bicubic" else codec.qualities[::3], codec.subsampling,
                                   {**codec.settings, "downsampling": "area x4 (edge-padded to multiples of 4)",
                                    "upsampling": "bicubic (Pillow)" if up == "bicubic" else
                                    "the nano VAE slot's pretrained decoder (Real-ESRGAN x4plus; bf16 on "
                                                   "CPUs with bf16 units, as OneDC decodes)"},
                                   inner=codec, upsampler=up)
    for name, codec in BASELINES.items() for up in ("bicubic", "sr")
}
ALL_BASELINES: dict[str, Baseline] = {**BASELINES, **DOWNSAMPLED_BASELINES}
