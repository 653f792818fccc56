"""The exported decoder graph (models/export.py): the same numbers as the diffusers modules at every latent size the
codec produces, a decode-only model with the whole model's id and images, a corrupt cache rebuilt."""
import json
import warnings

import pytest
import torch

from onedc_lib.config import load_config
from onedc_lib.eval.timing import make_image
from onedc_lib.models.export import GraphError, export_graph, graph_paths, load_graph
from onedc_lib.models.onedc import REFERENCE_DECODING, DecodeOptions
from onedc_lib.weights import BUNDLED_DIR, DEFAULT_MODEL, build_model, load_model, save_model

FLOAT32, BFLOAT16 = DecodeOptions(dtype=torch.float32), DecodeOptions(dtype=torch.bfloat16)


@pytest.fixture(scope="module")
def model():
    return build_model("nano_q3", seed=3)


@pytest.fixture(scope="module")
def folder(model, tmp_path_factory):
    return save_model(model, tmp_path_factory.mktemp("model") / "nano")


@pytest.fixture(scope="module")
def graph_file(model):
    return export_graph(model)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty user cache."""
    monkeypatch.setenv("ONEDC_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def cached(model, graph_file, cache):
    """A user cache holding the model's graph."""
    path = graph_paths(model.config)[-1]
    path.parent.mkdir(parents=True)
    path.write_bytes(graph_file)
    return path


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean().clamp_min(1e-20)))


def test_graph_computes_what_the_modules_compute(model, graph_file):
    graph = load_graph(graph_file, model.config, model.state_dict())
    # latents of the sizes the codec decodes (multiples of 8): one VAE attention window, edge windows of 8, many
    for h, w in [(8, 8), (8, 40), (24, 8), (40, 56)]:
        gen = torch.Generator().manual_seed(h * 100 + w)
        ctrl = torch.randn(1, model.config.codec.ctrl_ch, h, w, generator=gen)
        tokens = torch.randn(1, (h // 8) * (w // 8), model.config.codec.semantic_ch, generator=gen)
        latent = torch.randn(1, model.config.vae.latent_channels, h, w, generator=gen)
        with torch.no_grad():
            assert torch.equal(graph.generate(ctrl, tokens), model.generator(ctrl, tokens).x0)
            assert torch.equal(graph.decode(latent), model.vae.decode(latent))


def test_decode_only_model_decodes_as_the_whole_model(model, folder, cache):
    first = load_model(str(folder), decode_only=True)  # no graph yet: the whole model, its graph cached now
    assert not first.decode_only and graph_paths(model.config)[-1].is_file()
    decoder = load_model(str(folder), decode_only=True)
    assert decoder.decode_only and not hasattr(decoder, "generator")
    decoder.decode_options = FLOAT32  # the graph's dtype (the default is bf16 on CPUs with bf16 units)
    whole = load_model(str(folder))
    assert decoder.model_id == whole.model_id == model.model_id
    for height, width in [(16, 16), (64, 96), (136, 200)]:
        compressed = whole.compress(make_image(height, width))
        fast = decoder.decompress(compressed.to_bytes())
        whole.decode_options = DecodeOptions(exported=False, dtype=torch.float32)  # the diffusers modules
        assert torch.equal(fast, whole.decompress(compressed))
        whole.decode_options = REFERENCE_DECODING
        assert psnr(fast, whole.decompress(compressed)) > 45
    with pytest.raises(ValueError, match="decoding only"):
        decoder.compress(make_image(16, 16))


def test_decode_only_model_falls_back_to_the_modules(folder, cached):
    """A latent larger than one VAE tile (tiled decode) or exported=False: the decode-only model builds the diffusers
    modules from its graph's tensors and decodes as the whole model."""
    decoder, whole = load_model(str(folder), decode_only=True), load_model(str(folder))
    compressed = whole.compress(make_image(448, 200))  # latent 56 x 32
    for options in (DecodeOptions(vae_tile=48), DecodeOptions(exported=False)):
        decoder.decode_options = whole.decode_options = options
        assert torch.equal(decoder.decompress(compressed), whole.decompress(compressed))
    assert decoder.decode_only and hasattr(decoder, "generator")


def test_corrupt_or_foreign_graph_is_not_used(model, folder, graph_file, cached):
    good, path = graph_file, cached
    path.write_bytes(good[:-100])
    with pytest.raises(GraphError, match="corrupt"):
        load_graph(path.read_bytes(), model.config, model.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rebuilt = load_model(str(folder), decode_only=True)
    assert not rebuilt.decode_only and load_graph(path.read_bytes(), model.config, model.state_dict())
    with pytest.raises(GraphError, match="another architecture"):
        load_graph(good, load_config("nano_q3", {"generator.lora_rank": 4}), model.state_dict())
    tensors = dict(model.state_dict())
    tensors.pop("generator.unet.conv_in.weight")
    with pytest.raises(GraphError, match="conv_in.weight is missing"):
        load_graph(good, model.config, tensors)


def test_bundled_default_model_decodes_with_its_bundled_graph(monkeypatch, tmp_path, provisioned_decoders):
    if not (BUNDLED_DIR / DEFAULT_MODEL / "config.json").is_file():
        pytest.skip("no bundled default model")
    meta = json.loads((BUNDLED_DIR / DEFAULT_MODEL / "config.json").read_text())
    decoders = provisioned_decoders(meta)  # in the user's cache, before it is emptied
    cache = tmp_path / "cache"
    monkeypatch.setenv("ONEDC_CACHE", str(cache))
    if meta.get("provisioned"):  # the empty cache holds the provisioned decoders, nothing else
        cache.mkdir()
        (cache / "decoders").symlink_to(decoders)
    monkeypatch.setenv("ONEDC_BUNDLED_DIR", str(BUNDLED_DIR))
    decoder = load_model(DEFAULT_MODEL, decode_only=True)
    assert decoder.decode_only, "the bundle has no graph for this torch/diffusers/peft (run onedc bundle)"
    whole = load_model(DEFAULT_MODEL)
    assert decoder.model_id == whole.model_id
    compressed = whole.compress(make_image(96, 136))
    decoder.decode_options = FLOAT32
    fast = decoder.decompress(compressed.to_bytes())
    whole.decode_options = DecodeOptions(exported=False, dtype=torch.float32)
    assert torch.equal(fast, whole.decompress(compressed))
    whole.decode_options = REFERENCE_DECODING
    assert psnr(fast, whole.decompress(compressed)) > 45
    decoder.decode_options = BFLOAT16  # the traced generator stays float32, the plain VAE slot runs bf16
    assert psnr(decoder.decompress(compressed.to_bytes()), fast) > 40
    assert not hasattr(decoder, "generator")  # still the graph, not modules built from it
    assert sorted(p.name for p in cache.glob("*")) == (["decoders"] if meta.get("provisioned") else [])  # no export


def test_a_plain_torch_vae_slot_runs_as_its_module_not_a_graph():
    """pixel_sr: the generator is traced, the x4 decoder is not (its graph took 3x the memory for nothing)."""
    from onedc_lib.models.onedc import OneDC

    config = load_config("nano_sr", {"vae.sr_decoder": {"arch": "rrdbnet", "num_feat": 8, "num_block": 1,
                                                         "num_grow": 4}})
    torch.manual_seed(0)
    model = OneDC(config).eval()
    graph = load_graph(export_graph(model), config, model.state_dict())
    assert not graph.module._c._has_method("decode") and graph.module._c._has_method("generate")
    latent = torch.randn(1, config.vae.latent_channels, 16, 24)
    with torch.no_grad():
        assert torch.equal(graph.decode(latent), model.vae.decode(latent))
    own = model.vae.state_dict()
    assert graph.tensors("vae.").keys() == own.keys()
    assert all(torch.equal(graph.tensors("vae.")[k], v) for k, v in own.items())
    tensors = {k: v for k, v in model.state_dict().items() if k != "vae.sr.conv_last.bias"}
    with pytest.raises(GraphError, match="VAE tensors do not fit"):
        load_graph(export_graph(model), config, tensors)
