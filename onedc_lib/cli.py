"""The `onedc` command line.

Exit codes: 0 success, 1 a file that is not a valid OneDC file, 2 usage errors and files that cannot be read.
Each command imports what it needs when it runs, so that `onedc info` starts fast and never loads torch.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from onedc_lib import __version__

EXIT_BAD_FILE = 1
EXIT_USAGE = 2


def _fail(code: int, message: str) -> int:
    print(f"onedc: {message}", file=sys.stderr)
    return code


def _describe(path: str, data: bytes) -> dict:
    """The facts `info` prints, as one dict (also the --json output)."""
    from onedc_lib import bitstream

    fmt = bitstream.detect_format(data)
    if fmt == "onedc":
        f = bitstream.read_container(data)
        facts = {"version": f.version, "model_id": f.model_id.hex(), "table_hash": f.table_hash.hex()}
        sections = [{"name": s.name, "bytes": len(s.payload), "crc32": f"{s.crc:08x}",
                     "symbols_crc32": None if s.symbols_crc is None else f"{s.symbols_crc:08x}"}
                    for s in f.sections]
    else:
        f = bitstream.read_release_file(data)
        facts = {}
        sections = [{"name": "y", "bytes": len(f.y_stream)}, {"name": "z", "bytes": len(f.z_bytes)}]
    return {"file": path, "format": fmt, **facts, "height": f.height, "width": f.width,
            "padded_height": f.padded_height, "padded_width": f.padded_width, "sections": sections,
            "total_bytes": f.num_bytes, "bpp": f.bpp}


def _as_text(d: dict) -> str:
    if d["format"] == "onedc":
        lines = [f"format      OneDC container, version {d['version']}",
                 f"model id    {d['model_id']}",
                 f"table hash  {d['table_hash']}"]
    else:
        lines = ["format      release (16-byte header; no magic, version, model id or checksums)"]
    lines.append(f"image       {d['height']} x {d['width']} (H x W), padded to "
                 f"{d['padded_height']} x {d['padded_width']}")
    for i, s in enumerate(d["sections"]):
        line = f"{'sections' if i == 0 else '':12}{s['name']:4} {s['bytes']:>10} bytes"
        if "crc32" in s:
            line += f"  crc32 {s['crc32']}"
        if s.get("symbols_crc32"):
            line += f"  symbols crc32 {s['symbols_crc32']}"
        lines.append(line)
    lines.append(f"total       {d['total_bytes']} bytes, {d['bpp']:.5g} bpp")
    return "\n".join([f"file        {d['file']}", *lines])


def _info(args: argparse.Namespace) -> int:
    from onedc_lib.bitstream import BitstreamError, read_bytes

    try:
        facts = _describe(args.file, read_bytes(args.file))
    except OSError as e:
        return _fail(EXIT_USAGE, f"cannot read {args.file}: {e.strerror or e}")
    except BitstreamError as e:
        return _fail(EXIT_BAD_FILE, f"{args.file}: {e}")
    print(json.dumps(facts) if args.json else _as_text(facts))
    return 0


def _no_model(args: argparse.Namespace) -> int:
    """compress / decompress: the arguments are checked for real; the model arrives with the model issue."""
    if not os.path.exists(args.input):
        return _fail(EXIT_USAGE, f"cannot read {args.input}: No such file or directory")
    if os.path.isdir(args.input) and os.path.exists(args.output) and not os.path.isdir(args.output):
        return _fail(EXIT_USAGE, f"{args.input} is a folder, so OUT must be a folder, but {args.output} is a file")
    return _fail(EXIT_USAGE, f"{args.command}: no model available yet")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onedc", description="OneDC: one-step diffusion image codec.")
    parser.add_argument("--version", action="version", version=f"onedc {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = commands.add_parser("info", help="describe a OneDC or release-format file",
                               description="Describe a OneDC container or a file of the released OneDC: format, "
                                           "model, image size, sections, size and bpp. Exit code 1 if the file "
                                           "is not valid.")
    info.add_argument("file", metavar="FILE")
    info.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    info.set_defaults(run=_info)

    for name, what, inputs, outputs in (
            ("compress", "compress images to .odc files", "an image or a folder of images",
             "the .odc file, or a folder when IN is a folder"),
            ("decompress", "decompress .odc or release-format files to PNG images", "a file or a folder of files",
             "the image file, or a folder when IN is a folder")):
        command = commands.add_parser(name, help=what, description=what[0].upper() + what[1:] + ".")
        command.add_argument("input", metavar="IN", help=inputs)
        command.add_argument("-o", "--output", metavar="OUT", required=True, help=outputs)
        command.add_argument("--model", metavar="PRESET_OR_PATH",
                             help="a preset name or a model folder (default: the model shipped with onedc)")
        command.set_defaults(run=_no_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help, --version and usage errors: argparse has printed its message
        return 0 if e.code is None else e.code
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
