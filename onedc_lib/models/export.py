"""The generator and the VAE decoder as one TorchScript graph, so that decoding imports neither diffusers nor peft
(issue 8: `onedc decompress` starts in < 2 s; importing diffusers alone takes 4-5 s). A VAE slot of plain torch
modules (pixel_sr) needs no diffusers: only the generator is traced, the slot runs as itself (DecoderGraph).

`export_graph(model)` traces the real diffusers modules (the peft LoRA layers as they are, so the graph computes
what the modules compute) with `torch.jit.trace_module`: method `generate` (g_s feature, tokens -> x0) and method
`decode` (latent -> image in [-1, 1], one whole VAE decode). Traced graphs follow the input's size wherever the
modules compute with it; the one Python loop over sizes, the VAE's windowed attention, is traced as a scripted
function (`vae.windowed_attention`). The branches baked in are those of every size the codec decodes: its latents
are multiples of 8 (images padded to 64), so the UNet never takes diffusers' odd-size upsampling branch (2^3 at
most for SD-1.5). The model's own tensors are stripped from the archive: the graph depends on
the architecture only (one file serves every model of a preset), and `load_graph` fills in the tensors of the
model being loaded, by their state_dict names, so a graph never carries stale weights.

Where graphs live (`find_graph`): `<bundled dir>/_graphs/` (written by `onedc bundle`) and the user cache
`$ONEDC_CACHE/decoder_graphs` (default ~/.cache/onedc), built there on a model's first decode-only load (`save_graph`), written
atomically. The file name is a hash of the architecture and of the torch, diffusers and peft versions; the file
holds the SHA-256 of its archive, so a corrupt or foreign file is rebuilt, never run.
"""
from __future__ import annotations

import hashlib
import io
import json
import warnings
from importlib import metadata
from pathlib import Path

import torch
from torch import nn

from ..config import ModelConfig, identity_dict
from ..paths import bundled_dir, cache_root

EXPORT_FORMAT = 2  # bump when what export_graph traces changes: older graphs are then rebuilt
BUNDLED_GRAPHS = "_graphs"  # folder of the bundled dir
CACHE_GRAPHS = "decoder_graphs"  # folder of the user cache
META = "onedc.json"  # extra file of the archive: key and the stripped tensors' names and shapes


class GraphError(ValueError):
    """A graph file that cannot be used (corrupt, for another architecture, or missing tensors)."""


class DecoderGraph:
    """A loaded graph: `generate(ctrl, tokens) -> x0` and `decode(latent) -> image in [-1, 1]` (a whole decode,
    no tiling), on `device`, holding float32 tensors under the model's state_dict names (`tensors`).

    A VAE slot made of plain torch modules (`plain_vae`: the pixel_sr decoders) is not traced but runs as itself
    (`vae`): it needs no diffusers, and its graph was no faster and took 3.5 GB against 1.1 GB (a 768x512 decode
    with Real-ESRGAN x4plus)."""

    def __init__(self, module: torch.jit.ScriptModule, names: list[str], vae: nn.Module | None = None):
        self.module = module
        self.names = names
        self.vae = vae
        self.device = torch.device("cpu")

    # Without TorchScript's optimising executor: it profiles the first calls and re-optimises the graph, which
    # costs a one-shot decode (a CLI process) 0.3 s more than it saves on CPU.
    # The traced parts run float32 whatever autocast is active; the plain VAE follows it.
    def generate(self, ctrl: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        with torch.jit.optimized_execution(False), torch.autocast(ctrl.device.type, enabled=False):
            return self.module.generate(ctrl.float(), tokens.float())

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        if self.vae is not None:
            return self.vae.decode(latent)
        with torch.jit.optimized_execution(False), torch.autocast(latent.device.type, enabled=False):
            return self.module.decode(latent.float())

    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """The model tensors the graph holds whose names start with `prefix`, without the prefix."""
        found = {name: _attribute(self.module, name) for name in self.names}
        if self.vae is not None:
            found.update({f"vae.{k}": v for k, v in self.vae.state_dict().items()})
        return {name[len(prefix):]: value for name, value in found.items() if name.startswith(prefix)}


def plain_vae(config: ModelConfig) -> bool:
    """Whether the VAE slot is plain torch (no diffusers): it then runs as a module, not as a traced graph."""
    return config.vae.kind == "pixel_sr"


class _Traced(nn.Module):
    """What is traced: the model's generator and VAE under their own names (so the graph's tensors are named as
    in the model's state_dict)."""

    def __init__(self, generator: nn.Module, vae: nn.Module | None):
        super().__init__()
        self.generator = generator
        self.vae = vae

    def generate(self, ctrl: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.generator(ctrl, tokens).x0

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent)


def graph_key(config: ModelConfig) -> str:
    """What a graph depends on: the generator and VAE configs, the g_s width, and the versions that trace it."""
    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "none"

    parts = identity_dict(config, ("generator", "vae"))
    facts = {"format": EXPORT_FORMAT, "generator": parts["generator"], "vae": parts["vae"],
             "ctrl_ch": config.codec.ctrl_ch, "torch": torch.__version__,
             "diffusers": version("diffusers"), "peft": version("peft")}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:32]


def export_graph(model) -> bytes:
    """The graph file of a whole (not decode-only) CPU model: SHA-256 of the archive, then the archive."""
    if model.decode_only:
        raise ValueError("export_graph needs the whole model (its diffusers generator and VAE)")
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("export_graph traces on the CPU: move the model there first")
    config = model.config
    unet = config.generator.unet
    latent_ch = config.vae.latent_channels
    h, w = 16, 24  # any size: the graph follows the input's (tests check others)
    examples = {"generate": (torch.randn(1, config.codec.ctrl_ch, h, w),
                             torch.randn(1, 6, unet["cross_attention_dim"]))}
    plain = plain_vae(config)
    if not plain:
        examples["decode"] = (torch.randn(1, latent_ch, h, w),)
    traced_parts = ("generator.",) if plain else ("generator.", "vae.")
    traced_module = _Traced(model.generator, None if plain else model.vae).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings: the constant Python branches are what decoding takes
        traced = torch.jit.trace_module(traced_module, examples, check_trace=False)
        stripped = {}
        for name in model.state_dict():
            if name.startswith(traced_parts):
                stripped[name] = list(_attribute(traced, name).shape)
                _set_attribute(traced, name, torch.empty(0))
        meta = json.dumps({"key": graph_key(config), "tensors": stripped})
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer, _extra_files={META: meta})
    archive = buffer.getvalue()
    return hashlib.sha256(archive).digest() + archive


def load_graph(data: bytes, config: ModelConfig, tensors: dict[str, torch.Tensor]) -> DecoderGraph:
    """A graph file -> DecoderGraph holding `tensors` (the whole model's state_dict, any float dtype; cast to
    float32 as the model's parameters). GraphError when the file is corrupt, for another architecture or
    version, or when `tensors` lack one of its tensors or have another shape."""
    digest, archive = data[:32], data[32:]
    if len(data) < 32 or hashlib.sha256(archive).digest() != digest:
        raise GraphError("the graph file is corrupt (its SHA-256 does not match)")
    extra = {META: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation notice
            module = torch.jit.load(io.BytesIO(archive), map_location="cpu", _extra_files=extra)
        meta = json.loads(extra[META])
    except (RuntimeError, ValueError) as error:
        raise GraphError(f"the graph file cannot be loaded ({error})") from None
    if meta.get("key") != graph_key(config):
        raise GraphError("the graph file is for another architecture or torch/diffusers/peft version")
    for name, shape in meta["tensors"].items():
        tensor = tensors.get(name)
        if tensor is None or list(tensor.shape) != shape:
            raise GraphError(f"the model's tensors do not fit the graph: {name} is "
                             f"{'missing' if tensor is None else list(tensor.shape)}, the graph needs {shape}")
        _set_attribute(module, name, _aligned(tensor))
    vae = None
    if plain_vae(config):
        from .vae import build_vae

        with torch.device("meta"):  # no random initialisation of weights about to be replaced (0.15 s)
            vae = build_vae(config.vae).eval()
        state = {k[len("vae."):]: _aligned(v) for k, v in tensors.items() if k.startswith("vae.")}
        try:
            vae.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as error:
            raise GraphError(f"the model's VAE tensors do not fit its VAE slot ({error})") from None
    return DecoderGraph(module.eval(), list(meta["tensors"]), vae)


def bundled_graph(bundled: Path, config: ModelConfig) -> Path:
    """The graph file of this architecture in a bundled-models folder."""
    return bundled / BUNDLED_GRAPHS / f"{graph_key(config)}.pt"


def graph_paths(config: ModelConfig) -> list[Path]:
    """Where the graph of this architecture is looked for, in order: bundled, then the user cache."""
    return [bundled_graph(bundled_dir(), config), cache_root() / CACHE_GRAPHS / f"{graph_key(config)}.pt"]


def find_graph(config: ModelConfig, tensors: dict[str, torch.Tensor]) -> DecoderGraph | None:
    """The first usable graph of graph_paths, loaded with `tensors`; None when there is none. A file that
    cannot be used is skipped (a warning says why; `save_graph` rewrites it)."""
    for path in graph_paths(config):
        if path.is_file():
            try:
                return load_graph(path.read_bytes(), config, tensors)
            except GraphError as error:
                warnings.warn(f"{path}: {error}; not used", stacklevel=2)
    return None


def save_graph(model, path: Path | None = None) -> Path:
    """Writes the graph of a whole model to `path` (default: its place in the user cache) unless a usable one is
    there; `onedc bundle` writes `<bundled dir>/_graphs/<key>.pt`."""
    from ..bitstream import atomic_write

    path = Path(path) if path is not None else graph_paths(model.config)[-1]
    if path.is_file():
        try:
            load_graph(path.read_bytes(), model.config, model.state_dict())
            return path
        except GraphError:
            pass  # rewritten below
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, export_graph(model))
    return path


def _aligned(tensor: torch.Tensor) -> torch.Tensor:
    """float32, contiguous, 64-byte aligned on the CPU: safetensors' own buffers may be unaligned, and kernels
    then round differently."""
    tensor = tensor.detach().to("cpu", torch.float32).contiguous()
    return tensor.clone() if tensor.data_ptr() % 64 else tensor


def _attribute(module, name: str):
    *path, leaf = name.split(".")
    for part in path:
        module = getattr(module, part)
    return getattr(module, leaf)


def _set_attribute(module, name: str, value: torch.Tensor) -> None:
    *path, leaf = name.split(".")
    for part in path:
        module = getattr(module, part)
    setattr(module, leaf, value)
