"""Resolving and loading weights from local files only: our model folders, the released OneDC checkpoint folder,
and the separately distributed parts (SD-2.1 VAE). Safetensors or weights_only torch loads, never the hub.

A model folder of ours holds `config.json` (the ModelConfig) and `model.safetensors` (the whole OneDC state_dict).
A bundled model (`onedc_lib.bundle`) may keep part of its tensors in shared files that `config.json` lists under
"shared" (the frozen VAE and base UNet are the same in every nano model and are stored once), and may store them
in float16; they load into the float32 model, whose id is computed from the loaded values.
"""
from __future__ import annotations

import io
import json
import os
import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .bitstream import atomic_write
from .config import config_from_dict, config_to_dict, load_config
from .paths import BUNDLED_DIR, BUNDLED_DIR_ENV, bundled_dir, cache_root  # noqa: F401 (public names here too)
from .paths import RELEASE_DEFAULT_PRESET, RELEASE_PRESET_ENV, RELEASE_VAE_ENV

DEFAULT_MODEL = "nano_sr_q3"
FAMILY_MEMBER = re.compile(r"(?P<family>.+)_(?:zonly|q\d+)")  # a family's rate points: <family>_zonly, <family>_q<N>


def family_of(name: str | os.PathLike) -> str | None:
    """The model family of a model name or folder (`nano_sr_q3` -> `nano_sr`), None if it is no rate point."""
    match = FAMILY_MEMBER.fullmatch(Path(name).name)
    return match["family"] if match else None


def family_members(family: str, names) -> list[str]:
    """The rate points of `family` among `names` (not those of another family that extends its name, as nano_sr
    extends nano), lowest rate first."""
    return sorted((n for n in names if family_of(n) == family), key=_rate_rank)


def default_family() -> str:
    """The family of DEFAULT_MODEL: what the demo, the rate explorer and `onedc eval-nano` show by default."""
    family = family_of(DEFAULT_MODEL)
    if family is None:
        raise ValueError(f"DEFAULT_MODEL {DEFAULT_MODEL!r} is not a rate point <family>_zonly / <family>_q<N>")
    return family


class WeightsError(ValueError):
    """Missing, unreadable or mismatched weights, with what to do about it."""


def build_model(preset: str, seed: int | None = 0, **overrides):
    """A model built from a preset with seeded random weights (marked untrained); overrides are dotted keys."""
    from .models.onedc import OneDC

    if seed is not None:
        torch.manual_seed(seed)
    return OneDC(load_config(preset, overrides)).eval()


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise WeightsError(f"missing weights file {path}")
    try:
        return load_file(str(path))
    except Exception as error:  # safetensors raises several types for corrupt files
        raise WeightsError(f"{path} is not a readable safetensors file ({error})") from None


def _load_strict(module: torch.nn.Module, state_dict: dict, what: str) -> None:
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[:4]
        raise WeightsError(f"{what} does not fit this model: " + " ".join(first)) from None


def save_model(model, folder: str | os.PathLike, provenance: dict | None = None) -> Path:
    """Writes config.json and model.safetensors atomically (each file replaced whole, never half written)."""
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(folder / "model.safetensors", save(tensors, metadata={"format": "pt"}))
    meta = {"config": config_to_dict(model.config), "model_id": model.model_id.hex(), "provenance": provenance or {}}
    atomic_write(folder / "config.json", json.dumps(meta, indent=1).encode())
    return folder


def load_model_folder(folder: str | os.PathLike, decode_only: bool = False):
    """A folder written by save_model. decode_only: see load_model."""
    from .models.onedc import OneDC

    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise WeightsError(f"{folder} is not a model folder (config.json is missing) nor a release checkpoint "
                           "folder (model.safetensors and model_1.safetensors)")
    try:
        meta = json.loads(config_path.read_text())
        config = config_from_dict(meta["config"])
    except (ValueError, KeyError, TypeError) as error:
        raise WeightsError(f"{config_path} is not a valid model config ({error})") from None
    if "release" in meta:  # written by `onedc import-release`: it references the release's files
        return load_imported(folder, meta)
    tensors = _read_safetensors(folder / "model.safetensors")
    for entry in meta.get("shared", []):
        shared = _read_safetensors(folder / entry["file"])
        overlap = tensors.keys() & shared.keys()
        if overlap:
            raise WeightsError(f"{folder}: {entry['file']} repeats tensors of model.safetensors "
                               f"({sorted(overlap)[0]}, ...)")
        tensors.update(shared)
    for entry in meta.get("provisioned", []):  # a pretrained VAE-slot decoder from the user cache (bundle.py)
        from .models.pixel_vae import provisioned_state_dict

        tensors.update({f"vae.{k}": v for k, v in provisioned_state_dict(entry["vae"]).items()})
    what = f"{folder}/model.safetensors" + (" with its shared files" if meta.get("shared") else "")
    model = _decoder(config, tensors, what) if decode_only else None
    if model is None:
        model = OneDC(config)
        _load_strict(model, tensors, what)
        if decode_only:  # exported into the user cache: the next decode-only load needs no diffusers
            from .models.export import save_graph

            save_graph(model)
    saved_id = meta.get("model_id")
    if saved_id is not None and saved_id != model.model_id.hex():
        raise WeightsError(
            f"{folder}: model.safetensors and config.json do not belong together: config.json names model "
            f"{saved_id}, they make model {model.model_id.hex()} (a file is corrupt or was replaced)"
        )
    model.untrained_parts = ()
    return model.eval()


def _decoder(config, tensors: dict[str, torch.Tensor], what: str):
    """A decode-only model with the exported graph of its architecture, or None where no graph is at hand. The
    tensors are cast as loading them into the whole (float32) model would, so its model id is the same."""
    from .models.export import find_graph
    from .models.onedc import OneDC, model_id_of

    tensors = {k: v.to(torch.float32) if v.is_floating_point() else v for k, v in tensors.items()}
    graph = find_graph(config, tensors)
    if graph is None:
        return None
    model = OneDC(config, decode_only=True)
    own = model.state_dict().keys()
    _load_strict(model, {k: v for k, v in tensors.items() if k in own}, what)
    model.decoder_graph = graph
    model._model_id = model_id_of(config, tensors)
    return model.eval()


def bundled_models(folder: str | os.PathLike | None = None) -> list[str]:
    """Names of the bundled models: folders of `folder` (default bundled_dir()) with a config.json, except names
    starting with "." or "_" (temporary folders, shared tensor files)."""
    folder = Path(folder) if folder is not None else bundled_dir()
    return sorted(p.name for p in folder.glob("*") if p.name[:1] not in "._" and (p / "config.json").is_file())


def load_model(name_or_path: str | None = None, decode_only: bool = False):
    """None: the default bundled model. Else a bundled model name, a model folder, a release checkpoint folder
    (load_release_folder: its VAE and preset from the environment), or a preset name (random).

    decode_only: a model that decodes with the exported graph of its generator and VAE decoder (models/export.py)
    and imports neither diffusers nor peft; it cannot compress. Where no graph exists yet, the whole model (which
    decodes the same images), its graph exported into the user cache now so that later loads are fast; presets
    (random weights, built by diffusers anyway) always give the whole model."""
    name = name_or_path or DEFAULT_MODEL
    if name in bundled_models():
        return load_model_folder(bundled_dir() / name, decode_only)
    if Path(name).is_dir():
        if is_release_folder(name):
            return load_release_folder(name)
        return load_model_folder(name, decode_only)
    from .config import preset_names

    if name in preset_names():
        warnings.warn(
            f"no trained weights for {name!r}: using seeded random weights (UNTRAINED; reconstructions are "
            "meaningless, bitstreams are real)", stacklevel=2,
        )
        return build_model(name)
    raise WeightsError(
        f"unknown model {name!r}: not a bundled model ({', '.join(bundled_models()) or 'none'}), "
        f"not a model folder, not a preset ({', '.join(preset_names())})"
    )


def load_release_checkpoint(folder: str | os.PathLike, vae: str | os.PathLike | None = None,
                            preset: str = "sd15"):
    """The released OneDC folder: model.safetensors (generator with LoRA) and model_1.safetensors (codec), strict.

    The SD-2.1 VAE is not in that folder: pass its local diffusers folder or file as `vae`; without it an
    untrained VAE is built from config and a warning says so.
    """
    from .models.vae import VAE

    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsError(f"release checkpoint folder {folder} does not exist")
    for name in ("model.safetensors", "model_1.safetensors"):  # before building a model of a billion parameters
        if not (folder / name).is_file():
            raise WeightsError(f"{folder} is not a release checkpoint folder: {name} is missing")
    model = build_model(preset, seed=0)  # seeded: without a VAE, the untrained one (and the model id) repeat
    _load_strict(model.generator.unet, _read_safetensors(folder / "model.safetensors"), "model.safetensors")
    _load_strict(model.codec, _read_safetensors(folder / "model_1.safetensors"), "model_1.safetensors")
    untrained = ["vae"]
    if vae is not None:
        model.vae = VAE.from_pretrained_local(vae, model.config.vae)
        untrained = []
    else:
        warnings.warn(
            "no SD-2.1 VAE given (vae=PATH): the VAE is UNTRAINED, built from config; decoded images will be "
            "meaningless", stacklevel=2,
        )
    model.untrained_parts = tuple(untrained)
    model.weights_changed()
    return model.eval()

# ------------------------------------------------------------------ release checkpoint folders by name
# A release checkpoint folder holds model.safetensors (the generator UNet with LoRA) and model_1.safetensors (the
# codec); the SD-2.1 VAE comes separately. Named as a model (--model FOLDER), it takes its VAE from --vae /
# $ONEDC_RELEASE_VAE and its architecture from --release-preset / $ONEDC_RELEASE_PRESET (paths.py). A folder written
# by `onedc import-release` (release_checkpoint.py) references those files instead of holding tensors.
RELEASE_FILES = ("model.safetensors", "model_1.safetensors")  # generator, codec


def is_release_folder(path: str | os.PathLike) -> bool:
    """A folder with the release's two files and no config.json of ours."""
    path = Path(path)
    return path.is_dir() and not (path / "config.json").is_file() and all((path / n).is_file() for n in RELEASE_FILES)


def check_safetensors(path: Path) -> None:
    """The header parses and the file is as long as its tensors say: a truncated download is refused before a
    model of a billion parameters is built."""
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length)) if length < 100_000_000 else None
    except (OSError, struct.error, ValueError) as error:
        raise WeightsError(f"{path} is not a readable safetensors file ({error})") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path} is not a readable safetensors file (bad header)")
    end = max((e["data_offsets"][1] for k, e in header.items() if k != "__metadata__"), default=0)
    size, expected = path.stat().st_size, 8 + length + end
    if size < expected:
        raise WeightsError(f"{path} is truncated: {size} bytes, its header describes {expected} (an interrupted "
                           "download? fetch it again)")


def release_vae_path(vae: str | os.PathLike | None) -> Path:
    """The SD-2.1 VAE of a release checkpoint: `vae`, else $ONEDC_RELEASE_VAE; it must exist."""
    vae = vae if vae is not None else os.environ.get(RELEASE_VAE_ENV)
    if not vae:
        raise WeightsError(f"a release checkpoint needs the SD-2.1 VAE, which it does not contain: pass --vae DIR "
                           f"(a diffusers AutoencoderKL folder or a weights file) or set ${RELEASE_VAE_ENV}")
    path = Path(vae)
    if not path.exists():
        raise WeightsError(f"no VAE at {path} (--vae / ${RELEASE_VAE_ENV})")
    return path


def release_preset(preset: str | None) -> str:
    return preset or os.environ.get(RELEASE_PRESET_ENV) or RELEASE_DEFAULT_PRESET


def load_release_folder(folder: str | os.PathLike, vae: str | os.PathLike | None = None,
                        preset: str | None = None):
    """A release checkpoint folder as a whole model, its files checked first; vae / preset default to their
    environment variables, and the VAE is required."""
    folder = Path(folder)
    if not is_release_folder(folder):
        missing = [n for n in RELEASE_FILES if not (folder / n).is_file()]
        raise WeightsError(f"{folder} is not a release checkpoint folder: " + (
            f"{', '.join(missing)} missing" if missing else "it has a config.json (a model folder of ours)"))
    vae_path = release_vae_path(vae)
    for name in RELEASE_FILES:
        check_safetensors(folder / name)
    preset = release_preset(preset)
    try:
        return load_release_checkpoint(folder, vae_path, preset)
    except (OSError, ValueError, RuntimeError) as error:
        if isinstance(error, WeightsError):
            raise
        raise WeightsError(f"the VAE at {vae_path} does not load as the {preset} model's SD-2.1 VAE "
                           f"({str(error).splitlines()[0]})") from None


def load_imported(folder: Path, meta: dict):
    """The model of an import-release folder: its referenced files, checked against the recorded sizes and id."""
    release = meta["release"]
    for entry in release["files"]:
        path = Path(entry["path"])
        if not path.is_file():
            raise WeightsError(f"{folder} references {path}, which is missing (moved or deleted? run "
                               "`onedc import-release` again)")
        if path.stat().st_size != entry["bytes"]:
            raise WeightsError(f"{folder} references {path}, which has changed: {path.stat().st_size} bytes, "
                               f"{entry['bytes']} when imported (sha256 {entry['sha256']})")
    model = load_release_folder(release["folder"], release["vae"], release["preset"])
    if model.model_id.hex() != meta["model_id"]:
        raise WeightsError(f"{folder}: the release files it references now make model {model.model_id.hex()}, "
                           f"not {meta['model_id']} (a file was replaced; sha256s in its config.json)")
    return model


def load_dmd2_unet_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The DMD2 one-step SD-1.5 UNet (`.bin`, torch pickle) loaded with weights_only, or a safetensors file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    if not path.is_file():
        raise WeightsError(f"missing weights file {path}")
    try:
        state = torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True)
    except Exception as error:
        raise WeightsError(f"{path} is not a loadable weights file ({error})") from None
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds a {type(state).__name__}, not a state_dict")
    return state


def load_unet_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A UNet2DConditionModel state_dict: a diffusers UNet folder, a pipeline folder (its unet/), or one
    .safetensors / .bin file (the SD-1.5 UNet, the DMD2 one-step checkpoint)."""
    path = Path(path)
    if path.is_dir():
        folder = path / "unet" if (path / "unet").is_dir() else path
        files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
        if not files:
            raise WeightsError(f"no UNet weights (*.safetensors or *.bin) in {folder}")
        path = files[0]
    return load_dmd2_unet_state_dict(path)


# The rate ladder of a model family: what notebooks, widgets and sweeps offer to choose from.

@dataclass(frozen=True)
class ModelChoice:
    name: str      # what load_model / build_model takes: bundled name, model folder or preset
    label: str     # shown on the slider
    trained: bool


def _rate_rank(name: str) -> tuple:
    """z-only first (the lowest rate), then q1, q2, ... (q1 = lowest rate), then anything else by name."""
    stem = Path(name).name
    if stem.endswith("zonly"):
        return (0, 0, stem)
    match = re.search(r"_q(\d+)$", stem)
    return (1, int(match.group(1)), stem) if match else (2, 0, stem)


def available_models(preset: str | None = None, models=()) -> list[ModelChoice]:
    """The rate ladder of a model family (default: default_family()), or of the `models` given."""
    from .config import preset_names

    preset = preset or default_family()

    if models:
        choices = []
        for name in models:
            trained = name in bundled_models() or (Path(name) / "config.json").is_file()
            if not trained and name not in preset_names():
                raise ValueError(f"unknown model {name!r}: not a bundled model ({', '.join(bundled_models()) or 'none'}"
                                 f"), not a model folder, not a preset")
            label = Path(name).name if trained else f"{name} (UNTRAINED)"
            choices.append(ModelChoice(str(name), label, trained))
        return choices

    bundled = family_members(preset, bundled_models())
    if bundled:
        return [ModelChoice(n, n, True) for n in bundled]
    presets = family_members(preset, preset_names())
    if not presets:
        raise ValueError(f"no models of family {preset!r}: no bundled {preset}_* model and no {preset}_* preset "
                         f"(presets: {', '.join(preset_names())})")
    return [ModelChoice(n, f"{n} (UNTRAINED)", False) for n in presets]


def distinct_models(choices: list[ModelChoice]) -> tuple[list[ModelChoice], dict[str, str]]:
    """The choices without untrained presets that build the same model as an earlier one (same model id: the
    nano q1..q5 presets differ only in the training lambda), and {dropped: kept}."""
    kept, dropped, seen = [], {}, {}
    for choice in choices:
        if choice.trained:
            kept.append(choice)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model_id = build_model(choice.name, seed=0).model_id
        if model_id in seen:
            dropped[choice.name] = seen[model_id]
        else:
            seen[model_id] = choice.name
            kept.append(choice)
    return kept, dropped
