"""Image folders as datasets: every image under a folder (recursively), with an optional caption beside it.

Items are `(image, caption)`: a float tensor [3, H, W] in [0, 1] at the file's own size (the training transform
crops and resizes whole batches, see transforms.py) and the text of `<stem>.txt` next to the image, else the
caption shipped for a photograph of the nano data set (nano_captions.json, by file name), else "".

Corrupt or unreadable files are skipped with a `CorruptImageWarning` and counted in `skipped` (the paths in
`skipped_files`). Most are found when the folder is scanned (each file's header is read, which is cheap); a file
whose header is fine but whose pixels are not is found when it is loaded: by default the next readable item is
returned in its place, so that an epoch never stops on one bad file and the substitute is the same on every run.
Counts found at load time are per process: a DataLoader worker counts in its own copy.
"""
from __future__ import annotations

import io
import os
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import Dataset

from onedc_lib.image_io import IMAGE_SUFFIXES, ImageError, _to_rgb_float, load_image


NANO_CAPTIONS = Path(__file__).parent / "nano_captions.json"


@lru_cache(maxsize=1)
def shipped_captions() -> dict[str, str]:
    """File name -> caption of the nano photographs (nano_captions.json is keyed by the manifest's file ids,
    `<split>/<name>`; names are unique across the splits, so a prepared folder anywhere finds its captions)."""
    import json

    captions = json.loads(NANO_CAPTIONS.read_text(encoding="utf-8"))["captions"]
    return {Path(file_id).name: text for file_id, text in captions.items()}


def image_caption(path: str | os.PathLike) -> str:
    """The caption of an image file: `<stem>.txt` beside it (stripped), else the shipped one, else ""."""
    path = Path(path)
    try:
        return path.with_suffix(".txt").read_text(encoding="utf-8").strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return shipped_captions().get(path.name, "")


class CorruptImageWarning(UserWarning):
    """An image that was skipped because it cannot be read."""


def decode_image_bytes(data: bytes, name: str = "<bytes>") -> torch.Tensor:
    """Encoded image bytes (JPEG, PNG, ...) -> float [3, H, W] in [0, 1], with the same rules as `load_image`
    (size checked before decoding, EXIF orientation applied, alpha on white); ImageError if unusable."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    from onedc_lib.bitstream import BitstreamError, check_image_size

    try:
        with Image.open(io.BytesIO(data)) as image:
            try:
                check_image_size(image.height, image.width)
            except BitstreamError as error:
                raise ImageError(f"{name}: {error}") from None
            array = _to_rgb_float(ImageOps.exif_transpose(image))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError, ValueError) as error:
        if isinstance(error, ImageError):
            raise
        raise ImageError(f"{name}: not a readable image ({error})") from None
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def check_image_header(path: str | os.PathLike) -> None:
    """Reads only the header: ImageError if the file is not an image PIL can open or its size is refused."""
    from PIL import Image, UnidentifiedImageError

    from onedc_lib.bitstream import BitstreamError, check_image_size

    try:
        with Image.open(path) as image:
            check_image_size(image.height, image.width)
    except BitstreamError as error:
        raise ImageError(f"{path}: {error}") from None
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError, ValueError) as error:
        raise ImageError(f"{path}: not a readable image ({error})") from None


class SkippingDataset(Dataset):
    """Base of the image datasets: `_load(i)` returns an item or raises ImageError; `skipped` counts bad items.

    on_error: "substitute" returns the next readable item (deterministic), "raise" raises the ImageError.
    """

    def __init__(self, transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 on_error: str = "substitute"):
        if on_error not in ("substitute", "raise"):
            raise ValueError(f"on_error must be 'substitute' or 'raise', not {on_error!r}")
        self.transform = transform
        self.on_error = on_error
        self.skipped = 0
        self.skipped_files: list[str] = []

    def _skip(self, what: str, reason: str) -> None:
        self.skipped += 1
        self.skipped_files.append(what)
        reason = reason.removeprefix(f"{what}: ")
        warnings.warn(f"skipping {what}: {reason}", CorruptImageWarning, stacklevel=3)

    def _load(self, index: int) -> tuple[torch.Tensor, str]:
        raise NotImplementedError

    def _name(self, index: int) -> str:
        return f"item {index}"

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} items")
        index %= n
        for attempt in range(n):
            i = (index + attempt) % n
            try:
                image, caption = self._load(i)
                break
            except ImageError as error:
                if self.on_error == "raise":
                    raise
                self._skip(self._name(i), str(error))
        else:
            raise ImageError(f"no readable item in {type(self).__name__} ({n} items)")
        if self.transform is not None:
            image = self.transform(image)
        return image, caption


def find_images(root: str | os.PathLike, suffixes: set[str] | frozenset[str] = frozenset(IMAGE_SUFFIXES)) -> list[Path]:
    """Every file under root (recursively, following no links to folders) whose suffix is an image suffix,
    sorted by path so that indexes are the same on every machine. Hidden files and folders are left out."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(folder) / f for f in files if not f.startswith(".") and Path(f).suffix.lower() in suffixes]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


class ImageFolder(SkippingDataset):
    """Images under `root` (recursively; suffixes from image_io.IMAGE_SUFFIXES), each with its caption.

    check: "header" (default) opens every file's header when the folder is scanned and skips unreadable ones,
    "decode" decodes every image once (slow, finds truncated pixel data too), "none" scans names only.
    Captions: `image_caption` (a `<stem>.txt` beside the image, else the shipped nano caption, else "").
    """

    def __init__(self, root: str | os.PathLike, transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 check: str = "header", on_error: str = "substitute",
                 suffixes: set[str] | frozenset[str] = frozenset(IMAGE_SUFFIXES)):
        super().__init__(transform, on_error)
        if check not in ("header", "decode", "none"):
            raise ValueError(f"check must be 'header', 'decode' or 'none', not {check!r}")
        self.root = Path(root)
        self.files: list[Path] = []
        for path in find_images(self.root, suffixes):
            try:
                if check == "header":
                    check_image_header(path)
                elif check == "decode":
                    load_image(path)
            except ImageError as error:
                self._skip(str(path), str(error))
                continue
            self.files.append(path)

    def __len__(self) -> int:
        return len(self.files)

    def _name(self, index: int) -> str:
        return str(self.files[index])

    def caption(self, index: int) -> str:
        return image_caption(self.files[index])

    def _load(self, index: int) -> tuple[torch.Tensor, str]:
        return load_image(self.files[index]), self.caption(index)
