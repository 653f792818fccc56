"""Bundling trained models into the package (onedc_lib/weights/<name>/), so that `onedc` works with no downloads,
and listing what is bundled (`onedc models`).

    python -m onedc_lib.bundle runs/nano_q3/model --name nano_q3 --runs runs/s0     # = onedc bundle
    onedc bundle runs/*/model --runs runs/s0        # several at once, each named after its preset
    onedc models --json

A bundled model is a `weights.load_model_folder` folder:

    config.json        the ModelConfig, the model id of the weights as they load, the training provenance of the
                       source folder, and "shared": the tensor files below that hold the rest of its tensors
    model.safetensors  its small tensors (float16 where lossless enough, see below)
    provenance.json    where it came from: source folder and model id, git commit, preset and overrides, steps of
                       every training run, their last logged numbers, data manifest sha256, float16 check, date
    ../_shared/<sha256>.safetensors   every tensor group (same module, LoRA or not) of 128 KiB or more, named by
                       the hash of its bytes: what several models share is stored once (the VAE of one stage 0;
                       the generator's base UNet where stage I keeps it frozen; the encoder side a z-only model
                       keeps from its --init model). A nano model is 8.3 MB in float16, 0.5 MB of it the VAE, 2.5 MB
                       the base UNet: six models fit in 40 MB only if they share the base UNet

float16: floating tensors within float16's range are stored in float16 when the bundled model decodes a sample
photograph within FP16_MIN_PSNR dB of the float32 source (each model decoding its own file); otherwise float32 is
kept and the check's numbers say why (with both models' PSNR against the photograph and bpp: whether the rate
point moved; `--dtype float16` bundles float16 anyway, with those numbers recorded). The model id (and so the id in every file it writes) is computed from the
float32 values the bundled tensors load into, and the bundle checks that a file it writes carries that id.

Writes are atomic: shared files are written whole under their final names, the model folder is written as
.tmp-<name>-<pid> and renamed into place; shared files no model refers to any more are removed.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import re
import shutil
import sys
from pathlib import Path

from .archives import sha256_bytes, sha256_file

__all__ = ["FP16_MIN_PSNR", "MAX_BUNDLE_BYTES", "bundle", "bundle_bytes", "model_infos"]

SHARED = "_shared"
MAX_BUNDLE_BYTES = 40_000_000  # issue 7: all bundled models together, in the package
FP16_MIN_PSNR = 45.0           # dB between the float16 and the float32 model's decoded sample photograph
SHARE_MIN_BYTES = 128 * 1024   # tensor groups this large go to _shared/ (smaller ones are not worth a file)
CHECK_IMAGE = "astronaut"      # a scikit-image sample photograph (onedc_lib.data.samples), 512 x 512
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _group(key: str) -> str:
    """The group of a state_dict key: its first three name parts, LoRA tensors apart (they are trained when the
    base they adapt is frozen)."""
    return ".".join(key.split(".")[:3]) + (":lora" if "lora_" in key else "")


def _stored(tensor, dtype: str):
    """The tensor as bundled: float16 when asked and representable (finite, |x| <= 65504), else unchanged."""
    import torch

    if dtype != "float16" or not tensor.is_floating_point() or tensor.dtype == torch.float16:
        return tensor
    if not torch.isfinite(tensor).all() or tensor.abs().max() > torch.finfo(torch.float16).max:
        return tensor
    return tensor.half()


def _load_bundled(config, tensors: dict):
    """The float32 model that `tensors` (possibly float16) load into: what load_model_folder will return."""
    from .models.onedc import OneDC

    model = OneDC(config)
    model.load_state_dict(tensors, strict=True)
    model.untrained_parts = ()
    return model.eval()


def _fp16_check(source, bundled, x=None) -> dict:
    """Both models compress and decompress the check image (x, [1, 3, H, W]; default the sample photograph);
    PSNR of one reconstruction against the other."""
    from .data.samples import sample_image
    from .eval.metrics import psnr

    name = "given image" if x is not None else f"{CHECK_IMAGE} (scikit-image)"
    x = sample_image(CHECK_IMAGE)[None] if x is None else x
    files = {name: m.compress(x).to_bytes() for name, m in (("float32", source), ("bundled", bundled))}
    pixels = x.shape[-2] * x.shape[-1]
    decoded = {name: m.decompress(files[name]) for name, m in (("float32", source), ("bundled", bundled))}
    return {"image": f"{name}, {x.shape[-2]}x{x.shape[-1]}",
            "psnr_db": psnr(decoded["float32"], decoded["bundled"]),
            "psnr_to_image_float32": psnr(x, decoded["float32"]), "psnr_to_image_bundled": psnr(x, decoded["bundled"]),
            "bpp_float32": 8 * len(files["float32"]) / pixels, "bpp_bundled": 8 * len(files["bundled"]) / pixels,
            "min_psnr_db": FP16_MIN_PSNR}


def _check_written_id(folder: Path, model_id: bytes) -> None:
    """The folder loads into the model with this id, and a file that model writes names it."""
    import torch

    from .bitstream import read_container
    from .weights import WeightsError, load_model_folder

    loaded = load_model_folder(folder)
    written = read_container(loaded.compress(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
                                             ).to_bytes()).model_id
    if not loaded.model_id == written == model_id:
        raise WeightsError(f"{folder}: bundled model id {model_id.hex()}, loaded {loaded.model_id.hex()}, "
                           f"written into its files {written.hex()}")


def _runs(folders) -> list[dict]:
    """Training runs (folders with a log.csv, or folders of such folders, as stage 0 writes them): task, steps,
    the last logged row."""
    runs = []
    for folder in folders:
        folder = Path(folder)
        found = [folder] if (folder / "log.csv").is_file() else sorted(p for p in folder.iterdir()
                                                                        if (p / "log.csv").is_file())
        if not found:
            raise FileNotFoundError(f"{folder}: no training run (log.csv) in it or in its subfolders")
        for run in found:
            with open(run / "log.csv", newline="") as f:
                rows = list(csv.DictReader(f))
            last = {k: float(v) for k, v in (rows[-1] if rows else {}).items() if v not in ("", None)}
            checkpoints = sorted((run / "checkpoints").glob("step_*/run.json"))
            task = json.loads(checkpoints[-1].read_text())["task"] if checkpoints else run.name
            runs.append({"path": str(run.resolve()), "task": task, "steps": int(last.get("step", 0)),
                         "last_logged": last})
    return runs


def _overrides(config) -> dict:
    """Dotted keys where the model's config differs from its preset's (what `--set` / overrides changed)."""
    from .config import config_to_dict, load_config, preset_names

    if config.name not in preset_names():
        return {"note": f"{config.name!r} is not a preset; the whole config is in config.json"}

    def flat(tree, prefix=""):
        out = {}
        for key, value in tree.items():
            if isinstance(value, dict):
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    mine, preset = flat(config_to_dict(config)), flat(config_to_dict(load_config(config.name)))
    return {k: v for k, v in mine.items() if preset.get(k) != v}


def bundle(source, name: str, dest=None, runs=(), description: str = "",
           manifest=Path(__file__).parent / "data" / "nano_manifest.json", dtype: str = "auto",
           check_image=None) -> dict:
    """Bundles the model folder `source` (weights.save_model) as `name`; returns its provenance.

    dest: the bundled-models folder (default weights.bundled_dir()); runs: training run folders to record
    (stage 0 parts, stage I, II; the source's parent is added when it is one); manifest: the data manifest whose
    sha256 is recorded; dtype: "auto" (float16 if the check passes), "float16" (even if not) or "float32";
    check_image: the float16 check's image ([1, 3, H, W] in [0, 1]; default the astronaut photograph).
    """
    from safetensors.torch import save

    from .bitstream import atomic_write
    from .eval.runner import git_commit
    from .weights import bundled_dir, load_model_folder

    if not NAME.match(name):
        raise ValueError(f"bad model name {name!r}: letters, digits, '_', '.', '-', not starting with '_' or '.'")
    if dtype not in ("auto", "float16", "float32"):
        raise ValueError(f"dtype must be auto, float16 or float32, got {dtype!r}")
    source, dest = Path(source), Path(dest) if dest is not None else bundled_dir()
    if dest.resolve() in (source.resolve(), *source.resolve().parents):
        raise ValueError(f"{source} is inside the bundled-models folder {dest}: bundle from the training output")
    reference = load_model_folder(source)
    source_meta = json.loads((source / "config.json").read_text())
    state = {k: v.detach().cpu().contiguous() for k, v in reference.state_dict().items()}

    # A VAE slot that holds a provisioned decoder exactly refers to it (not counted in the bundle, loaded from
    # the user cache) and keeps its dtypes.
    provisioned = reference.vae.provisioned_tensors()
    kept = {f"vae.{k}": v for k, v in provisioned[1].items()} if provisioned else {}
    check = None
    chosen = "float32" if dtype == "float32" else "float16"
    tensors = {k: _stored(v, chosen) for k, v in state.items()} | kept
    model = _load_bundled(reference.config, tensors)
    if chosen == "float16":
        check = _fp16_check(reference, model, check_image)
        if check["psnr_db"] < FP16_MIN_PSNR and dtype == "auto":
            chosen, tensors = "float32", state | kept
            model = _load_bundled(reference.config, tensors)
            check["decision"] = f"float32 kept: float16 decodes at {check['psnr_db']:.2f} dB < {FP16_MIN_PSNR} dB"
        else:
            check["decision"] = "float16"

    dest.mkdir(parents=True, exist_ok=True)
    (dest / SHARED).mkdir(exist_ok=True)
    groups: dict[str, dict] = {}
    for key, tensor in tensors.items():
        if key not in kept:
            groups.setdefault(_group(key), {})[key] = tensor
    own, shared = {}, []
    for group, members in sorted(groups.items()):
        size = sum(t.numel() * t.element_size() for t in members.values())
        if size < SHARE_MIN_BYTES:
            own.update(members)
            continue
        data = save(members, metadata={"format": "pt"})  # one entry: safetensors orders a metadata map at random
        digest = sha256_bytes(data)
        path = dest / SHARED / f"{digest[:32]}.safetensors"
        if not (path.is_file() and sha256_file(path) == digest):
            atomic_write(path, data)
        shared.append({"file": f"../{SHARED}/{path.name}", "group": group, "sha256": digest, "bytes": len(data)})

    config = reference.config
    provenance = {
        "name": name,
        "description": description or (f"{config.name}: lambda {config.loss.lmbda}, "
                                        f"{'z only' if config.codec.z_only else 'z and y'}, "
                                        f"stage {source_meta.get('provenance', {}).get('stage', '?')}"),
        "bundled": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "source": str(source.resolve()),
        "source_model_id": reference.model_id.hex(),
        "model_id": model.model_id.hex(),
        "preset": config.name,
        "overrides": _overrides(config),
        "lmbda": config.loss.lmbda,
        "z_only": config.codec.z_only,
        "dtype": chosen,
        "fp16_check": check,
        "training": source_meta.get("provenance", {}),
        "runs": _runs([*runs, *([source.parent] if (source.parent / "log.csv").is_file() else [])]),
        "data_manifest": {"path": str(manifest), "sha256": sha256_file(manifest)} if manifest else None,
    }
    from .config import config_to_dict

    meta = {"config": config_to_dict(config), "model_id": model.model_id.hex(), "dtype": chosen, "shared": shared,
            "provenance": source_meta.get("provenance", {})}
    if provisioned:
        meta["provisioned"] = [{"vae": provisioned[0], "tensors": len(kept)}]
    tmp = dest / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        atomic_write(tmp / "model.safetensors", save(own, metadata={"format": "pt"}))
        atomic_write(tmp / "config.json", (json.dumps(meta, indent=1) + "\n").encode())
        atomic_write(tmp / "provenance.json", (json.dumps(provenance, indent=1) + "\n").encode())
        _check_written_id(tmp, model.model_id)
        target, old = dest / name, dest / f".old-{name}-{os.getpid()}"
        if target.exists():
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    from .models.export import bundled_graph, save_graph

    # `onedc decompress` then decodes without importing diffusers (models/export.py)
    save_graph(model, bundled_graph(dest, model.config))
    _prune(dest)
    provenance["bytes"] = _model_bytes(dest / name)
    provenance["bundle_bytes"] = bundle_bytes(dest)
    return provenance


def _referenced(dest: Path) -> set[str]:
    names = set()
    for config in dest.glob("*/config.json"):
        if config.parent.name[:1] not in "._":
            names |= {Path(e["file"]).name for e in json.loads(config.read_text()).get("shared", [])}
    return names


def _prune(dest: Path) -> None:
    """Removes the shared files that no bundled model refers to, and the exported graphs that no bundled model's
    architecture (with this torch, diffusers and peft) uses."""
    from .config import config_from_dict
    from .models.export import BUNDLED_GRAPHS, graph_key
    from .weights import bundled_models

    keep = _referenced(dest)
    for path in (dest / SHARED).glob("*.safetensors"):
        if path.name not in keep:
            path.unlink()
    keys = {graph_key(config_from_dict(json.loads((dest / name / "config.json").read_text())["config"]))
            for name in bundled_models(dest)}
    for path in (dest / BUNDLED_GRAPHS).glob("*.pt"):
        if path.stem not in keys:
            path.unlink()


def _model_bytes(folder: Path) -> int:
    """Bytes a model loads: its own files, the shared files it refers to and its architecture's exported graph."""
    from .config import config_from_dict
    from .models.export import bundled_graph

    meta = json.loads((folder / "config.json").read_text())
    own = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    graph = bundled_graph(folder.parent, config_from_dict(meta["config"]))
    return (own + sum((folder / e["file"]).stat().st_size for e in meta.get("shared", []))
            + (graph.stat().st_size if graph.is_file() else 0))


def bundle_bytes(dest=None) -> int:
    """Bytes of every bundled model together (shared files once), as the package ships them."""
    from .weights import bundled_dir

    dest = Path(dest) if dest is not None else bundled_dir()
    if not dest.is_dir():
        return 0
    return sum(p.stat().st_size for p in dest.rglob("*") if p.is_file()
               and not any(part[:1] == "." for part in p.relative_to(dest).parts))


def model_infos(dest=None) -> list[dict]:
    """One dict per bundled model: name, preset, lmbda, z_only, bytes, model_id, dtype, default, description."""
    from .config import config_from_dict
    from .weights import DEFAULT_MODEL, bundled_dir, bundled_models

    dest = Path(dest) if dest is not None else bundled_dir()
    infos = []
    for name in bundled_models(dest):
        folder = dest / name
        meta = json.loads((folder / "config.json").read_text())
        config = config_from_dict(meta["config"])
        provenance = json.loads((folder / "provenance.json").read_text()) if (folder / "provenance.json").is_file() else {}
        infos.append({"name": name, "preset": config.name, "lmbda": config.loss.lmbda, "z_only": config.codec.z_only,
                      "bytes": _model_bytes(folder), "model_id": meta.get("model_id"),
                      "dtype": meta.get("dtype", "float32"), "default": name == DEFAULT_MODEL,
                      "description": provenance.get("description", "")})
    return infos


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="+", metavar="SRC_MODEL_DIR",
                        help="model folders written by training (weights.save_model), e.g. runs/*/model")
    parser.add_argument("--name", help="the bundled name (one source only; default: the model's preset, e.g. "
                                       "nano_q3); `onedc --model NAME` selects it")
    parser.add_argument("--runs", nargs="+", default=[], metavar="DIR",
                        help="training run folders to record (log.csv; a stage-0 folder of parts counts too); "
                             "the source's parent is recorded when it is a run")
    parser.add_argument("--description", default="", help="one line shown by `onedc models`")
    parser.add_argument("--dtype", choices=("auto", "float16", "float32"), default="auto",
                        help=f"auto: float16 when it decodes within {FP16_MIN_PSNR} dB of float32 (default)")
    parser.add_argument("--dest", metavar="DIR", help="bundled-models folder (default: onedc_lib/weights, or "
                                                      "$ONEDC_BUNDLED_DIR)")


def _names(sources, name: str | None) -> list[str]:
    """The bundled name of each source: `name` for a single source, else each model's preset (all different)."""
    if name is not None:
        if len(sources) != 1:
            raise ValueError("--name names one model; with several sources each is named after its preset")
        return [name]
    names = []
    for source in sources:
        try:
            names.append(json.loads((Path(source) / "config.json").read_text())["config"]["name"])
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"{source}: no model config to name it by ({e}); give --name") from None
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"several sources have the preset {', '.join(repeated)}: bundle them one by one with --name")
    return names


def run_from_args(args: argparse.Namespace) -> int:
    """`onedc bundle`: one line per model bundled; usage errors and unloadable models exit 2."""
    import torch

    from .weights import WeightsError

    torch.set_num_threads(1)  # small models; keeps the check reproducible and the machine free
    try:
        for source, name in zip(args.sources, _names(args.sources, args.name)):
            p = bundle(source, name, args.dest, args.runs, args.description, dtype=args.dtype)
            check = p["fp16_check"]
            shown = "" if check is None else (
                f"; check on {check['image']}: {check['psnr_db']:.2f} dB against float32 (PSNR to the image "
                f"{check['psnr_to_image_float32']:.2f} -> {check['psnr_to_image_bundled']:.2f} dB, "
                f"{check['bpp_float32']:.4f} -> {check['bpp_bundled']:.4f} bpp)")
            print(f"bundled {source} as {p['name']}: model id {p['model_id']}, {p['dtype']}{shown}; "
                  f"{p['bytes'] / 1e6:.2f} MB, all bundled models {p['bundle_bytes'] / 1e6:.2f} MB "
                  f"(limit {MAX_BUNDLE_BYTES / 1e6:.0f} MB)", flush=True)
    except (OSError, ValueError, WeightsError) as e:
        print(f"onedc: {e}", file=sys.stderr)
        return 2
    if p["bundle_bytes"] > MAX_BUNDLE_BYTES:
        print(f"onedc: warning: the bundled models exceed {MAX_BUNDLE_BYTES / 1e6:.0f} MB", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m onedc_lib.bundle", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
