"""COCO 2017 val with captions (the paper's validation set): items `(image, first caption)`.

`images_dir` is the `val2017/` folder, `annotations` the `captions_val2017.json` of the COCO annotations. Images
are in increasing image id; an image's first caption is the first of its annotations in the file's order (the
order `pycocotools` keeps). Images listed in the json but absent from the folder, or unreadable, are skipped
with a warning and counted (`skipped`); evaluation must not silently repeat an image, so a file that fails only
when its pixels are decoded raises by default (on_error="raise").

Validation uses 512 x 512 center crops (spec section 6): `CocoCaptions(..., transform=center_crop_transform(512))`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import torch

from onedc_lib.image_io import ImageError, load_image

from .folders import SkippingDataset, check_image_header


class CocoCaptions(SkippingDataset):
    def __init__(self, images_dir: str | os.PathLike, annotations: str | os.PathLike,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None, check: str = "header",
                 on_error: str = "raise"):
        super().__init__(transform, on_error)
        self.images_dir = Path(images_dir)
        try:
            data = json.loads(Path(annotations).read_text(encoding="utf-8"))
            images, anns = data["images"], data["annotations"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{annotations}: not a COCO captions file ({error})") from None
        self.captions: dict[int, list[str]] = {}
        for ann in anns:
            self.captions.setdefault(int(ann["image_id"]), []).append(str(ann["caption"]).strip())
        self.ids: list[int] = []
        self.files: list[Path] = []
        for image in sorted(images, key=lambda im: int(im["id"])):
            path = self.images_dir / image["file_name"]
            try:
                if not path.is_file():
                    raise ImageError(f"{path}: no such file")
                if check == "header":
                    check_image_header(path)
            except ImageError as error:
                self._skip(str(path), str(error))
                continue
            self.ids.append(int(image["id"]))
            self.files.append(path)

    def __len__(self) -> int:
        return len(self.files)

    def _name(self, index: int) -> str:
        return str(self.files[index])

    def _load(self, index: int) -> tuple[torch.Tensor, str]:
        captions = self.captions.get(self.ids[index], [])
        return load_image(self.files[index]), captions[0] if captions else ""
