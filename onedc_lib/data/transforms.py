"""The training transform of the release (spec section 6), with every size and probability as configuration.

Each image: its short side resized up to at least `big_crop` (or to exactly `big_crop`, resize_mode="exact"),
a random `big_crop` x `big_crop` crop, a horizontal flip with probability `flip_p`. Then ONE transform for the
whole batch, drawn per step:

    "resize"    p_resize    the big crops resized to `crop` x `crop`               (release: Resize(512), 0.2)
    "crop"      p_crop      a random `crop` x `crop` crop of each big crop         (release: RandomCrop(512), 0.5)
    "big_crop"  p_big_crop  the big crops themselves; the batch cut to 1/`big_crop_batch_divisor` of its size
                                                                                   (release: RandomCrop(1024), 0.3)

sd15 uses crop 512 / big_crop 1024; the nano scale e.g. 128 / 256. Every random number comes from a
torch.Generator passed in, in a fixed order (branch, then per kept image: crop offsets, flip, then per image the
small-crop offsets), so a batch is a function of (images, generator state) only. `make_train_loader` seeds one
generator per step from (seed, step), which makes a resumed run bit-exact whatever the number of workers.
Validation: `center_crop_transform(size)` (short side resized up to `size` if smaller, then a center crop).
"""
from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

BRANCHES = ("resize", "crop", "big_crop")


@dataclass(frozen=True)
class TrainTransformConfig:
    crop: int = 512  # the small crop / resize target
    big_crop: int = 1024  # each image's random crop before the batch transform
    p_resize: float = 0.2
    p_crop: float = 0.5
    p_big_crop: float = 0.3
    big_crop_batch_divisor: int = 4  # the big-crop branch keeps ceil(batch / divisor) images (memory)
    flip_p: float = 0.5
    resize_mode: str = "at_least"  # "at_least": only short sides below big_crop are resized; "exact": all
    interpolation: str = "bicubic"  # "bicubic" | "bilinear" | "area" (antialiased when downscaling)

    def __post_init__(self):
        if not 0 < self.crop <= self.big_crop:
            raise ValueError(f"need 0 < crop <= big_crop, got crop {self.crop}, big_crop {self.big_crop}")
        probs = (self.p_resize, self.p_crop, self.p_big_crop)
        if min(probs) < 0 or abs(sum(probs) - 1.0) > 1e-6:
            raise ValueError(f"branch probabilities must be >= 0 and sum to 1, got {probs}")
        if self.big_crop_batch_divisor < 1:
            raise ValueError("big_crop_batch_divisor must be >= 1")
        if self.resize_mode not in ("at_least", "exact"):
            raise ValueError(f"resize_mode must be 'at_least' or 'exact', not {self.resize_mode!r}")
        if self.interpolation not in ("bicubic", "bilinear", "area"):
            raise ValueError(f"unknown interpolation {self.interpolation!r}")

    @classmethod
    def scaled(cls, crop: int, **kwargs) -> "TrainTransformConfig":
        """The release's recipe at another scale: big_crop = 2 * crop."""
        return cls(crop=crop, big_crop=2 * crop, **kwargs)


def resize(image: torch.Tensor, height: int, width: int, interpolation: str = "bicubic") -> torch.Tensor:
    """[C, H, W] or [N, C, H, W] float -> the given size, clamped to [0, 1]; antialiased when shrinking."""
    if tuple(image.shape[-2:]) == (height, width):
        return image
    batch = image if image.dim() == 4 else image[None]
    if interpolation == "area":
        out = F.interpolate(batch, size=(height, width), mode="area")
    else:
        out = F.interpolate(batch, size=(height, width), mode=interpolation, align_corners=False, antialias=True)
    out = out.clamp_(0, 1)
    return out if image.dim() == 4 else out[0]


def resize_short_side(image: torch.Tensor, size: int, mode: str = "at_least",
                      interpolation: str = "bicubic") -> torch.Tensor:
    """Short side to `size` (mode "exact"), or only up to it when smaller (mode "at_least"); aspect kept, the
    long side rounded to the nearest pixel and never below `size`."""
    h, w = image.shape[-2:]
    short = min(h, w)
    if short == size or (mode == "at_least" and short > size):
        return image
    scale = size / short
    nh, nw = (size, max(size, round(w * scale))) if h <= w else (max(size, round(h * scale)), size)
    return resize(image, nh, nw, interpolation)


def _randint(high: int, generator: torch.Generator) -> int:
    """Uniform in [0, high] (inclusive)."""
    return int(torch.randint(high + 1, (1,), generator=generator))


def random_crop(image: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """A size x size crop of an image at least that large: top offset drawn first, then left."""
    h, w = image.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"cannot crop {size}x{size} from {h}x{w}")
    top, left = _randint(h - size, generator), _randint(w - size, generator)
    return image[..., top:top + size, left:left + size]


def center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    h, w = image.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return image[..., top:top + size, left:left + size]


def center_crop_transform(size: int, interpolation: str = "bicubic") -> Callable[[torch.Tensor], torch.Tensor]:
    """Validation: short side resized up to `size` if smaller (COCO has many 640x480 images), center crop."""
    def transform(image: torch.Tensor) -> torch.Tensor:
        return center_crop(resize_short_side(image, size, "at_least", interpolation), size)
    return transform


def choose_branch(config: TrainTransformConfig, generator: torch.Generator) -> str:
    u = float(torch.rand((), generator=generator, dtype=torch.float64))
    if u < config.p_resize:
        return "resize"
    if u < config.p_resize + config.p_crop:
        return "crop"
    return "big_crop"


def big_crop(image: torch.Tensor, config: TrainTransformConfig, generator: torch.Generator) -> torch.Tensor:
    """One image -> [3, big_crop, big_crop]: short side resized (small images upscaled so the crop fits),
    random crop, random horizontal flip."""
    image = resize_short_side(image, config.big_crop, config.resize_mode, config.interpolation)
    image = random_crop(image, config.big_crop, generator)
    if float(torch.rand((), generator=generator, dtype=torch.float64)) < config.flip_p:
        image = image.flip(-1)
    return image


def kept_count(batch_size: int, branch: str, config: TrainTransformConfig) -> int:
    if branch != "big_crop":
        return batch_size
    return max(1, -(-batch_size // config.big_crop_batch_divisor))


def batch_transform(images: Sequence[torch.Tensor], config: TrainTransformConfig, generator: torch.Generator,
                    branch: str | None = None) -> tuple[torch.Tensor, str]:
    """Images of any sizes -> ([N', 3, S, S] contiguous float32, branch): S = crop, or big_crop on the
    big-crop branch where N' = ceil(N / divisor) (the first images are kept); N' = N otherwise."""
    if not images:
        raise ValueError("empty batch")
    if branch is None:
        branch = choose_branch(config, generator)
    elif branch not in BRANCHES:
        raise ValueError(f"unknown branch {branch!r}; one of {BRANCHES}")
    kept = images[:kept_count(len(images), branch, config)]
    crops = torch.stack([big_crop(image.float(), config, generator) for image in kept])
    if branch == "resize":
        crops = resize(crops, config.crop, config.crop, config.interpolation)
    elif branch == "crop":
        crops = torch.stack([random_crop(c, config.crop, generator) for c in crops])
    return crops.contiguous(), branch


def step_generator(seed: int, step: int) -> torch.Generator:
    """A generator whose state is a function of (seed, step) only (sha256 of both, 63 bits)."""
    digest = hashlib.sha256(f"onedc-train-transform:{int(seed)}:{int(step)}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


class TrainBatch(NamedTuple):
    images: torch.Tensor  # [N, 3, S, S] in [0, 1]
    captions: list[str]
    branch: str
    step: int


class StepBatchSampler(Sampler):
    """Batches of (step, index) pairs from `start_step` on (forever, or `num_steps` batches in all).

    The index stream is the concatenation of per-epoch permutations of range(num_samples), each seeded from
    (seed, epoch); batch `s` is positions [s * batch_size, (s + 1) * batch_size) of that stream, so any step can
    be produced without replaying earlier ones (resume) and small datasets wrap into the next epoch.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0, start_step: int = 0,
                 num_steps: int | None = None, shuffle: bool = True):
        if num_samples < 1 or batch_size < 1:
            raise ValueError(f"need num_samples >= 1 and batch_size >= 1, got {num_samples}, {batch_size}")
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.start_step, self.num_steps, self.shuffle = start_step, num_steps, shuffle
        self._perm: tuple[int, torch.Tensor] | None = None

    def _epoch(self, epoch: int) -> torch.Tensor:
        if self._perm is None or self._perm[0] != epoch:
            if self.shuffle:
                g = torch.Generator().manual_seed(
                    int.from_bytes(hashlib.sha256(f"onedc-epoch:{self.seed}:{epoch}".encode()).digest()[:8],
                                   "little") & (2**63 - 1))
                self._perm = (epoch, torch.randperm(self.num_samples, generator=g))
            else:
                self._perm = (epoch, torch.arange(self.num_samples))
        return self._perm[1]

    def indices(self, step: int) -> list[int]:
        start = step * self.batch_size
        return [int(self._epoch(p // self.num_samples)[p % self.num_samples])
                for p in range(start, start + self.batch_size)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        steps = itertools.count(self.start_step) if self.num_steps is None else \
            range(self.start_step, self.num_steps)
        for step in steps:
            yield [(step, i) for i in self.indices(step)]

    def __len__(self) -> int:
        if self.num_steps is None:
            raise TypeError("an endless StepBatchSampler has no length (give num_steps)")
        return max(0, self.num_steps - self.start_step)


class StepDataset(Dataset):
    """dataset[(step, index)] -> (step, dataset[index]): carries the step to the collate function."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            step, index = key
            return step, self.dataset[index]
        return None, self.dataset[key]


class BatchCollate:
    """Collate function: one batch transform for the whole batch.

    Called by a DataLoader on items `(step, (image, caption))` from StepDataset, it seeds its generator from
    (seed, step); called directly as `collate(items, generator)` on `(image, caption)` items it uses that one.
    """

    def __init__(self, config: TrainTransformConfig, seed: int = 0):
        self.config, self.seed = config, seed

    def __call__(self, items: Sequence, generator: torch.Generator | None = None) -> TrainBatch:
        step = None
        if items and not isinstance(items[0][0], torch.Tensor):  # (step, (image, caption)) from StepDataset
            steps = {s for s, _ in items}
            if len(steps) != 1:
                raise ValueError(f"one batch must come from one step, got steps {sorted(steps, key=str)}")
            step = steps.pop()
            items = [item for _, item in items]
        if generator is None:
            if step is None:
                raise ValueError("no generator given and the items carry no step (use StepDataset)")
            generator = step_generator(self.seed, step)
        images, branch = batch_transform([image for image, _ in items], self.config, generator)
        captions = [caption for _, caption in items][:images.shape[0]]
        return TrainBatch(images, captions, branch, -1 if step is None else step)


def make_train_loader(dataset: Dataset, config: TrainTransformConfig, batch_size: int, seed: int = 0,
                      start_step: int = 0, num_steps: int | None = None, num_workers: int = 0,
                      **loader_kwargs) -> DataLoader:
    """A DataLoader of TrainBatch from `start_step` on; batch `s` is the same whether the run started at 0 or
    resumed at `s`, with any number of workers."""
    sampler = StepBatchSampler(len(dataset), batch_size, seed, start_step, num_steps)
    return DataLoader(StepDataset(dataset), batch_sampler=sampler, collate_fn=BatchCollate(config, seed),
                      num_workers=num_workers, **loader_kwargs)
