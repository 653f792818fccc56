"""The one training loop of every stage: accelerate (DDP, mixed precision), AdamW with linear warm-up, gradient
clipping, atomic checkpoints with bit-exact resume, tqdm, CSV (+ TensorBoard) logs and sample images.

A stage is a `Task`: it builds its modules (seeded, so every process starts from the same weights) and lists what
to minimise as `Objective`s, each with its own AdamW optimiser and update period. Stage I has one objective (codec,
LoRA, conv_in, vae_reduction and distillation head together); stage II has two (the generator every 10th step,
the critic every step). Everything else happens here, in this order:

    accelerator = make_accelerator(config.train)        # DDP (nccl / gloo) and autocast from the environment
    task = Stage1Task(config, ...)                      # seeded build
    batches = Batches(dataset, ...)                     # deterministic data order, resumable
    train(accelerator, task, batches, out, steps, seed, resume="auto")

An objective's module is called once per update, through its DDP wrapper: `module(batch, step)` returns a dict of
scalar tensors whose "loss" is minimised (the rest is logged). Wrapping each objective in one module is what makes
DDP correct: one forward, one backward, every trainable parameter reduced across processes.

Checkpoints, OUT/checkpoints/step_00001000/ (the state after 1000 steps):
    model.safetensors, model_1.safetensors, ...   each objective's module (accelerate's save_state layout)
    optimizer.bin, optimizer_1.bin, ...            AdamW states
    random_states_<rank>.pkl                       accelerate's RNG states
    trainer_state_<rank>.json                      ours, per process: step, data position, every RNG state
    run.json                                       task, step, the ModelConfig; written last
A checkpoint is written as `.tmp-step_...` and renamed when complete (rename is atomic), so every folder named
step_* is whole: a run killed at any moment resumes (resume="auto") from the newest one and continues bit-exactly.
The learning rate is a function of the update count, so restoring the step restores the schedule. The last
`keep_last` checkpoints are kept. At the end the task writes its model (e.g. OUT/model, a `weights.save_model`
folder) and the paths are printed.
"""
from __future__ import annotations

import base64
import contextlib
import csv
import dataclasses
import json
import math
import os
import random
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..bitstream import atomic_write
from ..config import ModelConfig, TrainConfig, config_to_dict

CHECKPOINTS = "checkpoints"
STEP_PREFIX = "step_"
TMP_PREFIX = ".tmp-"


# ================================================================================================ what a stage provides
@dataclass
class Objective:
    """One AdamW optimiser and what it minimises."""

    name: str
    module: nn.Module  # forward(batch: dict, step: int) -> dict of scalar tensors; "loss" is minimised
    lr: float
    every: int = 1  # updated at the steps where step % every == 0
    params: list[nn.Parameter] | None = None  # default: the module's parameters that require grad

    def trainable(self) -> list[nn.Parameter]:
        return self.params if self.params is not None else [p for p in self.module.parameters() if p.requires_grad]


class Task:
    """A training stage: its modules, objectives, sample images and final model. Subclasses set `name` and
    `config` and build everything in __init__ (seeded by the caller)."""

    name: str = "task"
    config: ModelConfig

    def objectives(self) -> list[Objective]:
        raise NotImplementedError

    def to(self, device: torch.device) -> Task:
        """Move what the objectives' modules do not own (frozen teachers, loss networks) to the device."""
        return self

    @torch.no_grad()
    def samples(self, batch: dict) -> dict[str, torch.Tensor]:
        """Named image batches [B, 3, H, W] in [0, 1] to write side by side (rows), e.g. input and reconstruction."""
        return {}

    def save_model(self, folder: Path, provenance: dict) -> Path | None:
        """Write the trained model (main process only); None if the task has nothing to export. `provenance`
        (step, checkpoint) goes into the model folder's config.json."""
        return None


# ================================================================================================ data
def mix_seed(*values: int) -> int:
    """A 63-bit seed from integers (numpy's SeedSequence hashing: stable and well mixed)."""
    state = np.random.SeedSequence([v & 0xFFFFFFFFFFFFFFFF for v in values]).generate_state(1, np.uint64)
    return int(state[0]) & 0x7FFFFFFFFFFFFFFF


def transform_config(cfg: TrainConfig):
    """The per-step batch transform (onedc_lib.data.transforms) the config asks for: the release's mix of
    Resize(crop) / RandomCrop(crop) / RandomCrop(2 crop) over 2 crop random crops, or (batch_transform off) plain
    random crop x crop crops with a horizontal flip."""
    from ..data.transforms import TrainTransformConfig

    if cfg.batch_transform:
        return TrainTransformConfig.scaled(cfg.crop)
    return TrainTransformConfig(crop=cfg.crop, big_crop=cfg.crop, p_resize=0.0, p_crop=1.0, p_big_crop=0.0)


class _Steps(torch.utils.data.Sampler):
    """This process's batches of (step, index) from `start` on: step s is this process's slice of positions
    [s * B * W, (s + 1) * B * W) of the stream of epoch permutations."""

    def __init__(self, num_samples: int, batch_size: int, seed: int, rank: int, world_size: int, start: int):
        from ..data.transforms import StepBatchSampler

        self.order = StepBatchSampler(num_samples, batch_size * world_size, seed)  # the global order
        self.batch_size, self.rank, self.start = batch_size, rank, start

    def __iter__(self):
        step = self.start
        while True:
            mine = self.order.indices(step)[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
            yield [(step, index) for index in mine]
            step += 1


class Batches:
    """Deterministic, resumable training batches: the batch of step s is a function of (seed, s) only.

    The dataset is read as an endless stream of epoch permutations seeded by (seed, epoch) (all processes share
    it); step s takes the next `batch_size * world_size` positions, this process its own slice of them. Items are
    `(image, caption)` at any size; the batch transform (`transform_config`) runs in the DataLoader's collate
    (in its workers) with a generator seeded by (seed, rank, step). Hence the state is just `step`:
    `state_dict()` / `load_state_dict()`, and DataLoader workers change nothing.
    """

    def __init__(self, dataset, batch_size: int, transform, *, seed: int = 0, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0):
        """transform: a TrainTransformConfig, or an int crop size (plain random crops)."""
        from ..data.transforms import TrainTransformConfig

        if len(dataset) == 0:
            raise ValueError("the training dataset is empty")
        if isinstance(transform, int):
            transform = TrainTransformConfig(crop=transform, big_crop=transform, p_resize=0.0, p_crop=1.0,
                                             p_big_crop=0.0)
        self.dataset, self.batch_size, self.transform = dataset, batch_size, transform
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.num_workers = num_workers
        self.step = 0
        self._iterator = None

    def __next__(self) -> dict:
        from ..data.transforms import BatchCollate, StepDataset

        if self._iterator is None:
            loader = torch.utils.data.DataLoader(
                StepDataset(_Pairs(self.dataset)), num_workers=self.num_workers,
                batch_sampler=_Steps(len(self.dataset), self.batch_size, self.seed, self.rank, self.world_size,
                                     self.step),
                collate_fn=BatchCollate(self.transform, seed=mix_seed(self.seed, self.rank)),
                # its own generator: a DataLoader iterator draws a seed, which must not come from the global RNG
                # (a resumed run creates its iterator at another point of the RNG stream than the original run)
                generator=torch.Generator().manual_seed(mix_seed(self.seed, 3)))
            self._iterator = iter(loader)
        batch = next(self._iterator)
        assert batch.step == self.step, (batch.step, self.step)
        self.step += 1
        return {"image": batch.images, "caption": list(batch.captions), "branch": batch.branch}

    def __iter__(self):
        return self

    def fixed(self, count: int) -> dict:
        """The first `count` dataset items, centre-cropped: the same sample batch at every step and run."""
        from ..data.transforms import center_crop_transform

        crop = center_crop_transform(self.transform.crop)
        items = [_item(self.dataset[i % len(self.dataset)]) for i in range(count)]
        return {"image": torch.stack([crop(image) for image, _ in items]).contiguous(),
                "caption": [caption for _, caption in items]}

    def state_dict(self) -> dict:
        return {"step": self.step, "batch_size": self.batch_size, "world_size": self.world_size, "seed": self.seed,
                "transform": dataclasses.asdict(self.transform)}

    def load_state_dict(self, state: dict) -> None:
        current = self.state_dict()
        for key in ("batch_size", "world_size", "seed", "transform"):
            if state[key] != current[key]:
                raise ValueError(f"cannot resume the data order: the checkpoint has {key}={state[key]}, this run "
                                 f"{current[key]}")
        self.step = state["step"]
        self._iterator = None


def _item(value) -> tuple[torch.Tensor, str]:
    """A dataset item: (image, caption) or an image alone."""
    if isinstance(value, (tuple, list)):
        return value[0], (value[1] if len(value) > 1 else "")
    return value, ""


class _Pairs(torch.utils.data.Dataset):
    """Any dataset as (image, caption) items."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return _item(self.dataset[index])


# ================================================================================================ accelerate, RNG
def make_accelerator(cfg: TrainConfig, cpu: bool | None = None):
    """An Accelerator for this environment: one process, or the processes `accelerate launch` / torchrun started
    (nccl on GPUs, gloo on CPUs). Mixed precision from the config, off on CPU for fp16 (no CPU fp16 autocast)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedDataParallelKwargs

    if cpu is None:
        cpu = not torch.cuda.is_available()
    precision = cfg.mixed_precision
    if precision is False:  # YAML 1.1 reads an unquoted `no` as false
        precision = "no"
    if precision not in ("no", "bf16", "fp16"):
        raise ValueError(f"train.mixed_precision must be 'no', 'bf16' or 'fp16', not {precision!r}")
    if cpu and precision == "fp16":
        warnings.warn("fp16 autocast needs a GPU: training in fp32", stacklevel=2)
        precision = "no"
    # accelerate keeps one AcceleratorState per process; a second run in the same process (a notebook kernel, a
    # test session) with other settings must replace it. The process group (PartialState) is kept.
    AcceleratorState._reset_state()
    return Accelerator(cpu=cpu, mixed_precision=precision,
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)])


def psnr(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) of a batch in [0, 1] as the training logs report it: x_hat clamped, no gradient, float32."""
    mse = (x_hat.detach().float().clamp(0, 1) - x.float()).square().mean()
    return -10 * torch.log10(mse.clamp(min=1e-10))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _b64(tensor: torch.Tensor) -> str:
    return base64.b64encode(tensor.cpu().numpy().tobytes()).decode()


def _unb64(text: str) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(text), dtype=np.uint8).copy())


def rng_state() -> dict:
    """Every global RNG of this process as JSON-able values (python, numpy, torch CPU and CUDA)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss],
             "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
             "torch": _b64(torch.get_rng_state())}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])


@contextlib.contextmanager
def preserved_rng():
    """Whatever runs inside (sample images) leaves every global RNG as it found it."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def enable_gradient_checkpointing(module: nn.Module) -> int:
    """Gradient checkpointing in every diffusers model inside `module` (UNets, VAE); returns how many."""
    count = 0
    for sub in module.modules():
        if getattr(sub, "_supports_gradient_checkpointing", False) and hasattr(sub, "enable_gradient_checkpointing"):
            sub.enable_gradient_checkpointing()
            count += 1
    return count


def lr_at(base: float, update: int, warmup: int) -> float:
    """Linear warm-up over `warmup` updates (update 0 gets base / warmup), then constant."""
    return base * min(1.0, (update + 1) / warmup) if warmup > 0 else base


# ================================================================================================ checkpoints
def _step_of(path: Path) -> int:
    return int(path.name[len(STEP_PREFIX):])


def list_checkpoints(out: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under OUT/checkpoints, oldest first (temporary folders of unfinished writes are not)."""
    root = Path(out) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX)
             and p.name[len(STEP_PREFIX):].isdigit() and (p / "run.json").is_file()]
    return sorted(found, key=_step_of)


def latest_checkpoint(out: str | os.PathLike) -> Path | None:
    found = list_checkpoints(out)
    return found[-1] if found else None


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsynced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_json(path: Path, value: dict) -> None:
    atomic_write(path, json.dumps(value, indent=1).encode())


def save_checkpoint(accelerator, task: Task, batches: Batches, out: Path, step: int, keep_last: int) -> Path:
    """Every process calls this. Returns OUT/checkpoints/step_<step>, complete once this returns."""
    root = out / CHECKPOINTS
    final = root / f"{STEP_PREFIX}{step:08d}"
    tmp = root / f"{TMP_PREFIX}{final.name}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    _write_json(tmp / f"trainer_state_{accelerator.process_index}.json", {
        "step": step, "rank": accelerator.process_index, "world_size": accelerator.num_processes,
        "data": batches.state_dict(), "rng": rng_state()})
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _write_json(tmp / "run.json", {"task": task.name, "step": step, "world_size": accelerator.num_processes,
                                       "config": config_to_dict(task.config), "time": time.time()})
        _fsync_tree(tmp)
        old = None
        if final.exists():  # the same step written again (a resume from an older checkpoint): replace it whole
            old = root / f"{TMP_PREFIX}old-{final.name}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(root)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        for stale in list_checkpoints(out)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _resolve_resume(out: Path, resume: str | os.PathLike | None) -> Path | None:
    if resume is None or resume is False:
        return None
    if str(resume) == "auto":
        return latest_checkpoint(out)
    path = Path(resume)
    if not (path / "run.json").is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no run.json)")
    return path


def _check_resumable(task: Task, checkpoint: Path, world_size: int) -> dict:
    run = json.loads((checkpoint / "run.json").read_text())
    if run["task"] != task.name:
        raise ValueError(f"{checkpoint} is a checkpoint of {run['task']!r}, not of {task.name!r}")
    if run["world_size"] != world_size:
        raise ValueError(f"{checkpoint} was written by {run['world_size']} processes, this run has {world_size}: "
                         "resume with the same number of processes (the data order and RNG states are per process)")
    saved, current = dict(run["config"]), json.loads(json.dumps(config_to_dict(task.config)))
    saved_train, current_train = saved.pop("train", {}), current.pop("train", {})
    if saved != current:
        changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        raise ValueError(f"{checkpoint} was trained with a different model/loss config ({', '.join(changed)}); "
                         "start a new output folder to change them")
    changed = sorted(k for k in set(saved_train) | set(current_train) if saved_train.get(k) != current_train.get(k))
    if changed:
        warnings.warn(f"resuming {checkpoint} with changed train settings: {', '.join(changed)}", stacklevel=3)
    return run


def load_checkpoint(accelerator, task: Task, batches: Batches, checkpoint: Path) -> int:
    """Restores modules, optimisers, data position and every RNG; returns the step to continue from."""
    _check_resumable(task, checkpoint, accelerator.num_processes)
    accelerator.load_state(str(checkpoint))
    state = json.loads((checkpoint / f"trainer_state_{accelerator.process_index}.json").read_text())
    batches.load_state_dict(state["data"])
    set_rng_state(state["rng"])  # ours are authoritative (accelerate's restore is best effort)
    return int(state["step"])


def export_model(checkpoint: str | os.PathLike, folder: str | os.PathLike, prefix: str = "onedc.") -> Path:
    """A checkpoint's OneDC (the `prefix` part of its first module) as a `weights.save_model` folder."""
    from safetensors.torch import load_file

    from ..config import config_from_dict
    from ..models.onedc import OneDC
    from ..weights import save_model

    checkpoint = Path(checkpoint)
    run = json.loads((checkpoint / "run.json").read_text())
    state = {}
    for key, value in load_file(str(checkpoint / "model.safetensors")).items():
        key = key.removeprefix("module.")
        if key.startswith(prefix):
            state[key[len(prefix):]] = value
    if not state:
        raise ValueError(f"{checkpoint}/model.safetensors holds no {prefix}* weights")
    model = OneDC(config_from_dict(run["config"]))
    model.load_state_dict(state, strict=True)
    model.untrained_parts = ()
    return save_model(model, folder, {"checkpoint": str(checkpoint), "task": run["task"], "step": run["step"]})


# ================================================================================================ logs
class Log:
    """CSV rows of averaged values (OUT/log.csv, header widened when new names appear), TensorBoard if installed.
    On resume, rows after the resumed step are dropped (they belong to the run that was killed)."""

    def __init__(self, out: Path, enabled: bool, resume_step: int):
        self.path = out / "log.csv"
        self.enabled = enabled
        self.rows: list[dict] = []
        self.writer = None
        if not enabled:
            return
        if self.path.is_file():
            with open(self.path, newline="") as f:
                self.rows = [row for row in csv.DictReader(f) if int(row["step"]) <= resume_step]
        self._rewrite()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=resume_step + 1)
        except ImportError:
            pass

    def _columns(self) -> list[str]:
        names = dict.fromkeys(["step"])
        for row in self.rows:
            names.update(dict.fromkeys(row))
        return list(names)

    def _rewrite(self) -> None:
        atomic_write(self.path, _csv_text(self._columns(), self.rows).encode())

    def write(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: _fmt(v) for k, v in values.items()}}
        new_columns = any(k not in self._columns() for k in row)
        self.rows.append(row)
        if new_columns:
            self._rewrite()
        else:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self._columns(), lineterminator="\n").writerow(row)
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _fmt(value: float) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _csv_text(columns: list[str], rows: list[dict]) -> str:
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_samples(images: dict[str, torch.Tensor], path: Path) -> None:
    """Rows of the named batches (each [B, 3, H, W] in [0, 1], same size), one image per column, as one PNG."""
    from ..image_io import save_image

    rows = [torch.cat(list(batch.float().clamp(0, 1).cpu()), dim=-1) for batch in images.values()]
    width = max(r.shape[-1] for r in rows)
    rows = [F.pad(r, (0, width - r.shape[-1])) for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(torch.cat(rows, dim=-2), path)


# ================================================================================================ the loop
def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def train(accelerator, task: Task, batches: Batches, out: str | os.PathLike, steps: int, *,
          resume: str | os.PathLike | None = None, num_samples: int = 4) -> Path:
    """Train `task` for `steps` steps (counted from 0 of the run, not of this call); returns the last checkpoint."""
    cfg = task.config.train
    out = Path(out)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    main = accelerator.is_main_process

    # Optimisers, then one prepare per objective (DDP wrapping, device placement, autocast of forward).
    objectives = task.objectives()
    runs = []
    for objective in objectives:
        params = objective.trainable()
        if not params:
            raise ValueError(f"objective {objective.name!r} has no trainable parameters")
        optimizer = torch.optim.AdamW(params, lr=objective.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
        module, optimizer = accelerator.prepare(objective.module, optimizer)
        runs.append((objective, module, optimizer, params))
    task.to(accelerator.device)

    checkpoint = _resolve_resume(out, resume)
    if resume is None and latest_checkpoint(out) is not None:
        raise FileExistsError(f"{out} holds checkpoints of an earlier run (latest {latest_checkpoint(out).name}): "
                              "pass resume='auto' (--resume auto) to continue it, or choose another output folder")
    start = 0
    if checkpoint is not None:
        start = load_checkpoint(accelerator, task, batches, checkpoint)
        if main:
            print(f"resumed from {checkpoint} (step {start})", flush=True)
    last = checkpoint
    log = Log(out, main, start)
    sample_batch = batches.fixed(num_samples) if main and cfg.sample_every > 0 else None

    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    window_start, window_steps = time.perf_counter(), 0
    many = len(runs) > 1
    progress = _progress(main, start, steps)
    for step in range(start, steps):
        batch = _to_device(next(batches), accelerator.device)
        for objective, module, optimizer, params in runs:
            if step % objective.every:
                continue
            update = step // objective.every
            lr = lr_at(objective.lr, update, cfg.warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            losses = module(batch, step)
            accelerator.backward(losses["loss"])
            if cfg.grad_clip > 0:
                norm = accelerator.clip_grad_norm_(params, cfg.grad_clip)
            else:
                norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
            norm = float(norm)
            if not math.isfinite(norm):  # the norm is reduced across processes: every process stops here
                raise FloatingPointError(f"non-finite gradient norm of {objective.name!r} at step {step} "
                                         f"(losses: { {k: float(v) for k, v in losses.items()} }); last "
                                         f"checkpoint: {last}")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            prefix = f"{objective.name}/" if many else ""
            values = {**{k: float(v.detach()) for k, v in losses.items()}, "grad_norm": norm, "lr": lr}
            for key, value in values.items():
                sums[prefix + key] = sums.get(prefix + key, 0.0) + value
                counts[prefix + key] = counts.get(prefix + key, 0) + 1
        done = step + 1
        window_steps += 1
        if progress is not None:
            progress.update(1)
            key = f"{runs[0][0].name}/loss" if many else "loss"
            if key in sums:
                progress.set_postfix(loss=f"{sums[key] / counts[key]:.4f}", refresh=False)
        if done % max(cfg.log_every, 1) == 0 or done == steps:
            means = _reduce_means(accelerator, sums, counts)
            means["s_per_step"] = (time.perf_counter() - window_start) / window_steps
            log.write(done, means)
            sums, counts = {}, {}
            window_start, window_steps = time.perf_counter(), 0
        if sample_batch is not None and (done % cfg.sample_every == 0 or done == steps):
            _write_task_samples(task, sample_batch, accelerator.device, out / "samples" / f"step_{done:08d}.png")
        if done % max(cfg.ckpt_every, 1) == 0 or done == steps:
            last = save_checkpoint(accelerator, task, batches, out, done, cfg.keep_last)
    if progress is not None:
        progress.close()
    log.close()
    if last is None:  # nothing left to train: the resumed checkpoint is the result
        last = latest_checkpoint(out)
    if main:
        model_dir = task.save_model(out / "model", {"task": task.name, "step": steps, "checkpoint": str(last)})
        print(f"checkpoint: {last}", flush=True)
        if model_dir is not None:
            print(f"model: {model_dir}", flush=True)
    accelerator.wait_for_everyone()
    accelerator.free_memory()  # drop the prepared wrappers and optimisers (the task keeps its modules)
    return last


def _progress(main: bool, start: int, steps: int):
    if not main:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=steps, initial=start, dynamic_ncols=True, mininterval=1.0)


def _reduce_means(accelerator, sums: dict[str, float], counts: dict[str, int]) -> dict[str, float]:
    """Means over the window and over processes (every process has the same keys)."""
    keys = sorted(sums)
    if accelerator.num_processes > 1 and keys:
        packed = torch.tensor([[sums[k], counts[k]] for k in keys], dtype=torch.float64, device=accelerator.device)
        packed = accelerator.reduce(packed, reduction="sum").cpu()
        return {k: float(packed[i, 0] / packed[i, 1]) for i, k in enumerate(keys)}
    return {k: sums[k] / counts[k] for k in keys}


def _write_task_samples(task: Task, batch: dict, device: torch.device, path: Path) -> None:
    """Sample images (the task switches its modules to eval and back); every RNG is left as it was."""
    with preserved_rng(), torch.no_grad():
        images = task.samples(_to_device(batch, device))
    if images:
        write_samples(images, path)


# ================================================================================================ command lines
def parse_overrides(pairs: Sequence[str]) -> dict:
    """["train.stage1_lr=1e-4", "loss.lmbda=1.8"] -> {dotted: value}, values parsed as YAML scalars / lists."""
    import yaml

    overrides = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        overrides[key.strip()] = _number_or_self(yaml.safe_load(value))
    return overrides


def _number_or_self(value):
    """YAML 1.1 reads 1e-4 (no dot) as a string: numbers written that way are numbers here."""
    if isinstance(value, str):
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                pass
    return value


def common_arguments(parser) -> None:
    parser.add_argument("--preset", default="nano", help="preset name or YAML file (default: nano)")
    parser.add_argument("--out", required=True, help="output folder: checkpoints/, log.csv, samples/, model/")
    parser.add_argument("--steps", type=int, default=None, help="train until this many steps (default: preset)")
    parser.add_argument("--ckpt-every", type=int, default=None, help="checkpoint period in steps (default: preset)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", default=None,
                        help="'auto' (the newest complete checkpoint in OUT, if any) or a checkpoint folder")
    parser.add_argument("--data", default=None, help="image folder or CommonCatalog shards (default: the sample "
                        "photographs shipped with the package)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. --set train.batch_size=4 --set loss.lmbda=1.8 (repeatable)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")


def config_from_args(args, extra: dict | None = None) -> ModelConfig:
    from ..config import load_config

    overrides = parse_overrides(args.overrides)
    if args.ckpt_every is not None:
        overrides["train.ckpt_every"] = args.ckpt_every
    overrides.update(extra or {})
    return load_config(args.preset, overrides)


def dataset_from_args(data: str | None):
    """An image folder, CommonCatalog shards (.arrow / .parquet), or the sample photographs."""
    if data is None:
        from ..data.samples import sample_images

        images = list(sample_images().values())
        return [(image, "") for image in images], "the sample photographs shipped with the package"
    path = Path(data)
    if path.is_file() and path.suffix in (".arrow", ".parquet") or path.is_dir() and (
            any(path.rglob("*.arrow")) or any(path.rglob("*.parquet"))):
        from ..data.commoncatalog import CommonCatalog

        return CommonCatalog(path), f"CommonCatalog shards at {path}"
    from ..data.folders import ImageFolder

    return ImageFolder(path), f"images under {path}"


def set_threads(threads: int | None) -> None:
    if threads is not None:
        torch.set_num_threads(threads)


def replace_config(config: ModelConfig, **train_fields) -> ModelConfig:
    return dataclasses.replace(config, train=dataclasses.replace(config.train, **train_fields))
