"""Sample photographs available on every machine: the colour photographs that scikit-image ships in its wheel.

Licences as scikit-image documents them (skimage.data docstrings).
"""
from __future__ import annotations

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
