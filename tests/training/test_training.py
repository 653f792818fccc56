"""The training loop and stages on the nano preset (CPU, tiny crops): a stage I and a stage II step, an overfitting
check, bit-exact resume after SIGKILL, 2-process DDP (gloo), checkpoint bookkeeping; the sd15 stage-I and
stage-II steps built from config are marked slow.

Every test runs with one torch thread (and subprocesses with OMP_NUM_THREADS=1): the machine is shared and
OpenMP oversubscription is very slow.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from onedc_lib.config import load_config
from onedc_lib.training import loop

REPO = Path(__file__).resolve().parents[2]
TINY = {"train.crop": 64, "train.batch_size": 2, "train.log_every": 1, "train.sample_every": 0,
        "train.warmup_steps": 1, "train.keep_last": 10}


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "CUDA_VISIBLE_DEVICES": ""}


def _samples(n: int = 2):
    from onedc_lib.data.samples import sample_images

    return [(image, "") for image in list(sample_images().values())[:n]]


def _run(task, config, out, steps, dataset=None, seed=0, resume=None):
    accelerator = loop.make_accelerator(config.train, cpu=True)
    batches = loop.Batches(dataset or _samples(), config.train.batch_size, config.train.crop, seed=seed)
    loop.seed_everything(loop.mix_seed(seed, 100))
    return loop.train(accelerator, task, batches, out, steps, resume=resume)


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before: dict, module: torch.nn.Module, prefix: str) -> bool:
    after = module.state_dict()
    return any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix))


def _log(out: Path) -> list[dict]:
    import csv

    with open(out / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------------ stage I / II steps
def test_stage1_step_trains_the_right_parts(tmp_path):
    from onedc_lib.training.stage1 import Stage1Task
    from onedc_lib.weights import load_model_folder

    config = load_config("nano", {**TINY, "train.unfreeze": []})  # the release's split (nano trains its base)
    loop.seed_everything(0)
    task = _quiet(Stage1Task, config, lpips="random")
    model = task.model
    before = _snapshot(model)
    head_before = _snapshot(task.step_module.head)
    last = _quiet(_run, task, config, tmp_path, steps=2)

    assert last == tmp_path / "checkpoints" / "step_00000002"
    rows = _log(tmp_path)
    assert [int(r["step"]) for r in rows] == [1, 2]
    for key in ("loss", "l1", "lpips", "bpp_y", "distill", "psnr", "grad_norm"):
        assert all(torch.isfinite(torch.tensor(float(r[key]))) for r in rows), key
    assert float(rows[0]["lpips"]) > 0 and float(rows[0]["bpp_y"]) > 0
    # trained: the codec, LoRA, conv_in, vae_reduction and the head; frozen: the VAE and the UNet's base layers
    assert _changed(before, model, "codec.enc.")
    assert _changed(before, model, "codec.semantic_adaptor.")
    assert any(_changed(before, model, k) for k in before if ".lora_A." in k or ".lora_B." in k)
    assert _changed(before, model, "generator.unet.conv_in.")
    assert _changed(before, model, "generator.unet.vae_reduction.")
    assert _changed(head_before, task.step_module.head, "")
    assert not _changed(before, model, "vae.")
    assert not any(_changed(before, model, k) for k in before if ".base_layer." in k)
    # the final model is a weights.save_model folder
    loaded = load_model_folder(tmp_path / "model")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    exported = loop.export_model(last, tmp_path / "exported")
    assert load_model_folder(exported).model_id == loaded.model_id


def test_stage2_step_updates_generator_every_tenth_step(tmp_path):
    from onedc_lib.training.stage2 import Stage2Task

    config = load_config("nano", {**TINY, "train.generator_every": 2})
    loop.seed_everything(0)
    task = _quiet(Stage2Task, config, lpips="off")
    model, critic = task.model, task.critic_step
    before, critic_before = _snapshot(model), _snapshot(critic)
    _quiet(_run, task, config, tmp_path, steps=3)

    rows = _log(tmp_path)
    # the critic learns every step, the generator at steps 0 and 2 (every 2nd here)
    assert all(r["critic/loss"] for r in rows)
    assert [bool(r["generator/loss"]) for r in rows] == [True, False, True]
    assert all(float(r[k]) >= 0 for r in rows if r["generator/loss"] for k in ("generator/dmd", "generator/gan"))
    assert all(0 <= float(r["critic/d_acc"]) <= 1 for r in rows)
    assert _changed(critic_before, critic, "fake_unet.")
    assert _changed(critic_before, critic, "classifier.")
    assert not _changed(before, model, "codec.")  # stage II: the codec is frozen
    assert not _changed(before, model, "vae.")
    assert _changed(before, model, "generator.unet.vae_reduction.")
    assert any(_changed(before, model, k) for k in before if ".lora_B." in k)
    assert not task.model.codec.training  # frozen codec stays in eval mode (hard rounding)
    ckpt = tmp_path / "checkpoints" / "step_00000003"
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "model_1.safetensors").is_file()
    assert (ckpt / "optimizer.bin").is_file() and (ckpt / "optimizer_1.bin").is_file()


def test_stage1_overfits_one_image(tmp_path):
    """30 steps on one 64-px crop: the loss falls clearly (to about 0.7x here; the random VAE and base UNet of an
    untrained nano model bound how far)."""
    from onedc_lib.training.stage1 import Stage1Task

    config = load_config("nano", {**TINY, "train.batch_size": 1, "train.stage1_lr": 5e-3, "train.warmup_steps": 5,
                                  "loss.lmbda_warmup_steps": 0, "loss.lmbda": 0.05, "train.unfreeze": []})
    loop.seed_everything(0)
    task = _quiet(Stage1Task, config, lpips="off")
    image = _samples(1)[0][0][:, 200:264, 200:264]
    _quiet(_run, task, config, tmp_path, steps=30, dataset=[(image, "")])
    losses = [float(r["loss"]) for r in _log(tmp_path)]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, (first, last)


# ------------------------------------------------------------------------------------------------ resume
def _stage1_cli(out: Path, steps: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "onedc_lib.training.stage1", "--preset", "nano", "--out", str(out),
            "--steps", str(steps), "--ckpt-every", "4", "--seed", "3", "--threads", "1", "--lpips", "off",
            "--set", "train.crop=64", "--set", "train.batch_size=2", "--set", "train.sample_every=0",
            "--set", "train.keep_last=10", "--set", "train.log_every=2", *extra]


def test_kill_and_resume_is_bit_exact(tmp_path):
    steps = 16
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    result = subprocess.run(_stage1_cli(straight, steps), env=_env(), cwd=REPO, capture_output=True, text=True, check=False,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"checkpoint: {straight / 'checkpoints' / 'step_00000016'}" in result.stdout

    process = subprocess.Popen(_stage1_cli(killed, steps), env=_env(), cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (killed / "checkpoints" / "step_00000004").is_dir() and process.poll() is None:
        assert time.time() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL  # killed mid-run, not finished
    done = loop.list_checkpoints(killed)
    assert done and loop._step_of(done[-1]) < steps

    result = subprocess.run(_stage1_cli(killed, steps, "--resume", "auto"), env=_env(), cwd=REPO,
                            capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed from {done[-1]}" in result.stdout
    a = straight / "checkpoints" / "step_00000016"
    b = killed / "checkpoints" / "step_00000016"
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k].view(torch.uint8), wb[k].view(torch.uint8))]
    assert not different, different[:5]
    oa, ob = (torch.load(p / "optimizer.bin", weights_only=True) for p in (a, b))
    assert all(torch.equal(x, y) for s, t in zip(oa["state"].values(), ob["state"].values())
               for x, y in zip(s.values(), t.values()))
    # the log of the resumed run continues the original one, rows of the killed part dropped (log windows that
    # divide the checkpoint period average the same steps)
    assert [r["loss"] for r in _log(straight)] == [r["loss"] for r in _log(killed)]


def test_stage2_trend_report(tmp_path):
    """First vs last fifth of a log's rows, against the expected direction of each stage-II quantity."""
    from onedc_lib.training.stage2 import trend_report

    lines = ["step,critic/denoising,critic/classifier,critic/d_acc,generator/l1,generator/lpips,generator/dmd"]
    for step in range(1, 11):  # the generator logged every other row, as with generator_every > log_every
        gen = f"{0.2 + 0.001 * step},{0.5 - 0.01 * step},{0.01 * step}" if step % 2 == 0 else ",,"
        lines.append(f"{step},{1.0 - 0.05 * step},{1.3 + 0.01 * step},{0.5},{gen}")
    (tmp_path / "log.csv").write_text("\n".join(lines) + "\n")
    report = trend_report(tmp_path / "log.csv")
    assert report["critic/denoising"]["met"] is True and report["critic/denoising"]["rows_each"] == 2
    assert report["critic/denoising"]["first"] == pytest.approx(0.925)
    assert report["critic/classifier"]["met"] is False  # rose: a critic that does not learn
    assert report["critic/d_acc"]["met"] is False  # flat at chance
    assert report["generator/l1"]["met"] is True and report["generator/l1"]["rows_each"] == 1  # +4%
    assert report["generator/lpips"]["met"] is True  # falling pixel terms are fine too
    assert report["generator/dmd"]["met"] is None and "generator/gan" not in report


def test_stage2_frozen_bf16_trains_and_saves_full_precision(tmp_path):
    """train.frozen_dtype=bfloat16: teacher, codec and the generator's base weights are held in bf16 under bf16
    autocast, the trainable parts stay float32 and train, and the model folder gets the frozen weights back
    from --init bit for bit (not rounded)."""
    from onedc_lib.training.stage1 import Pretrained
    from onedc_lib.training.stage2 import Stage2Task
    from onedc_lib.weights import build_model, load_model_folder, save_model

    init = save_model(_quiet(build_model, "nano"), tmp_path / "init")
    config = load_config("nano", {**TINY, "train.generator_every": 1, "train.mixed_precision": "bf16",
                                  "train.frozen_dtype": "bfloat16"})
    loop.seed_everything(0)
    task = _quiet(Stage2Task, config, Pretrained(init_model=str(init)), lpips="off")
    model = task.model
    assert {p.dtype for p in task.frozen.teacher.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.codec.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.vae.parameters()} == {torch.float32}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(p.dtype == torch.float32 for p in trainable.values())
    assert all(p.dtype == torch.float32 for p in task.critic_step.parameters())
    _quiet(_run, task, config, tmp_path / "run", steps=1)
    row = _log(tmp_path / "run")[0]
    assert all(torch.isfinite(torch.tensor(float(v))) for k, v in row.items() if k.endswith("loss"))
    saved, initial = load_model_folder(tmp_path / "run" / "model").state_dict(), load_model_folder(init).state_dict()
    assert all(v.dtype == torch.float32 for v in saved.values())
    assert all(torch.equal(saved[k], initial[k]) for k in initial if k not in trainable)
    assert any(not torch.equal(saved[k], initial[k]) for k in trainable)
    with pytest.raises(ValueError, match="autocast"):
        _quiet(Stage2Task, load_config("nano", {"train.frozen_dtype": "bfloat16", "train.mixed_precision": "no"}))
    with pytest.raises(ValueError, match="frozen_dtype"):
        _quiet(Stage2Task, load_config("nano", {"train.frozen_dtype": "int8"}))


def test_stage2_resume_is_bit_exact(tmp_path):
    """Stage II (two optimisers, the generator every 2nd step) stopped after step 3 and resumed == straight."""
    from onedc_lib.training.stage2 import Stage2Task

    config = load_config("nano", {**TINY, "train.generator_every": 2, "train.ckpt_every": 3})

    def run(out, steps, resume=None):
        loop.seed_everything(0)
        task = _quiet(Stage2Task, config, lpips="off")
        _quiet(_run, task, config, out, steps, resume=resume)
        return {f"{o.name}.{k}": v for o in task.objectives() for k, v in o.module.state_dict().items()}

    straight = run(tmp_path / "a", 5)
    run(tmp_path / "b", 3)
    resumed = run(tmp_path / "b", 5, resume="auto")
    assert not [k for k in straight if not torch.equal(straight[k], resumed[k])]


@pytest.mark.parametrize("part", ["vae", "tokenizer", "teacher"])
def test_stage0_parts_train_and_resume_bit_exactly(tmp_path, part):
    from onedc_lib.training import stage0

    config = load_config("nano", {**TINY, "train.stage0_crop": 64, "train.stage0_batch_size": 2,
                                  "train.ckpt_every": 2})

    def run(out, steps, resume=None):
        return _quiet(stage0.train_part, part, config, out, steps, seed=0, resume=resume, lpips="off")

    straight = run(tmp_path / "a", 4)
    run(tmp_path / "b", 2)
    resumed = run(tmp_path / "b", 4, resume="auto")
    assert straight.name == resumed.name == stage0.FILES["teacher_unet" if part == "teacher" else part]
    a, b = load_file(str(straight)), load_file(str(resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = _log(tmp_path / "a" / part)
    assert len(rows) == 4 and all(torch.isfinite(torch.tensor(float(r["loss"]))) for r in rows)
    if part == "vae":  # the latent space is rescaled so that latent x 0.18215 has unit variance on the data
        from onedc_lib.models.vae import VAE

        images = torch.stack([image[:, :64, :64] for image, _ in _samples(4)])
        vae = VAE.from_pretrained_local(straight, config.vae)
        assert 0.5 < float(vae.encode(images * 2 - 1).std()) < 2.0


def test_stage0_has_no_vae_to_train_for_a_provisioned_slot(tmp_path):
    from onedc_lib.training import stage0

    config = load_config("nano_sr")
    assert stage0.trainable_parts(config) == ("tokenizer", "teacher", "generator")
    assert stage0.trainable_parts(load_config("nano"))[0] == "vae"
    with pytest.raises(ValueError, match="no VAE to train"):
        stage0.train_part("vae", config, tmp_path, 1, lpips="off")


def test_training_psnr_equals_scikit_image():
    """The one PSNR of the training logs (loop.psnr, all stages) against scikit-image, x_hat clamped to [0, 1]."""
    from skimage.metrics import peak_signal_noise_ratio

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16, generator=g)
    x_hat = x + 0.1 * torch.randn(x.shape, generator=g)
    expected = peak_signal_noise_ratio(x.double().numpy(), x_hat.clamp(0, 1).double().numpy(), data_range=1.0)
    assert float(loop.psnr(x_hat, x)) == pytest.approx(expected, abs=1e-4)


def test_incomplete_checkpoints_are_ignored(tmp_path):
    root = tmp_path / "checkpoints"
    for name, complete in (("step_00000004", True), ("step_00000008", True), (".tmp-step_00000012", True),
                           ("step_00000016", False)):
        (root / name).mkdir(parents=True)
        if complete:
            (root / name / "run.json").write_text("{}")
    assert [p.name for p in loop.list_checkpoints(tmp_path)] == ["step_00000004", "step_00000008"]
    assert loop.latest_checkpoint(tmp_path) == root / "step_00000008"
    assert loop.latest_checkpoint(tmp_path / "nothing") is None


def test_resume_refuses_a_different_model(tmp_path):
    from onedc_lib.training.stage1 import Stage1Task

    config = load_config("nano", TINY)
    loop.seed_everything(0)
    _quiet(_run, _quiet(Stage1Task, config, lpips="off"), config, tmp_path, steps=1)
    other = load_config("nano", {**TINY, "loss.lmbda": 1.8})
    loop.seed_everything(0)
    with pytest.raises(ValueError, match="different model/loss config.*loss"):
        _quiet(_run, _quiet(Stage1Task, other, lpips="off"), other, tmp_path, steps=2, resume="auto")


# ------------------------------------------------------------------------------------------------ data order
def test_batches_are_deterministic_resumable_and_sharded():
    from onedc_lib.data.transforms import TrainTransformConfig

    data = [(torch.rand(3, 80 + 8 * i, 96), f"c{i}") for i in range(5)]

    def take(batches, n):
        return [next(batches) for _ in range(n)]

    mix = TrainTransformConfig.scaled(32)  # the release's per-step mix, at 32 / 64 px
    a = loop.Batches(data, 4, mix, seed=1)
    first = take(a, 3)
    state = a.state_dict()
    rest = take(a, 6)
    b = loop.Batches(data, 4, mix, seed=1, num_workers=2)  # workers change nothing
    b.load_state_dict(json.loads(json.dumps(state)))
    assert all(torch.equal(x["image"], y["image"]) and x["caption"] == y["caption"] for x, y in zip(rest, take(b, 6)))
    assert len({batch["branch"] for batch in first + rest}) > 1  # one random branch per step
    # each epoch visits every image once; two processes split the global batch between them
    single = loop.Batches(data, 2, 64, seed=1)
    plain = [caption for _ in range(5) for caption in next(single)["caption"]]
    assert sorted(plain[:5]) == [f"c{i}" for i in range(5)]
    ranks = [loop.Batches(data, 1, 64, seed=1, rank=r, world_size=2) for r in (0, 1)]
    assert [next(r)["caption"][0] for _ in range(5) for r in ranks] == plain
    with pytest.raises(ValueError, match="world_size"):
        loop.Batches(data, 4, mix, seed=1, world_size=2).load_state_dict(state)


# ------------------------------------------------------------------------------------------------ DDP
DDP_WORKER = textwrap.dedent("""
    import sys, warnings
    import torch
    from safetensors.torch import save_file
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    from onedc_lib.config import load_config
    from onedc_lib.data.samples import sample_images
    from onedc_lib.training import loop
    from onedc_lib.training.stage1 import Stage1Task
    from onedc_lib.training.stage2 import Stage2Task

    out = sys.argv[1]
    config = load_config("nano", {"train.crop": 64, "train.batch_size": 1, "train.sample_every": 0,
                                  "train.warmup_steps": 1, "train.log_every": 1, "train.generator_every": 1})
    data = [(im, "") for im in sample_images().values()]
    for name, Task in (("stage1", Stage1Task), ("stage2", Stage2Task)):
        accelerator = loop.make_accelerator(config.train, cpu=True)
        rank = accelerator.process_index
        loop.seed_everything(0)
        task = Task(config, lpips="off")
        loop.seed_everything(loop.mix_seed(0, 100 + rank))  # different noise per process
        batches = loop.Batches(data, 1, 64, seed=0, rank=rank, world_size=accelerator.num_processes)
        first = next(loop.Batches(data, 1, 64, seed=0, rank=rank, world_size=accelerator.num_processes))["image"]
        loop.train(accelerator, task, batches, f"{out}/{name}", 2)
        state = {f"{i}.{k}": v.detach().contiguous() for i, o in enumerate(task.objectives())
                 for k, v in o.module.state_dict().items()}
        state["__first_batch"] = first.contiguous()
        save_file(state, f"{out}/{name}_rank{rank}.safetensors")
    print("world", accelerator.num_processes, accelerator.distributed_type)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_keeps_ranks_identical(tmp_path):
    """torchrun with 2 CPU processes (gloo): after 2 steps of stage I and of stage II (generator and critic)
    both ranks hold the same parameters bit for bit, although they trained on different images."""
    worker = tmp_path / "worker.py"
    worker.write_text(DDP_WORKER)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
         str(_free_port()), str(worker), str(tmp_path)],
        env=_env(), cwd=REPO, capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "world 2 DistributedType.MULTI_CPU" in result.stdout
    for stage in ("stage1", "stage2"):
        r0, r1 = (load_file(str(tmp_path / f"{stage}_rank{r}.safetensors")) for r in (0, 1))
        assert not torch.equal(r0.pop("__first_batch"), r1.pop("__first_batch"))  # different images per rank
        assert r0.keys() == r1.keys()
        different = [k for k in r0 if not torch.equal(r0[k], r1[k])]
        assert not different, (stage, different[:5])
        # what the checkpoint holds is that state (accelerate saves the module inside the DDP wrapper)
        ckpt = load_file(str(tmp_path / stage / "checkpoints" / "step_00000002" / "model.safetensors"))
        assert all(torch.equal(ckpt[k[2:]], v) for k, v in r0.items() if k.startswith("0."))
        rows = _log(tmp_path / stage)
        assert len(rows) == 2


# ------------------------------------------------------------------------------------------------ sd15 (slow)
@pytest.mark.slow
def test_sd15_stage1_step_builds_from_config():
    """The paper-scale stage-I step from config with random weights: one forward/backward at 64x64 on CPU."""
    from onedc_lib.training.stage1 import Stage1Task

    config = load_config("sd15", {"train.gradient_checkpointing": True, "train.mixed_precision": "no"})
    loop.seed_everything(0)
    task = _quiet(Stage1Task, config, lpips="random")
    step = task.step_module.train()
    x = torch.rand(1, 3, 64, 64)
    losses = step({"image": x, "caption": [""]}, step=0)
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"])
    model = task.model
    assert model.codec.enc.pix_emb.weight.grad is not None
    assert model.generator.unet.conv_in.weight.grad is not None
    assert any(p.grad is not None for n, p in model.generator.named_parameters() if "lora_B" in n)
    assert all(p.grad is None for p in model.vae.parameters())
    assert all(p.grad is None for n, p in model.generator.named_parameters() if "base_layer" in n)
    assert task.step_module.head.mlp_head[-1].weight.grad is not None
    trainable = sum(p.numel() for p in step.parameters() if p.requires_grad)
    assert 450e6 < trainable < 600e6  # codec 394 M + LoRA 67 M + conv_in / vae_reduction 2 M + head 60 M


@pytest.mark.slow
def test_sd15_stage2_step_builds_from_config():
    """The paper-scale stage-II step from config with random weights (generator, frozen teacher, trainable fake
    score, GAN classifier): one critic and one generator forward/backward at 64x64 on CPU under bf16 autocast,
    the frozen networks held in bf16 (train.frozen_dtype; about 13 GB instead of 17 GB in float32).
    Each backward reaches exactly its objective's trainable parameters."""
    from onedc_lib.training.stage2 import Stage2Task, hold_frozen_in

    config = load_config("sd15", {"train.frozen_dtype": "bfloat16"})  # sd15: bf16 autocast, checkpointing
    loop.seed_everything(0)
    task = _quiet(Stage2Task, config, lpips="random")
    generator, critic, teacher = task.generator_step.train(), task.critic_step.train(), task.frozen.teacher
    assert hold_frozen_in(torch.bfloat16, teacher, task.model.codec, task.model.generator) == 0  # all cast
    frozen_bf16 = sum(p.numel() for p in generator.parameters() if p.dtype == torch.bfloat16)
    assert 1.2e9 < frozen_bf16 < 1.3e9  # codec 394 M + base UNet 860 M (the VAE stays float32)
    assert 55e6 < sum(p.numel() for p in generator.parameters() if p.requires_grad) < 75e6  # LoRA 67 M + 2 M
    assert 850e6 < sum(p.numel() for p in critic.parameters() if p.requires_grad) < 950e6  # UNet 860 M + head

    def with_grad(module):
        return {n for n, p in module.named_parameters() if p.grad is not None}

    def trainable(module):
        return {n for n, p in module.named_parameters() if p.requires_grad}

    batch = {"image": torch.rand(1, 3, 64, 64), "caption": [""]}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = critic(batch, step=1)  # a critic-only step: fake latents from the generator without gradient
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"]) and float(losses["denoising"]) > 0 and float(losses["classifier"]) > 0
    assert with_grad(critic) == trainable(critic)
    assert not with_grad(generator) and not with_grad(teacher)
    critic.zero_grad(set_to_none=True)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = generator(batch, step=0)  # DMD (teacher with CFG 1.75 vs fake score) + GAN + pixel terms
    losses["loss"].backward()
    assert all(torch.isfinite(losses[k]) for k in ("loss", "dmd", "gan", "l1", "lpips"))
    assert with_grad(generator) == trainable(generator)
    assert any(".lora_B." in n for n in with_grad(generator)) and "onedc.generator.unet.conv_in.weight" in \
        with_grad(generator)
    assert not with_grad(critic) and not with_grad(teacher)


def test_set_overrides_parse_numbers():
    parsed = loop.parse_overrides(["train.stage1_lr=1e-4", "train.betas=[0.9, 0.99]", "loss.lmbda=2",
                                   "train.mixed_precision=bf16"])
    assert parsed == {"train.stage1_lr": 1e-4, "train.betas": [0.9, 0.99], "loss.lmbda": 2,
                      "train.mixed_precision": "bf16"}
    assert load_config("nano", parsed).train.stage1_lr == 1e-4
    with pytest.raises(ValueError, match="key=value"):
        loop.parse_overrides(["train.stage1_lr"])


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_bf16_autocast_with_gradient_checkpointing(tmp_path, stage):
    """The sd15 settings (bf16 autocast, gradient checkpointing) on the nano model: a step of each objective."""
    from onedc_lib.training.stage1 import Stage1Task
    from onedc_lib.training.stage2 import Stage2Task

    config = load_config("nano", {**TINY, "train.mixed_precision": "bf16", "train.gradient_checkpointing": True,
                                  "train.generator_every": 1})
    loop.seed_everything(0)
    task = _quiet(Stage1Task if stage == "stage1" else Stage2Task, config, lpips="off")
    assert task.model.generator.unet.is_gradient_checkpointing
    _quiet(_run, task, config, tmp_path, steps=1)
    row = _log(tmp_path)[0]
    losses = [float(v) for k, v in row.items() if k.endswith("loss")]
    assert losses and all(torch.isfinite(torch.tensor(v)) for v in losses)
