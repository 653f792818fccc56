"""The `onedc` command line.

Exit codes (EXIT_CODES, shown by `onedc --help`): 0 done, 1 bad input or data, 2 usage, 130 interrupted.
Each command imports what it needs when it runs, so that `onedc info` starts fast and never loads torch.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys

from onedc_lib import __version__

EXIT_BAD_FILE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
EXIT_CODES = ("exit codes: 0 done; 1 bad input or data (a file missing, unreadable, not an image, corrupt or written "
              "by another model; an output that cannot be written; nothing to do); 2 usage (unknown command, option "
              "or model; an output that is an input, or exists without -f/--force); 130 interrupted (Ctrl-C: no "
              "partial output is left)")
MODEL_HELP = "a bundled model (see `onedc models`), a model folder or a preset (default: the bundled default model)"


def _fail(code: int, message: str) -> int:
    print(f"onedc: {message}", file=sys.stderr)
    return code


def _describe(path: str, data: bytes) -> dict:
    """The facts `info` prints, as one dict (also the --json output)."""
    from onedc_lib import bitstream

    fmt = bitstream.detect_format(data)
    if fmt == "onedc":
        f = bitstream.read_container(data)
        from onedc_lib.paths import find_model

        facts = {"version": f.version, "model_id": f.model_id.hex(), "model": find_model(f.model_id.hex()),
                 "table_hash": f.table_hash.hex()}
        if "note" in f.section_names:
            facts["note"] = f.section("note").payload.decode("utf-8", "replace")
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
                 f"model id    {d['model_id']}" + (f" ({d['model']})" if d["model"] else " (not a model here)"),
                 f"table hash  {d['table_hash']}"]
        if "note" in d:
            lines.append(f"note        {d['note']}")
    else:
        lines = ["format      release (16-byte header; no magic, version, model id or checksums)"]
    lines.append(f"image       {d['width']} x {d['height']} (W x H), padded to "
                 f"{d['padded_width']} x {d['padded_height']}")
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
        return _fail(EXIT_BAD_FILE, f"cannot read {args.file}: {e.strerror or e}")
    except BitstreamError as e:
        return _fail(EXIT_BAD_FILE, f"{args.file}: {e}")
    print(json.dumps(facts) if args.json else _as_text(facts))
    return 0


def _load_model(name: str | None, decode_only: bool = False, keep: str | None = None):
    """load_model, with its warnings (untrained weights) printed as one line each on stderr; `keep`: only what that
    direction runs (OneDC.keep_only: compress never needs the generator or the VAE decoder)."""
    import warnings

    from onedc_lib.weights import load_model

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_model(name, decode_only=decode_only)
    for w in caught:
        print(f"onedc: warning: {w.message}", file=sys.stderr)
    return model.keep_only(keep) if keep else model


class _JobError(Exception):
    """Why the jobs cannot start, with the exit code."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def _jobs(args: argparse.Namespace, suffixes: set[str], out_suffix: str) -> list[tuple[str, str]]:
    """(input, output) pairs: one file, or every matching file of a folder (recursively) into a folder. Refused
    before any work: an output that is an input file (never destroyed), an existing output without --force, an
    empty folder."""
    from pathlib import Path

    source, target = Path(args.input), Path(args.output)
    if not source.exists():
        raise _JobError(EXIT_BAD_FILE, f"cannot read {source}: No such file or directory")
    if not source.is_dir():
        jobs = [(str(source), str(target))]
    elif target.exists() and not target.is_dir():
        raise _JobError(EXIT_USAGE, f"{source} is a folder, so OUT must be a folder, but {target} is a file")
    else:
        files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
        if not files:
            raise _JobError(EXIT_BAD_FILE, f"nothing to do: no {' '.join(sorted(suffixes))} files in {source}")
        jobs = [(str(p), str((target / p.relative_to(source)).with_suffix(out_suffix))) for p in files]
    inputs = {Path(src).resolve() for src, _ in jobs}
    for src, dst in jobs:
        if Path(dst).resolve() in inputs:
            raise _JobError(EXIT_USAGE, f"{dst} is an input: refusing to write over it (choose another -o)")
    existing = [dst for _, dst in jobs if Path(dst).exists()]
    if existing and not args.force:
        more = f" and {len(existing) - 1} more outputs" if len(existing) > 1 else ""
        raise _JobError(EXIT_USAGE, f"{existing[0]}{more} already exist{'' if more else 's'}: "
                                    "-f/--force replaces existing outputs")
    return jobs


def _run_jobs(args: argparse.Namespace, suffixes: set[str], out_suffix: str, work, decode_only: bool = False,
              keep: str | None = None) -> int:
    """Runs work(model, src, dst) -> one line per job, with a progress bar for folders; bad files are reported
    and skipped (exit code 1 at the end), the others still done. decode_only: see weights.load_model; keep: see
    _load_model. Without --model, `decompress` takes the model each file names (model_for_file)."""
    from pathlib import Path

    from tqdm import tqdm  # torch imports it anyway

    from onedc_lib.bitstream import BitstreamError
    from onedc_lib.image_io import ImageError
    from onedc_lib.weights import WeightsError

    try:
        jobs = _jobs(args, suffixes, out_suffix)
    except _JobError as e:
        return _fail(e.code, str(e))
    from_file = args.command == "decompress" and not args.model  # the model each file names
    models = {}
    try:
        if not from_file:
            models[args.model] = _load_model(args.model, decode_only, keep)
    except WeightsError as e:
        return _fail(EXIT_USAGE, str(e))
    code = 0
    for src, dst in tqdm(jobs, disable=len(jobs) < 2, unit="file", desc=args.command):
        try:
            name = model_for_file(src) if from_file else args.model
            if name not in models:
                models[name] = _load_model(name, decode_only, keep)
            Path(dst).parent.mkdir(parents=True, exist_ok=True)
            single = len(jobs) == 1  # (a folder has its bar over the files)
            long = single and _megapixels(src, coded=args.command == "decompress") >= LONG_IMAGE_MP
            with _progress(f"{args.command} {src}", long, single):
                line = work(models[name], src, dst)
            tqdm.write(line + (f", model {name}" if from_file and name else ""))
        except (ImageError, BitstreamError, WeightsError) as e:
            code = max(code, _fail(EXIT_BAD_FILE, str(e) if src in str(e) else f"{src}: {e}"))
        except OSError as e:  # unreadable input, unwritable output: report it and go on with the other files
            where = e.filename if e.filename is not None else src
            code = max(code, _fail(EXIT_BAD_FILE, f"{src} -> {dst}: cannot access {where}: {e.strerror or e}"))
    return code


LONG_IMAGE_MP = 1.0  # a single image this large takes seconds or more: show that the work goes on
PROGRESS_ENV = "ONEDC_PROGRESS"  # "1": the bar for any single image, on any stderr (kept at the end); "0": never


def _megapixels(path: str, coded: bool) -> float:
    """Of an image file, or of a coded file (`coded`), from its header; 0 where it cannot be read (the work then
    says why)."""
    from onedc_lib import bitstream
    from onedc_lib.image_io import ImageError, image_size

    try:
        if not coded:
            height, width = image_size(path)
            return height * width / 1e6
        data = bitstream.read_bytes(path)
        onedc = bitstream.detect_format(data) == "onedc"
        f = bitstream.read_container(data) if onedc else bitstream.read_release_file(data)
        return f.height * f.width / 1e6
    except (OSError, ImageError, bitstream.BitstreamError):
        return 0.0


@contextlib.contextmanager
def _progress(label: str, long: bool, single: bool):
    """On a terminal, for one long image: a bar over the pieces of work the model reports (onedc_lib.progress: VAE,
    codec, the four context-model steps, generator, VAE tiles), its elapsed time refreshed twice a second (one
    piece can take a minute). $ONEDC_PROGRESS: "1" shows it for any single image on any stderr, "0" never."""
    import os
    import threading

    from tqdm import tqdm

    from onedc_lib.progress import listening

    forced = os.environ.get(PROGRESS_ENV)
    if not (forced == "1" and single or forced != "0" and long and sys.stderr.isatty()):
        yield
        return
    # no rate or time left: the pieces differ in size by a hundred times (the generator, a context-model step)
    bar = tqdm(desc=label, file=sys.stderr, leave=forced == "1",
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} pieces [{elapsed}]")
    done = threading.Event()
    thread = threading.Thread(target=lambda: [bar.refresh() for _ in iter(lambda: done.wait(0.5), True)],
                              daemon=True)
    thread.start()
    try:
        with listening(bar):
            yield
    finally:
        done.set()
        thread.join()
        bar.close()


def model_for_file(path: str) -> str | None:
    """The model a file names (paths.find_model: bundled, then cached), None (the default model) for a release-format
    file; a BitstreamError when the file names a model that is not here."""
    from onedc_lib import bitstream
    from onedc_lib.paths import cached_models_dir, find_model

    data = bitstream.read_bytes(path)
    if bitstream.detect_format(data) != "onedc":
        return None
    model_id = bitstream.read_container(data).model_id.hex()
    name = find_model(model_id)
    if name is None:
        raise bitstream.BitstreamError(
            f"written by model {model_id}, which is neither bundled (`onedc models`) nor in {cached_models_dir()}: "
            "pass the model that wrote it with --model")
    return name


def _compress(args: argparse.Namespace) -> int:
    from onedc_lib.image_io import IMAGE_SUFFIXES

    from onedc_lib.data.folders import image_caption

    def work(model, src, dst):  # text-guided models write the caption into the file; the others ignore it
        caption = args.caption if args.caption is not None else image_caption(src)
        c = model.compress_file(src, dst, caption)
        return (f"{src} -> {dst}: {c.container.width} x {c.container.height} (W x H), {c.num_bytes} bytes, "
                f"{c.bpp:.4f} bpp")

    if args.format == "release":
        from functools import partial

        from onedc_lib.release_cli import compress_release

        return _run_jobs(args, IMAGE_SUFFIXES, ".bin", partial(compress_release, numerics=args.numerics),
                         keep="compress")
    return _run_jobs(args, IMAGE_SUFFIXES, ".odc", work, keep="compress")


def _decompress(args: argparse.Namespace) -> int:
    from onedc_lib.release_cli import decompress_file

    def work(model, src, dst):
        if args.reference:
            import torch

            model.decode_options.exported, model.decode_options.dtype = False, torch.float32
        image = decompress_file(model, src, dst, args.numerics)  # .odc or release-format files
        return f"{src} -> {dst}: {image.shape[-1]} x {image.shape[-2]} (W x H)"

    # the exported graph of the generator and VAE decoder: no diffusers import, a fast start (models/export.py)
    return _run_jobs(args, {".odc", ".bin"}, ".png", work, decode_only=not args.reference)


def _demo(args: argparse.Namespace) -> int:

    from onedc_lib.demo import expected_quality, results_folder, run_demo
    from onedc_lib.weights import DEFAULT_MODEL, WeightsError

    try:
        model = _load_model(args.model)
    except WeightsError as e:
        return _fail(EXIT_USAGE, str(e))
    name = args.model or DEFAULT_MODEL
    print(f"model {name} ({model.config.name}, lambda {model.config.loss.lmbda}"
          + (", UNTRAINED" if model.untrained_parts else "") + "): "
          + (expected_quality(name) or f"no measured results for it in {results_folder(name) or 'results'}"),
          flush=True)
    rows = run_demo(model, args.out)
    scores = [k for k in ("psnr", "ms_ssim", "lpips", "dists") if k in rows[0]]
    print(f"{'image':10} {'W x H':>10} {'bytes':>8} {'bpp':>8} " + " ".join(f"{k.upper():>7}" for k in scores)
          + f" {'enc s':>6} {'dec s':>6}")
    for r in rows:
        print(f"{r['name']:10} {r['width']:>4} x {r['height']:<4} {r['bytes']:>8} {r['bpp']:>8.4f} "
              + " ".join(f"{r[k]:>7.{2 if k == 'psnr' else 4}f}" for k in scores)
              + f" {r['enc_s']:>6.2f} {r['dec_s']:>6.2f}")
    print(f"files, reconstructions and results.json in {args.out}")
    return 0


def _bdrate(args: argparse.Namespace) -> int:
    """BD-rate of B (test) relative to A (anchor): the number on stdout, what it is on stderr."""
    import warnings

    from onedc_lib.eval.bdrate import bd_metric, bd_rate, higher_is_better, load_curve

    higher = higher_is_better(args.metric) if args.higher_is_better is None else args.higher_is_better
    try:
        a, b = load_curve(args.anchor), load_curve(args.test)
        points = (*a.points(args.metric), *b.points(args.metric))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rate = bd_rate(*points, higher_is_better=higher, method=args.method, min_overlap=args.min_overlap)
            try:
                metric = bd_metric(*points, higher_is_better=higher, method=args.method, min_overlap=0.0)
            except ValueError:
                metric = None  # the rate ranges need not overlap where the metric ranges do
    except (OSError, ValueError) as e:  # files that cannot be read, curves that cannot be compared
        return _fail(EXIT_BAD_FILE, str(e))
    for w in dict.fromkeys(str(w.message) for w in caught):
        print(f"onedc: warning: {w}", file=sys.stderr)
    if args.json:
        print(json.dumps({"anchor": args.anchor, "test": args.test, "metric": args.metric, "method": args.method,
                          "higher_is_better": higher, "bd_rate_percent": rate, "bd_metric": metric}))
    else:
        print(f"{rate:.4f}")
        print(f"BD-rate of {b.name} ({args.test}) relative to {a.name} ({args.anchor}) on {args.metric} "
              f"({'higher' if higher else 'lower'} is better, {args.method}): {rate:+.2f}% "
              f"(negative: {b.name} needs fewer bits)", file=sys.stderr)
    return 0


def _plot(args: argparse.Namespace) -> int:
    from onedc_lib.plotting import rd_curves, save_figure

    metrics = [m for item in args.metrics for m in item.split(",") if m]
    try:
        fig = rd_curves(args.results, metrics=metrics, log_x=args.log_x)
        save_figure(fig, args.output)
    except (OSError, ValueError) as e:  # files that cannot be read or written, results without the metrics
        return _fail(EXIT_BAD_FILE, str(e))
    print(f"wrote {args.output}")
    return 0


def _metrics(args: argparse.Namespace) -> int:
    """psnr, ms_ssim, lpips, dists of one image pair (evaluation protocol: onedc_lib.eval.metrics)."""
    import math

    from onedc_lib.image_io import ImageError, load_image

    try:
        ref, dist = load_image(args.ref), load_image(args.dist)
    except ImageError as e:
        return _fail(EXIT_BAD_FILE, str(e))
    if ref.shape != dist.shape:
        return _fail(EXIT_BAD_FILE, f"images differ in size: {args.ref} is {ref.shape[2]} x {ref.shape[1]}, "
                                    f"{args.dist} is {dist.shape[2]} x {dist.shape[1]} (W x H)")
    from onedc_lib.eval.metrics import ImageMetrics
    from onedc_lib.eval.backbones import MetricWeightsError

    try:
        values = ImageMetrics(device=args.device)(ref, dist)
    except (MetricWeightsError, ValueError) as e:
        return _fail(EXIT_USAGE, str(e))
    if args.json:  # JSON has no infinity: PSNR of identical images is null, as is MS-SSIM of images below 161 px
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}
        print(json.dumps({"ref": args.ref, "dist": args.dist, **clean}))
        return 0
    print(f"{'ref':9} {args.ref}\n{'dist':9} {args.dist}\n{'size':9} {values['width']} x {values['height']} (W x H)")
    for name in ("psnr", "ms_ssim", "lpips", "dists"):
        v = values[name]
        shown = "n/a (smaller side below 161 px)" if v is None else f"{v:.4f} dB" if name == "psnr" else f"{v:.6f}"
        print(f"{name:9} {shown}")
    return 0


def _models(args: argparse.Namespace) -> int:
    """The bundled models (onedc_lib.bundle.model_infos), as text or one JSON list."""
    from onedc_lib.bundle import model_infos
    from onedc_lib.weights import DEFAULT_MODEL, bundled_dir

    infos = model_infos()
    if args.json:
        print(json.dumps(infos))
        return 0
    if not infos:
        print(f"no bundled models in {bundled_dir()}: the default, {DEFAULT_MODEL}, is the preset with seeded random "
              "weights (UNTRAINED)")
        return 0
    print(f"{'name':14} {'preset':12} {'lambda':>7} {'z only':>6} {'MB':>6} {'dtype':8} {'model id':32}  description")
    for m in infos:
        print(f"{m['name'] + (' *' if m['default'] else ''):14} {m['preset']:12} {m['lmbda']:>7g} "
              f"{'yes' if m['z_only'] else 'no':>6} {m['bytes'] / 1e6:>6.2f} {m['dtype']:8} {m['model_id']:32}  "
              f"{m['description']}")
    print(f"* the default model; {bundled_dir()}")
    return 0


def _eval_nano(args: argparse.Namespace) -> int:
    from onedc_lib.experiments.nano import run_from_args

    return run_from_args(args)


def _bundle(args: argparse.Namespace) -> int:
    from onedc_lib.bundle import run_from_args

    return run_from_args(args)


def _prepare(args: argparse.Namespace) -> int:
    from onedc_lib.data.prepare import run_from_args

    return run_from_args(args)


def _eval_command(args: argparse.Namespace, metrics: list[str], qualities: list[int] | None) -> str:
    """The canonical command line of an `onedc eval` run, recorded in its summary."""
    import shlex

    parts = ["onedc", "eval", "--codec", args.codec, "--images", args.images, "--out", args.out,
             "--metrics", *metrics]
    if qualities is not None:
        parts += ["--qualities", ",".join(map(str, qualities))]
    if args.results:
        parts += ["--results", args.results]
    if args.no_fid:
        parts.append("--no-fid")
    elif args.fid_min_patches != 2:
        parts += ["--fid-min-patches", str(args.fid_min_patches)]
    if args.device != "cpu":
        parts += ["--device", args.device]
    if args.threads:
        parts += ["--threads", str(args.threads)]
    if args.protocol != "ours":
        parts += ["--protocol", args.protocol]
    return shlex.join(parts)


def _eval(args: argparse.Namespace) -> int:
    """One codec (a OneDC model list or a baseline's sweep) over a folder of images: onedc_lib.eval.runner."""
    if args.model:
        if args.codec not in (None, "onedc"):
            return _fail(EXIT_USAGE, f"--model selects OneDC models; it does not go with --codec {args.codec}")
        args.codec = f"onedc:{args.model}"
    elif args.codec is None:
        return _fail(EXIT_USAGE, "eval needs --codec or --model")
    metrics = [m for item in args.metrics for m in item.split(",") if m]
    try:
        qualities = ([int(q) for item in args.qualities for q in item.split(",") if q]
                     if args.qualities else None)
    except ValueError:
        return _fail(EXIT_USAGE, f"--qualities takes integers, got {' '.join(args.qualities)}")
    import math
    import warnings

    import torch

    from onedc_lib.bitstream import BitstreamError
    from onedc_lib.eval.runner import evaluate
    from onedc_lib.image_io import ImageError

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            summary = evaluate(args.codec, args.images, args.out, metrics=metrics, fid=not args.no_fid,
                               device=args.device, qualities=qualities, results_dir=args.results,
                               resume=not args.no_resume, fid_min_patches=args.fid_min_patches,
                               protocol=args.protocol, command=_eval_command(args, metrics, qualities))
    except (ImageError, BitstreamError, OSError) as e:  # bad files, missing folders or weights
        return _fail(EXIT_BAD_FILE, str(e))
    except ValueError as e:  # unknown codec or metric, bad qualities
        return _fail(EXIT_USAGE, str(e))
    finally:
        for w in dict.fromkeys(str(w.message) for w in caught):
            print(f"onedc: warning: {w}", file=sys.stderr)
    shown = [*metrics, *([] if args.no_fid else ["fid"])]
    print(f"{'rate':>10} {'bpp':>8} " + " ".join(f"{m:>9}" for m in shown) + f" {'enc s':>7} {'dec s':>7}")
    for p in summary["points"]:
        cells = []
        for m in shown:
            v = p.get(m)
            cells.append(f"{'n/a':>9}" if v is None or not math.isfinite(v) else f"{v:>9.4f}")
        print(f"{str(p['rate']):>10} {p['bpp']:>8.4f} " + " ".join(cells) + f" {p['enc_s']:>7.3f} {p['dec_s']:>7.3f}")
    results = args.results or args.out
    print(f"{summary['codec']}: {summary['images']['count']} images x {len(summary['points'])} rate points; "
          f"{results}/{summary['csv']} and {results}/{summary['codec']}.json; files and reconstructions in "
          f"{args.out}/{summary['codec']}/")
    return 0


def _parser() -> argparse.ArgumentParser:
    from onedc_lib import release_cli  # its options (release checkpoints and files); imports no torch

    parser = argparse.ArgumentParser(prog="onedc", description="OneDC: one-step diffusion image codec.",
                                     epilog=EXIT_CODES)
    parser.add_argument("--version", action="version", version=f"onedc {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = commands.add_parser("info", help="describe a OneDC or release-format file",
                               description="Describe a OneDC container or a file of the released OneDC: format, "
                                           "model, image size, sections, size and bpp. Exit code 1 if the file "
                                           "is not valid.")
    info.add_argument("file", metavar="FILE")
    info.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    info.set_defaults(run=_info)

    for name, run, what, inputs, outputs in (
            ("compress", _compress, "compress images to .odc files", "an image or a folder of images",
             "the .odc file, or a folder when IN is a folder"),
            ("decompress", _decompress, "decompress .odc or release-format files to PNG images", "a file or a folder of files",
             "the image file, or a folder when IN is a folder")):
        command = commands.add_parser(name, help=what, description=what[0].upper() + what[1:] + ".",
                                      epilog=EXIT_CODES)
        command.add_argument("input", metavar="IN", help=inputs)
        command.add_argument("-o", "--output", metavar="OUT", required=True, help=outputs)
        command.add_argument("-f", "--force", action="store_true",
                             help="replace outputs that exist (an input is never replaced)")
        command.add_argument("--model", metavar="NAME", help=MODEL_HELP if name == "compress" else (
            MODEL_HELP.replace("default: the bundled default model", "default: the model the file names, found "
                               "among the bundled models and the models in ~/.cache/onedc/models")))
        if name == "compress":
            command.add_argument("--caption", metavar="TEXT",
                                 help="the caption a text-guided model (codec.guidance: text) sends in the file "
                                      "(default: <image>.txt beside the image, else the shipped nano caption)")
        else:
            command.add_argument("--reference", action="store_true",
                                 help="decode with the diffusers generator and VAE in float32 (the reference "
                                      "path) instead of their exported graph and bf16 where the CPU or GPU has "
                                      "bf16 units (same bitstreams; images within float rounding)")
        release_cli.add_file_options(command, name)
        command.set_defaults(run=run)
    release_cli.add_import_command(commands)
    demo = commands.add_parser("demo", help="compress and decompress the sample photographs",
                               description="Compress and decompress the sample photographs (shipped with "
                                           "scikit-image) with a model; write the .odc files, the reconstructions "
                                           "and results.json (bpp from the files, PSNR, times).")
    demo.add_argument("--model", metavar="NAME", help=MODEL_HELP)
    demo.add_argument("--out", metavar="DIR", default="out/demo", help="output folder (default: out/demo)")
    release_cli.add_model_options(demo)
    demo.set_defaults(run=_demo)
    bdrate = commands.add_parser("bdrate", help="BD-rate of one results file relative to another",
                                 description="Print the Bjontegaard delta rate of B relative to the anchor A in "
                                             "percent (negative: B needs fewer bits for the same quality). A and B "
                                             "are summary JSON files of `onedc eval` or CSV files with a bpp column "
                                             "and a column named METRIC.")
    bdrate.add_argument("anchor", metavar="A", help="results of the anchor codec")
    bdrate.add_argument("test", metavar="B", help="results of the tested codec")
    bdrate.add_argument("--metric", required=True, help="metric column, e.g. psnr, ms_ssim, lpips, dists, fid")
    bdrate.add_argument("--method", choices=("pchip", "akima", "cubic"), default="pchip",
                        help="interpolation: piecewise cubic Hermite (default), Akima, or 3rd-order polynomial")
    direction = bdrate.add_mutually_exclusive_group()
    direction.add_argument("--higher-is-better", dest="higher_is_better", action="store_true", default=None,
                           help="the metric improves upwards (default: from the name; LPIPS, DISTS, FID, KID, "
                                "MSE are lower-is-better)")
    direction.add_argument("--lower-is-better", dest="higher_is_better", action="store_false")
    bdrate.add_argument("--min-overlap", type=float, default=0.75, metavar="FRACTION",
                        help="warn when the curves overlap on less than this part of their joint range")
    bdrate.add_argument("--json", action="store_true", help="print one JSON object (with BD-metric too)")
    bdrate.set_defaults(run=_bdrate)
    plot = commands.add_parser("plot", help="plot RD curves from results files",
                               description="Plot bpp against each metric, one line per results file "
                                           "(summary JSON or CSV), one panel per metric.")
    plot.add_argument("results", metavar="RESULTS", nargs="+", help="results files")
    plot.add_argument("-o", "--output", metavar="FIG", required=True, help="figure file (.png, .pdf, .svg)")
    plot.add_argument("--metrics", nargs="+", default=["psnr", "ms_ssim", "lpips", "dists"], metavar="METRIC",
                      help="metrics to plot (default: psnr ms_ssim lpips dists)")
    plot.add_argument("--log-x", action="store_true", help="logarithmic bpp axis")
    plot.set_defaults(run=_plot)
    metrics = commands.add_parser("metrics", help="PSNR, MS-SSIM, LPIPS and DISTS of an image pair",
                                  description="Compare a distorted image with its reference: PSNR (8-bit), "
                                              "MS-SSIM, LPIPS (AlexNet) and DISTS, with the evaluation protocol "
                                              "of onedc_lib.eval.metrics. The LPIPS/DISTS backbones must be "
                                              "provisioned first: python -m onedc_lib.eval.backbones.")
    metrics.add_argument("ref", metavar="REF", help="the reference (original) image")
    metrics.add_argument("dist", metavar="DIST", help="the distorted (decoded) image, same size")
    metrics.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    metrics.add_argument("--device", default="cpu", help="torch device for LPIPS and DISTS (default: cpu)")
    metrics.set_defaults(run=_metrics)
    evaluation = commands.add_parser(
        "eval", help="evaluate a codec on a folder of images",
        description="Encode and decode every image of a folder with one codec: a OneDC model (onedc:<model>, "
                    "several comma-separated for an RD curve; a bundled model, preset or model folder) or a "
                    "baseline (jpeg, webp, avif, jxl, hevc: its whole quality sweep). Writes the bitstreams and "
                    "reconstructions, a per-image CSV and a summary JSON (means per rate point, FID/KID, metric "
                    "protocol, versions, device, commit) that `onedc bdrate` and `onedc plot` read. Rows already "
                    "in the CSV are kept (resume). Metric backbones: python -m onedc_lib.eval.backbones.")
    evaluation.add_argument("--codec", metavar="C",
                            help="onedc:<model or path>[,...], jpeg, webp, avif, jxl or hevc; <codec>_x4_bicubic or "
                                 "<codec>_x4_sr: that codec on the image downsampled x4, brought back by bicubic "
                                 "or by the pretrained decoder (e.g. avif_x4_sr)")
    evaluation.add_argument("--model", metavar="NAME[,NAME...]",
                            help="OneDC models, one rate point each (= --codec onedc:NAME,...); " + MODEL_HELP)
    evaluation.add_argument("--images", required=True, metavar="DIR", help="folder of images (recursive)")
    evaluation.add_argument("--out", required=True, metavar="DIR", help="output folder")
    evaluation.add_argument("--results", metavar="DIR", help="folder for the CSV and JSON (default: --out)")
    evaluation.add_argument("--metrics", nargs="+", default=["psnr", "ms_ssim", "lpips", "dists"],
                            metavar="METRIC", help="per-image metrics (default: psnr ms_ssim lpips dists)")
    evaluation.add_argument("--no-fid", action="store_true", help="skip FID/KID on 256-px patches")
    evaluation.add_argument("--fid-min-patches", type=int, default=2, metavar="N",
                            help="report FID/KID missing, without computing them, when the images give fewer "
                                 "256-px patches (default: 2; each FID takes about a minute on one CPU core)")
    evaluation.add_argument("--qualities", nargs="+", metavar="Q",
                            help="a baseline's qualities instead of its whole sweep (e.g. 10,30,50)")
    evaluation.add_argument("--device", default="cpu", help="torch device for the metrics and OneDC (default: cpu)")
    evaluation.add_argument("--threads", type=int, metavar="N", help="torch CPU threads")
    evaluation.add_argument("--no-resume", action="store_true", help="redo rows already in the CSV")
    evaluation.add_argument("--protocol", choices=("ours", "release"), default="ours",
                            help="release: bpp as the released OneDC counts it, for comparisons with the paper "
                                 "(onedc_lib.eval.runner; default: ours, the whole file)")
    release_cli.add_model_options(evaluation)
    evaluation.set_defaults(run=_eval)
    models = commands.add_parser("models", help="list the bundled models",
                                 description="List the models shipped in the package (onedc_lib/weights, or "
                                             "$ONEDC_BUNDLED_DIR): name, preset, lambda, z-only, size, dtype, model "
                                             "id, description; * marks the default. --model NAME selects one in "
                                             "compress, decompress, demo and eval.")
    models.add_argument("--json", action="store_true", help="print one JSON list of objects")
    models.set_defaults(run=_models)
    bundle = commands.add_parser("bundle", help="bundle a trained model folder into the package",
                                 description="Copy trained model folders (config.json + model.safetensors) into "
                                             "onedc_lib/weights/NAME (default NAME: the model's preset): float16 "
                                             "where it decodes within 45 dB of "
                                             "float32, tensors shared between models stored once, provenance.json "
                                             "(commit, preset, overrides, training runs, data manifest sha256).")
    from onedc_lib.bundle import add_arguments as _bundle_arguments

    _bundle_arguments(bundle)
    bundle.set_defaults(run=_bundle)
    nano = commands.add_parser("eval-nano", help="the nano results: bundled models and baselines on the nano test set",
                               description="Evaluate every bundled model of a family (default: the default model's; "
                                           "one curve for the models that code y, one for z-only) and JPEG, WebP, "
                                           "AVIF, JPEG XL and HEVC-intra on the nano test photographs (onedc "
                                           "prepare) into results/<family>/, then regenerate "
                                           "figures/ from results/ (RD figure, BD-rate tables). Resumable.")
    from onedc_lib.experiments.nano import add_arguments as _nano_arguments

    _nano_arguments(nano)
    nano.set_defaults(run=_eval_nano)
    prepare = commands.add_parser("prepare", help="build the nano training set from offline photographs",
                                  description="Build the nano training set: Debian's wallpaper photographs "
                                              "(apt-get download, no install) and scikit-image's, as PNGs with a "
                                              "manifest of sizes, sha256s, licences and a fixed train/val/test "
                                              "split; checked against the committed nano_manifest.json.")
    from onedc_lib.data.prepare import add_arguments as _prepare_arguments

    _prepare_arguments(prepare)
    prepare.set_defaults(run=_prepare)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help, --version and usage errors: argparse has printed its message
        return 0 if e.code is None else e.code
    try:
        return args.run(args)
    except KeyboardInterrupt:  # writes are atomic: what was not finished is not there
        return _fail(EXIT_INTERRUPTED, "interrupted")


QUICK_EXIT_COMMANDS = ("compress", "decompress", "info")


def run() -> None:
    """The `onedc` command: main(), then, for the one-file commands, exit without the interpreter's teardown,
    which takes 0.3-0.5 s after importing torch (a quarter of `onedc decompress` of a small file). Their files are
    closed by then (atomic writes); standard output and error are flushed here. Other commands (training, bundles,
    evaluation) exit normally, so that atexit handlers (e.g. of torch.distributed) run."""
    import os

    code = main()
    if len(sys.argv) < 2 or sys.argv[1] not in QUICK_EXIT_COMMANDS:
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
