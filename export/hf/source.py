"""What a local Hugging Face model directory holds, checked before anything heavy is loaded.

`inspect_source` reads only JSON files and file names (no torch, no transformers), so a directory that is not an
encoder, reranker or classifier fails at once with one line naming what is missing or unsupported, and nothing is
written. What it finds:

- the model files' root: the directory itself, or the `Transformer` module's folder of a sentence-transformers
  directory (`modules.json`);
- the family (`model_type` in config.json) among those transformers exports to one ONNX graph here, and the head
  the task needs (`*ForSequenceClassification` with one label for rerank, labelled `id2label` for classify);
- embed: pooling and normalisation from the sentence-transformers files (`1_Pooling/config.json` in its current or
  legacy form, a `Normalize` module), else from the flags (mean pooling and normalisation by default);
- the window in tokens: sentence_bert_config.json's `max_seq_length` when present, else the smaller of the
  tokenizer's `model_max_length` and the model's position limit; `--max-length` overrides both within the limit.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

from export.errors import ModelSourceError, OptionError

TASKS = ("embed", "rerank", "classify")
# families whose transformers models export to one ONNX graph with dynamic batch and sequence axes (torch.onnx,
# opset 17) and match transformers on ONNX Runtime
SUPPORTED = ("albert", "bert", "camembert", "deberta-v2", "distilbert", "electra", "mpnet", "roberta", "xlm-roberta")
POSITION_OFFSET = ("camembert", "mpnet", "roberta", "xlm-roberta")  # position ids start after the pad token's id
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
VOCABULARIES = ("vocab.txt", "sentencepiece.bpe.model", "spm.model", "spiece.model", "tokenizer.model", "vocab.json")
POOLINGS = ("mean", "cls", "lasttoken", "max", "mean_sqrt_len_tokens")
LEGACY_POOLING = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean",
                  "pooling_mode_max_tokens": "max", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                  "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}
ST_MODULES = ("Transformer", "Pooling", "Normalize")
MULTI_LABEL = "multi_label_classification"
SINGLE_LABEL = "single_label_classification"


@dataclass(frozen=True)
class Embedding:
    """How token states become one vector (inside the exported graph)."""

    pooling: str
    normalize: bool
    prefix: str


@dataclass(frozen=True)
class Labels:
    """A sequence-classification head: label names in id order and how logits become scores."""

    names: tuple[str, ...]
    problem_type: str  # single_label_classification (softmax) | multi_label_classification (sigmoid) | rerank's

    @property
    def activation(self) -> str:
        return "softmax" if self.problem_type == SINGLE_LABEL else "sigmoid"


@dataclass(frozen=True)
class HfSource:
    """A checked model directory and what the export of `task` needs from it."""

    directory: Path
    root: Path
    task: str
    model_type: str
    architecture: str
    config: dict
    max_length: int
    sentence_transformers: bool  # modules.json describes the embedding: sentence-transformers is the reference
    embedding: Embedding | None = None
    labels: Labels | None = None

    @property
    def pad_token_id(self) -> int:
        return int(self.config.get("pad_token_id") or 0)

    def describe(self) -> str:
        """One line for the export's output."""
        what = (f"{self.directory}: {self.architecture} ({self.model_type}), --task {self.task}, "
                f"{self.max_length} tokens")
        if self.embedding is not None:
            origin = "sentence-transformers files" if self.sentence_transformers else "flags"
            what += (f", {self.embedding.pooling} pooling, {'' if self.embedding.normalize else 'not '}normalised "
                     f"({origin})")
            if self.embedding.prefix:
                what += f", prefix {self.embedding.prefix!r}"
        if self.labels is not None and self.task == "classify":
            what += f", {len(self.labels.names)} labels ({self.labels.activation})"
        return what


def default_name(directory: Path) -> str:
    """The model name a directory gives: its name with characters other than letters, digits, `_`, `-` and `.`
    replaced by `-` ("" when nothing is left)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(directory).resolve().name).strip("-.")


def check_name(name: str, directory: Path) -> None:
    """A name Triton serves and a URL carries as it is."""
    if not name:
        raise OptionError(f"cannot make a model name from the directory name of {directory}: pass --name")
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
        raise OptionError(f"--name {name!r}: use letters, digits, '_', '-' and '.' (not first)")


def _json(path: Path) -> dict | list:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelSourceError(f"{path} cannot be read as JSON: {exc}") from None


def _st_modules(directory: Path) -> list[dict] | None:
    """modules.json's entries, or None when the directory is not a sentence-transformers one."""
    path = directory / "modules.json"
    if not path.exists():
        return None
    modules = _json(path)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise ModelSourceError(f"{path} is not a list of modules")
    return modules


def _module(entry: dict) -> str:
    return str(entry.get("type", "")).rpartition(".")[2]


def _root(directory: Path, modules: list[dict] | None, task: str) -> Path:
    if modules is None:
        return directory
    if task == "embed":
        unsupported = [f"{_module(m)} ({m.get('path') or m.get('name')})" for m in modules
                       if _module(m) not in ST_MODULES]
        if unsupported:
            raise ModelSourceError(
                f"{directory}: sentence-transformers module {', '.join(unsupported)} is not supported by export hf, "
                "which exports Transformer → Pooling → Normalize")
    transformer = next((m for m in modules if _module(m) == "Transformer"), None)
    return directory / str(transformer.get("path", "")) if transformer else directory


def _checked_files(directory: Path, root: Path) -> dict:
    config_path = root / "config.json"
    if not config_path.exists():
        raise ModelSourceError(
            f"{directory} has no config.json: not a Hugging Face transformers model directory (save one with "
            "`model.save_pretrained(DIR)` and `tokenizer.save_pretrained(DIR)`)")
    config = _json(config_path)
    if not isinstance(config, dict):
        raise ModelSourceError(f"{config_path} is not a JSON object")
    model_type = str(config.get("model_type", ""))
    architecture = (config.get("architectures") or [model_type or "unknown"])[0]
    if model_type not in SUPPORTED:
        raise ModelSourceError(
            f"{directory}: architecture {architecture} (model_type {model_type!r}) is not supported by export hf, "
            f"which exports encoder models: {', '.join(SUPPORTED)}")
    if not any((root / name).exists() for name in WEIGHTS):
        others = sorted(p.name for p in root.glob("*") if p.suffix in (".h5", ".msgpack", ".onnx"))
        raise ModelSourceError(
            f"{directory} has no weights: expected {' or '.join(WEIGHTS[::2])} (or a sharded *.index.json)"
            + (f"; {', '.join(others)} cannot be loaded" if others else ""))
    has_vocabulary = (root / "tokenizer_config.json").exists() and any((root / v).exists() for v in VOCABULARIES)
    if not (root / "tokenizer.json").exists() and not has_vocabulary:
        raise ModelSourceError(
            f"{directory} has no tokenizer: expected tokenizer.json (or tokenizer_config.json with vocab.txt, "
            "sentencepiece.bpe.model, spm.model or vocab.json + merges.txt): save it with "
            "`tokenizer.save_pretrained(DIR)`")
    return config


def _position_limit(config: dict) -> int | None:
    positions = config.get("max_position_embeddings")
    if not isinstance(positions, int) or positions <= 0:
        return None
    offset = int(config.get("pad_token_id") or 0) + 1 if config.get("model_type") in POSITION_OFFSET else 0
    return positions - offset


def _max_length(root: Path, config: dict, override: int | None) -> int:
    limit = _position_limit(config)
    if override is not None:
        if override < 1 or (limit is not None and override > limit):
            raise OptionError(f"--max-length {override}: the model takes 1 to {limit} tokens")
        return override
    candidates: list[int] = []
    st_config = root / "sentence_bert_config.json"
    st_length = _json(st_config).get("max_seq_length") if st_config.exists() else None
    if isinstance(st_length, int) and st_length > 0:
        candidates.append(st_length)
    else:
        tokenizer_config = root / "tokenizer_config.json"
        length = _json(tokenizer_config).get("model_max_length") if tokenizer_config.exists() else None
        if isinstance(length, int | float) and 0 < length < 1_000_000:
            candidates.append(int(length))
    if limit is not None:
        candidates.append(limit)
    if not candidates:
        raise ModelSourceError(f"{root}: neither the tokenizer nor config.json gives a maximum length: pass "
                               "--max-length")
    return min(candidates)


def _st_pooling(directory: Path, modules: list[dict]) -> tuple[str, bool, bool]:
    """(pooling mode, normalise, include_prompt) from the sentence-transformers files."""
    pooling = next((m for m in modules if _module(m) == "Pooling"), None)
    if pooling is None:
        raise ModelSourceError(f"{directory}/modules.json has no Pooling module: export hf needs one sentence vector")
    config = _json(directory / str(pooling.get("path", "")) / "config.json")
    mode = config.get("pooling_mode")
    if mode is None:
        modes = [name for key, name in LEGACY_POOLING.items() if config.get(key)] or ["mean"]
    else:
        modes = [mode] if isinstance(mode, str) else list(mode)
    if len(modes) != 1 or modes[0] not in POOLINGS:
        raise ModelSourceError(
            f"{directory}: pooling {'+'.join(map(str, modes))} is not supported by export hf "
            f"(supported: {', '.join(POOLINGS)})")
    normalize = any(_module(m) == "Normalize" for m in modules)
    return modes[0], normalize, bool(config.get("include_prompt", True))


def _default_prompt(directory: Path) -> str:
    """The prompt sentence-transformers prepends by default (`default_prompt_name`), or ""."""
    path = directory / "config_sentence_transformers.json"
    if not path.exists():
        return ""
    config = _json(path)
    name = config.get("default_prompt_name")
    return str((config.get("prompts") or {}).get(name, "")) if name else ""


def _embedding(directory: Path, modules: list[dict] | None, pooling: str | None, normalize: bool | None,
               prefix: str | None) -> Embedding:
    if modules is None:
        return Embedding(pooling or "mean", True if normalize is None else normalize, prefix or "")
    mode, st_normalize, include_prompt = _st_pooling(directory, modules)
    if pooling is not None and pooling != mode:
        raise OptionError(f"--pooling {pooling} contradicts {directory}'s sentence-transformers files ({mode} "
                          "pooling): leave the flag out")
    if normalize is not None and normalize != st_normalize:
        raise OptionError(f"--{'' if normalize else 'no-'}normalize contradicts {directory}'s sentence-transformers "
                          f"files ({'a' if st_normalize else 'no'} Normalize module): leave the flag out")
    prefix = _default_prompt(directory) if prefix is None else prefix
    if prefix and not include_prompt:
        raise OptionError(f"{directory} pools without the prompt's tokens (include_prompt false), which export hf "
                          "cannot reproduce: leave --prefix out")
    return Embedding(mode, st_normalize, prefix)


def _labels(directory: Path, config: dict, architecture: str, task: str) -> Labels:
    if not any(a.endswith("ForSequenceClassification") for a in config.get("architectures") or []):
        raise ModelSourceError(
            f"{directory} holds a {architecture}, without a sequence-classification head: --task {task} needs a "
            "*ForSequenceClassification checkpoint" + (" (a cross-encoder)" if task == "rerank" else "")
            + "; --task embed exports an encoder")
    id2label = config.get("id2label")
    count = len(id2label) if isinstance(id2label, dict) and id2label else int(config.get("num_labels", 2))
    problem_type = str(config.get("problem_type") or "")
    if task == "rerank":
        if count != 1:
            names = ", ".join(str(v) for v in (id2label or {}).values())
            raise ModelSourceError(
                f"--task rerank needs a cross-encoder with one output (a relevance logit); {directory}'s "
                f"{architecture} has {count} labels ({names}): use --task classify")
        return Labels(("score",), problem_type or "regression")
    if not isinstance(id2label, dict) or not id2label:
        raise ModelSourceError(f"{directory}/config.json has no id2label: --task classify needs the label names "
                               "(set config.id2label and config.label2id, then save the model again)")
    if count == 1:
        raise ModelSourceError(f"{directory}'s {architecture} has one output, a score and no labels: use --task "
                               "rerank")
    if problem_type not in ("", SINGLE_LABEL, MULTI_LABEL):
        raise ModelSourceError(f"{directory}: problem_type {problem_type!r} is not a classification (expected "
                               f"{SINGLE_LABEL} or {MULTI_LABEL})")
    try:
        names = tuple(str(id2label[k]) for k in sorted(id2label, key=int))
    except ValueError:
        raise ModelSourceError(f"{directory}/config.json: id2label keys must be label ids (0, 1, …)") from None
    if sorted(map(int, id2label)) != list(range(count)):
        raise ModelSourceError(f"{directory}/config.json: id2label must name labels 0 to {count - 1}")
    return Labels(names, problem_type or SINGLE_LABEL)


def inspect_source(directory: Path, task: str, *, pooling: str | None = None, normalize: bool | None = None,
                   prefix: str | None = None, max_length: int | None = None) -> HfSource:
    """Check `directory` for `task` (ModelSourceError or OptionError, one line, when it does not fit)."""
    if task not in TASKS:
        raise OptionError(f"--task {task!r}: expected one of {', '.join(TASKS)}")
    if task != "embed" and (pooling is not None or normalize is not None or prefix):
        raise OptionError("--pooling, --normalize and --prefix apply to --task embed only")
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelSourceError(f"{directory} is not a directory: give the local directory that holds the model "
                               "(config.json, weights, tokenizer)")
    modules = _st_modules(directory)
    root = _root(directory, modules, task)
    config = _checked_files(directory, root)
    model_type = str(config["model_type"])
    architecture = (config.get("architectures") or [model_type])[0]
    source = HfSource(directory=directory, root=root, task=task, model_type=model_type, architecture=architecture,
                      config=config, max_length=_max_length(root, config, max_length),
                      sentence_transformers=task == "embed" and modules is not None)
    if task == "embed":
        return replace(source, embedding=_embedding(directory, modules, pooling, normalize, prefix))
    return replace(source, labels=_labels(directory, config, architecture, task))
