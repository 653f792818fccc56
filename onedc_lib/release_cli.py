"""The command line's side of the released OneDC: its checkpoint folders as --model (--vae, --release-preset),
its files in `decompress` (--numerics) and out of `compress --format release`, and `onedc import-release`.
cli.py keeps the commands; what is particular to the release is here (models/release.py, release_checkpoint.py,
weights.load_release_folder).
"""
from __future__ import annotations

import argparse
import os
import sys

from .paths import RELEASE_DEFAULT_PRESET, RELEASE_PRESET_ENV, RELEASE_VAE_ENV

NUMERICS_HELP = ("the numerics of the entropy path, as the release computes it: float32-cpu (float32 on a CPU), "
                 "bf16-cuda (its default GPU inference, the prior under CUDA bfloat16 autocast; needs a CUDA "
                 "device), or auto (decode: the first under which the stream ends in the coder's final state)")


class _SetEnv(argparse.Action):
    """Stores the value in an environment variable, so that every model this process loads by name sees it
    (eval's runner too)."""

    def __init__(self, option_strings, dest, env: str, **kwargs):
        self.env = env
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        os.environ[self.env] = values
        setattr(namespace, self.dest, values)


def add_model_options(command: argparse.ArgumentParser) -> None:
    """--vae and --release-preset, for commands whose --model may be a release checkpoint folder."""
    command.add_argument("--vae", metavar="DIR", action=_SetEnv, env=RELEASE_VAE_ENV,
                         help=f"the SD-2.1 VAE (diffusers folder or weights file) of a release checkpoint folder "
                              f"given as --model (default: ${RELEASE_VAE_ENV})")
    command.add_argument("--release-preset", metavar="NAME", action=_SetEnv, env=RELEASE_PRESET_ENV,
                         help=f"architecture of a release checkpoint folder given as --model: {RELEASE_DEFAULT_PRESET} "
                              f"(default, every rate point) or sd15_zonly (the z-only model; default: "
                              f"${RELEASE_PRESET_ENV})")


def add_file_options(command: argparse.ArgumentParser, name: str) -> None:
    """compress: --format, --numerics; decompress: --numerics; both: add_model_options."""
    add_model_options(command)
    if name == "compress":
        command.add_argument("--format", choices=("odc", "release"), default="odc",
                             help="odc: our container (default); release: the released OneDC's format (.bin), "
                                  "which the release decodes (no model id, tables hash or checksums)")
        command.add_argument("--numerics", choices=("float32-cpu", "bf16-cuda"), default="float32-cpu",
                             help="with --format release: " + NUMERICS_HELP.split(", or auto")[0])
    else:
        command.add_argument("--numerics", choices=("auto", "float32-cpu", "bf16-cuda"), default="auto",
                             help="for release-format files: " + NUMERICS_HELP)


def compress_release(model, src: str, dst: str, numerics: str) -> str:
    """`compress --format release` of one image: the file, and what it cost, as one line."""
    from .bitstream import atomic_write
    from .image_io import load_image
    from .models import release

    x = load_image(src).unsqueeze(0)
    written = release.compress(model, x, numerics)
    atomic_write(dst, written.data)
    h, w = x.shape[-2:]
    note = (f"; {written.near_boundary} scales within {release.BOUNDARY_MARGIN:g} (relative) of a table boundary, "
            "where a decoder computing in other float32 (another CPU or thread count) may pick the neighbouring "
            "table" if written.near_boundary else "")
    return (f"{src} -> {dst}: release format ({numerics}), {w} x {h} (W x H), {len(written.data)} bytes, "
            f"{8 * len(written.data) / (h * w):.4f} bpp{note}")


def decompress_file(model, src: str, dst: str, numerics: str):
    """A .odc file (model.decompress_file) or a release-format file (models/release.py, `numerics`) -> image."""
    from .bitstream import detect_format, read_bytes
    from .image_io import save_image
    from .models import release

    data = read_bytes(src)
    if detect_format(data) != "release":
        return model.decompress_file(src, dst)
    image, used = release.decompress(model, data, numerics)
    save_image(image[0], dst)
    print(f"onedc: {src}: release-format file, decoded with the release's {used} numerics", file=sys.stderr)
    return image


def add_import_command(commands) -> None:
    command = commands.add_parser(
        "import-release", help="make a model folder of a release checkpoint (no copy)",
        description="Write MODEL_DIR/config.json for a release checkpoint folder (model.safetensors: generator "
                    "with LoRA; model_1.safetensors: codec) and its SD-2.1 VAE: the model's config and id, and the "
                    "release files by path, size and sha256 (nothing is copied). --model MODEL_DIR then works in "
                    "every command; it refuses files that have changed.")
    command.add_argument("folder", metavar="FOLDER", help="the release checkpoint folder")
    command.add_argument("--vae", metavar="DIR", help=f"the SD-2.1 VAE: diffusers folder or weights file "
                                                      f"(default: ${RELEASE_VAE_ENV})")
    command.add_argument("-o", "--output", metavar="MODEL_DIR", required=True, help="the model folder to write")
    command.add_argument("--release-preset", metavar="NAME", default=None,
                         help=f"{RELEASE_DEFAULT_PRESET} (default, every rate point) or sd15_zonly (the z-only model)")
    command.set_defaults(run=_import)


def _import(args: argparse.Namespace) -> int:
    import json

    from .release_checkpoint import import_release
    from .weights import WeightsError

    try:
        out = import_release(args.folder, args.vae, args.output, args.release_preset)
    except WeightsError as e:
        print(f"onedc: {e}", file=sys.stderr)
        return 2
    meta = json.loads((out / "config.json").read_text())
    print(f"{out}: model {meta['model_id']} ({meta['config']['name']}), referencing {len(meta['release']['files'])} "
          f"release files by sha256; use --model {out}")
    return 0
