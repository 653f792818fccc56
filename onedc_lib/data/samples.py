"""Sample photographs available on every machine: the colour photographs that scikit-image ships in its wheel.

Licences as scikit-image documents them (skimage.data docstrings).
"""
from __future__ import annotations

from pathlib import Path

import torch

SAMPLES = {
    "astronaut": "public domain (NASA, Eileen Collins)",
    "coffee": "CC0 (Rachel Michetti)",
    "chelsea": "CC0 (Stefan van der Walt)",
    "rocket": "public domain (SpaceX, DSCOVR launch)",
}


def sample_image(name: str) -> torch.Tensor:
    """[3, H, W] float tensor in [0, 1]."""
    import skimage.data

    if name not in SAMPLES:
        raise ValueError(f"unknown sample {name!r}; available: {', '.join(SAMPLES)}")
    array = getattr(skimage.data, name)()
    return torch.from_numpy(array).permute(2, 0, 1).float().div(255)


def sample_images() -> dict[str, torch.Tensor]:
    return {name: sample_image(name) for name in SAMPLES}


def load_demo_image(image: str, max_side: int = 0) -> tuple[str, torch.Tensor]:
    """(name, [3, H, W] in [0, 1]) of a sample photograph's name or an image path, shrunk (antialiased) so that
    its longer side is at most max_side (0: full size)."""
    from ..image_io import load_image

    if image in SAMPLES:
        name, x = image, sample_image(image)
    else:
        path = Path(image).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{image!r} is neither a sample ({', '.join(SAMPLES)}) nor an image file")
        name, x = path.stem, load_image(path)
    h, w = x.shape[-2:]
    if max_side and max(h, w) > max_side:
        scale = max_side / max(h, w)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        x = torch.nn.functional.interpolate(x[None], size=size, mode="bicubic", antialias=True,
                                            align_corners=False)[0].clamp(0, 1)
        x = (x * 255).round() / 255  # an 8-bit image, as every codec and metric sees it
    return name, x.contiguous()
