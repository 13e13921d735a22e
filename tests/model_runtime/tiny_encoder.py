"""Tiny random BERT folders for the embedding-model tests, written without any network."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import BertConfig, BertModel, BertTokenizerFast

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TEXT_WORDS = "the cat sat on a mat dog ran in park bird sang song red blue green hello world"
WORDS = SPECIAL + TEXT_WORDS.split(" ")
HIDDEN = 32
MAX_POSITIONS = 64


def write_tiny_bert(folder: Path, *, cls_pooling: bool = False, seed: int = 0) -> Path:
    """A 2-layer random BertModel saved as safetensors, with a tokenizer over `WORDS`. With
    `cls_pooling`, also the sentence-transformers files that ask for the [CLS] token's state."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    BertTokenizerFast(vocab={w: i for i, w in enumerate(WORDS)}).save_pretrained(folder)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(WORDS),
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=MAX_POSITIONS,
    )
    BertModel(config).save_pretrained(folder, safe_serialization=True)
    if cls_pooling:
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ]
        (folder / "modules.json").write_text(json.dumps(modules))
        (folder / "1_Pooling").mkdir(exist_ok=True)
        pooling = {
            "word_embedding_dimension": HIDDEN,
            "pooling_mode_cls_token": True,
            "pooling_mode_mean_tokens": False,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        }
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
        (folder / "2_Normalize").mkdir(exist_ok=True)
    return folder
