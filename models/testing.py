"""Tiny stand-ins for tests and smoke runs: a 2-layer BERT directory with the packaged tokenizer.

Why: unit tests must exercise the real code paths (tokenizer, attention masks, layer split, bundle
save/load) in seconds on 2 CPU cores; a 32-wide random BERT with the MiniLM vocabulary does, and "any local
Hugging Face BERT directory" is exactly what ``--text-encoder`` accepts.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from models.text_model import default_encoder_dir

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def tiny_bert_dir(path: str | Path, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """Write a random tiny BERT (safetensors + config + the MiniLM tokenizer files) to ``path``."""
    import torch
    from transformers import BertConfig, BertModel

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=hidden * 2, max_position_embeddings=128)
    BertModel(cfg, add_pooling_layer=False).save_pretrained(str(out))
    src = default_encoder_dir()
    for fn in _TOKENIZER_FILES:
        if (src / fn).exists():
            shutil.copyfile(src / fn, out / fn)
    return out
