"""Generation parity: greedy decoding with the exported ONNX decoder vs transformers `generate`, token for token.

Checks on a fixed prompt set (chat template applied by the tokenizer, as served):
- single: each prompt alone through `greedy_generate` must produce exactly the tokens of
  transformers `generate(do_sample=False)`; the max abs logit difference is reported for the prefill step
  and for the decode steps (up to the first differing token) and gated on `atol`;
- batched: the prompts prefilled in three arrivals, as the served scheduler does when requests come together: the
  first two in one right-padded pass, the next ones in one pass, each over the system prompt cached by the first
  ones, and the last one in chunks of `PREFILL_CHUNK` tokens (chunked prefill, `llm_engine.PromptPrefill`); then decoded
  together as one continuous batch (rows of different lengths, rows leave when they finish); must produce the same
  tokens as the single runs;
- template: the served prompt builder (`llm_text.PromptBuilder`: jinja + tokenizers, no transformers) must give
  the same prompt ids as transformers' `apply_chat_template`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from export.errors import ParityError

PROMPTS = (
    "What is the capital of France?",
    "Name three primary colors.",
    "Write a haiku about the sea.",
    "What is 2 + 2?",
    "Translate 'good morning' into Spanish.",
)
MAX_NEW_TOKENS = 24
DEFAULT_ATOL = 1e-2
PREFILL_CHUNK = 5  # prompt tokens per pass of the chunked prefill in the batched check


@dataclass
class GenerationParity:
    """Token-for-token equality and logit differences of the ONNX decoder vs transformers."""

    label: str
    prompts: Sequence[str]
    reference: list[list[int]]
    single: list[list[int]]
    batched: list[list[int]]
    prefill_max_abs_diff: float
    decode_max_abs_diff: float
    atol: float
    answers: list[str] = field(default_factory=list)
    template_mismatches: list[int] = field(default_factory=list)

    @property
    def mismatches(self) -> list[int]:
        """Prompts whose single-stream tokens differ from the reference."""
        return [i for i, (a, b) in enumerate(zip(self.single, self.reference, strict=True)) if a != b]

    @property
    def batch_mismatches(self) -> list[int]:
        """Prompts whose batched tokens differ from their single-stream tokens."""
        return [i for i, (a, b) in enumerate(zip(self.batched, self.single, strict=True)) if a != b]

    @property
    def max_abs_diff(self) -> float:
        return max(self.prefill_max_abs_diff, self.decode_max_abs_diff)

    @property
    def passed(self) -> bool:
        finite = bool(np.isfinite(self.max_abs_diff))
        exact = not self.mismatches and not self.batch_mismatches and not self.template_mismatches
        return finite and exact and self.max_abs_diff <= self.atol

    def describe(self) -> str:
        """A short multi-line report, printed by the CLI."""
        tokens = sum(len(t) for t in self.reference)
        lines = [
            f"parity [{self.label}] on {len(self.prompts)} prompts, {tokens} greedy tokens: "
            f"{'PASS' if self.passed else 'FAIL'}",
            f"  token-for-token vs transformers generate: {len(self.prompts) - len(self.mismatches)}"
            f"/{len(self.prompts)} equal",
            f"  batched (bursts in one pass, prefix reuse, chunked prefill, continuous) vs single: "
            f"{len(self.prompts) - len(self.batch_mismatches)}/{len(self.prompts)} equal",
            f"  served chat template vs transformers apply_chat_template: "
            f"{len(self.prompts) - len(self.template_mismatches)}/{len(self.prompts)} equal",
            f"  max abs logit diff: prefill {self.prefill_max_abs_diff:.3e}, decode {self.decode_max_abs_diff:.3e}"
            f"  (atol {self.atol})",
        ]
        lines += [f"  {p!r} → {a!r}" for p, a in zip(self.prompts, self.answers, strict=False)]
        return "\n".join(lines)


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """The served prompt tokens: the chat template with the generation prompt, one user message."""
    messages = [{"role": "user", "content": prompt}]
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    return list(encoded["input_ids"])


def reference_generate(model, ids: list[int], max_new_tokens: int) -> tuple[list[int], list[np.ndarray]]:
    """transformers greedy `generate`: (new tokens, logits of each step)."""
    import torch

    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.int64),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=model.generation_config.pad_token_id,
        )
    tokens = out.sequences[0, len(ids) :].tolist()
    return tokens, [step[0].float().numpy() for step in out.logits]


def batched_greedy(decoder, prompts: Sequence[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Greedy decoding of all prompts as one continuous batch, as the served model runs them when requests arrive in
    bursts (`Decoder.prefill_many`): the first two prompts in one pass (nothing cached yet: right-padded to the
    longer), the next ones in one pass, each over the system prompt the first ones cached, the last one (from 4
    prompts on) in chunks of `PREFILL_CHUNK` tokens over that prefix; then merged and decoded together."""
    from triton_models.llm_prefix import PrefixCache

    eos = set(decoder.info.eos_token_ids)
    outputs: list[list[int]] = [[] for _ in prompts]
    rows: list[int] = []
    batch = None
    prefixes = PrefixCache(max_tokens=4096)  # the prompts share the chat template's system prompt
    last = len(prompts) - 1 if len(prompts) >= 4 else len(prompts)
    arrivals = [list(range(min(2, len(prompts)))), list(range(2, last)), list(range(last, len(prompts)))]
    for group in filter(None, arrivals):
        if group[0] == last:
            logits, grouped = _chunked(decoder, prompts[last], prefixes)
        else:
            logits, grouped = decoder.prefill_many([prompts[i] for i in group], prefixes)
        going = []
        for r, i in enumerate(group):
            outputs[i].append(int(np.argmax(logits[r])))
            if outputs[i][-1] not in eos and max_new_tokens > 1:
                going.append(r)
                rows.append(i)
        if going:
            grouped = grouped.selected(going) if len(going) < len(group) else grouped
            batch = grouped if batch is None else batch.merged(grouped)
    while rows:
        logits, batch = decoder.decode([outputs[i][-1] for i in rows], batch)
        keep = []
        for r, i in enumerate(rows):
            outputs[i].append(int(np.argmax(logits[r])))
            if outputs[i][-1] not in eos and len(outputs[i]) < max_new_tokens:
                keep.append(r)
        rows = [rows[r] for r in keep]
        batch = batch.selected(keep) if rows else None
    return outputs


def _chunked(decoder, prompt: list[int], prefixes):
    """Prefill `prompt` `PREFILL_CHUNK` tokens at a time: (logits [1, V], its row)."""
    prefill = decoder.prefill_start(prompt, prefixes)
    while (logits := prefill.advance(PREFILL_CHUNK)) is None:
        pass
    return logits[None], prefill.slots


def _common_prefix(a: list[int], b: list[int]) -> int:
    return next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def _diffs(candidate: list[np.ndarray], reference: list[np.ndarray], same: int) -> tuple[float, float]:
    prefill = float(np.abs(candidate[0] - reference[0]).max())
    pairs = zip(candidate[1 : same + 1], reference[1 : same + 1], strict=False)
    steps = [float(np.abs(c - r).max()) for c, r in pairs]
    return prefill, max(steps, default=0.0)


Adjust = Callable[[np.ndarray, list[int]], None]  # (a step's logits, tokens so far): changes the logits in place


def greedy_generate(decoder, prompt: Sequence[int], max_new_tokens: int,
                    adjust: Adjust | None = None) -> tuple[list[int], list[np.ndarray]]:
    """Greedy decoding of one prompt with `llm_engine.Decoder` (no stop but the eos ids): (new token ids, logits of
    every step). `adjust(logits, tokens so far)` may change a copy of each step's logits before the argmax."""
    logits, batch = decoder.prefill(prompt)
    tokens: list[int] = []
    history = [logits]
    eos = set(decoder.info.eos_token_ids)
    while True:
        chosen = logits
        if adjust is not None:
            chosen = logits.copy()
            adjust(chosen, tokens)
        token = int(np.argmax(chosen))
        tokens.append(token)
        if token in eos or len(tokens) >= max_new_tokens:
            return tokens, history
        step_logits, batch = decoder.decode([token], batch)
        logits = step_logits[0]
        history.append(logits)


def check(model, tokenizer, decoder, served=None, *, prompts: Sequence[str] = PROMPTS,
          max_new_tokens: int = MAX_NEW_TOKENS, atol: float = DEFAULT_ATOL,
          label: str = "fp32 ONNX decoder with KV cache") -> GenerationParity:
    """Run the checks (see module docstring); `served` is the served prompt builder, if any."""
    encoded = [prompt_ids(tokenizer, p) for p in prompts]
    template_mismatches = []
    if served is not None:  # llm_text.PromptBuilder over the written assets
        template_mismatches = [i for i, (p, ids) in enumerate(zip(prompts, encoded, strict=True))
                               if served.chat_ids([{"role": "user", "content": p}]) != ids]
    reference, single, prefill_diff, decode_diff = [], [], 0.0, 0.0
    for ids in encoded:
        ref_tokens, ref_logits = reference_generate(model, ids, max_new_tokens)
        tokens, logits = greedy_generate(decoder, ids, max_new_tokens)
        same = _common_prefix(tokens, ref_tokens)
        prefill, decode = _diffs(logits, ref_logits, same)
        prefill_diff, decode_diff = max(prefill_diff, prefill), max(decode_diff, decode)
        reference.append(ref_tokens)
        single.append(tokens)
    batched = batched_greedy(decoder, encoded, max_new_tokens)
    answers = [tokenizer.decode(t, skip_special_tokens=True) for t in single]
    return GenerationParity(label, prompts, reference, single, batched, prefill_diff, decode_diff, atol, answers,
                            template_mismatches)


def enforce(report: GenerationParity) -> None:
    """Raise ParityError (report attached) unless every check passed."""
    if report.passed:
        return
    if report.mismatches:
        reason = f"greedy tokens differ from transformers for prompts {report.mismatches}"
    elif report.template_mismatches:
        reason = f"the served chat template tokenizes prompts {report.template_mismatches} differently"
    elif report.batch_mismatches:
        reason = f"batched decoding differs from single-stream decoding for prompts {report.batch_mismatches}"
    else:
        reason = f"max abs logit diff {report.max_abs_diff:.3e} exceeds the gate {report.atol}"
    raise ParityError(f"parity check failed for {report.label}: {reason}; nothing was written", report)
