"""Reading and writing images: any common format to a float [3, H, W] tensor in [0, 1], and back to PNG.

Grayscale is replicated to RGB, alpha is composited on white, EXIF orientation is applied. 16-bit grayscale keeps
its precision; 16-bit colour (48-bit PNG, TIFF) arrives at 8 bits per channel, as Pillow decodes it (the codec's
results and metrics are on 8-bit values anyway). Sizes are checked before decoding pixels, so a decompression bomb is refused early.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .bitstream import BitstreamError, atomic_write, check_image_size

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif"}


class ImageError(ValueError):
    """An input image that cannot be used, with the reason."""


def load_image(path: str | os.PathLike) -> torch.Tensor:
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as image:
            try:
                check_image_size(image.height, image.width)
            except BitstreamError as error:
                raise ImageError(f"{path}: {error}") from None
            image = ImageOps.exif_transpose(image)
            array = _to_rgb_float(image)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
        raise ImageError(f"{path}: not a readable image ({error})") from None
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) from the file's header, without decoding its pixels (EXIF rotation not applied)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.height, image.width
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
        raise ImageError(f"{path}: not a readable image ({error})") from None


def _to_rgb_float(image) -> np.ndarray:
    """PIL image of any mode -> float32 [H, W, 3] in [0, 1]."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        array = array / (65535.0 if array.max() > 255 or image.mode.startswith("I;16") else 255.0)
        return np.repeat(np.clip(array, 0, 1)[..., None], 3, axis=2).astype(np.float32)
    if image.mode == "F":
        return np.repeat(np.clip(np.asarray(image, np.float32), 0, 1)[..., None], 3, axis=2)
    if "A" in image.getbands() or image.mode == "P" and "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
        alpha = rgba[..., 3:]
        return rgba[..., :3] * alpha + (1.0 - alpha)
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[3, H, W] in [0, 1] -> uint8 [H, W, 3], rounding to nearest."""
    return (image.detach().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy())


def save_image(image: torch.Tensor, path: str | os.PathLike) -> None:
    """Writes atomically; the format follows the suffix (PNG recommended: lossless)."""
    import io

    from PIL import Image

    path = Path(path)
    suffix = path.suffix.lower()
    Image.preinit()  # the common formats; registered_extensions() imports all of PIL's plugins (slower start-up)
    image_format = Image.EXTENSION.get(suffix) or Image.registered_extensions().get(suffix, "PNG")
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buffer, format=image_format)
    atomic_write(path, buffer.getvalue())
