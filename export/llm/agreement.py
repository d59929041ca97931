"""The gate of `tritonstack export smollm2 --decode int8`: a decoder that may change greedy tokens, within limits.

The int8 decoder (`export.llm.int8`) cannot equal transformers token for token, so it gets a gate of its own:
- teacher-forced top-1 agreement with the fp32 reference: the exact decoder writes a greedy continuation of
  `TOKENS_PER_PROMPT` tokens for each of `PROMPTS` (end-of-sequence masked, as `min_tokens` does, so every prompt
  gives as many positions); transformers' fp32 model reads each prompt + continuation in one forward pass and gives
  its argmax at every position that predicts a continuation token; the int8 decoder is fed the same tokens (prefill
  the prompt, then one decode step per continuation token) and its argmax at each position must agree with the
  reference's at a rate of at least `MIN_AGREEMENT`, over at least `MIN_POSITIONS` positions. Feeding the
  reference's tokens (instead of letting the candidate continue on its own) counts each disagreement once, where a
  free-running comparison would count everything after the first one;
- batched equals single: the same teacher-forced positions decoded as one batch of all prompts must give the same
  argmax as the single-row runs, at every position; and the generation parity check (`export.llm.parity`: bursts in
  one padded pass, prefix reuse, chunked prefill, continuous batching) must give the same greedy tokens batched as
  one by one;
- the served chat template must tokenize as transformers does (from the same parity check).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from export.errors import ParityError
from export.llm.parity import GenerationParity

PROMPTS = (  # answers of a few hundred tokens, so each prompt fills its continuation with ordinary text
    "What is the capital of France?",
    "Write a short story about a robot who learns to paint.",
    "Explain how photosynthesis works.",
    "Give me a recipe for pancakes.",
    "What are the benefits of regular exercise?",
    "Describe the water cycle.",
    "Write a poem about autumn leaves.",
    "How do computers store information?",
)
TOKENS_PER_PROMPT = 128  # × 8 prompts = 1,024 positions
MIN_POSITIONS = 1000
MIN_AGREEMENT = 0.98


@dataclass(frozen=True)
class Agreement:
    """Top-1 agreement of a candidate's argmax with a reference's, position by position, per prompt."""

    per_prompt: tuple[tuple[int, int], ...]  # (agreeing positions, positions)

    @property
    def positions(self) -> int:
        return sum(n for _, n in self.per_prompt)

    @property
    def agreeing(self) -> int:
        return sum(a for a, _ in self.per_prompt)

    @property
    def rate(self) -> float:
        return self.agreeing / self.positions if self.positions else 0.0

    @property
    def identical(self) -> bool:
        return self.agreeing == self.positions


def top1_agreement(reference: Sequence[Sequence[int]], candidate: Sequence[Sequence[int]]) -> Agreement:
    """How many positions of each prompt have the same argmax token in `candidate` as in `reference`."""
    if len(reference) != len(candidate):
        raise ValueError(f"{len(candidate)} candidate prompts for {len(reference)} reference prompts")
    counts = []
    for i, (ref, got) in enumerate(zip(reference, candidate, strict=True)):
        if len(ref) != len(got):
            raise ValueError(f"prompt {i}: {len(got)} candidate positions for {len(ref)} reference positions")
        counts.append((int(np.sum(np.asarray(ref) == np.asarray(got))), len(ref)))
    return Agreement(tuple(counts))


def reference_continuations(decoder, prompts: Sequence[list[int]], tokens: int) -> list[list[int]]:
    """Greedy continuations of `tokens` tokens by `decoder` (the exact one), all prompts as one batch, the
    end-of-sequence ids masked out so that every continuation has `tokens` tokens."""
    eos = list(decoder.info.eos_token_ids)
    logits, batch = decoder.prefill_many(prompts)
    out: list[list[int]] = [[] for _ in prompts]
    while True:
        logits[:, eos] = -np.inf
        chosen = logits.argmax(-1)
        for row, token in zip(out, chosen, strict=True):
            row.append(int(token))
        if len(out[0]) >= tokens:
            return out
        logits, batch = decoder.decode(chosen.tolist(), batch)


def reference_argmax(model, prompts: Sequence[list[int]], continuations: Sequence[list[int]]) -> list[list[int]]:
    """transformers' argmax at each position that predicts a continuation token (teacher-forced, one pass each)."""
    import torch

    out = []
    with torch.no_grad():
        for prompt, continuation in zip(prompts, continuations, strict=True):
            ids = torch.tensor([list(prompt) + list(continuation)])
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0]
            out.append(logits[len(prompt) - 1 : -1].argmax(-1).tolist())
    return out


def teacher_forced(decoder, prompts: Sequence[list[int]], continuations: Sequence[list[int]], *,
                   batched: bool) -> list[list[int]]:
    """`decoder`'s argmax at the same positions, fed the continuations' tokens: each prompt alone (one row per
    step), or all prompts as one batch (`batched`)."""
    groups = [list(range(len(prompts)))] if batched else [[i] for i in range(len(prompts))]
    out: list[list[int]] = [[] for _ in prompts]
    for rows in groups:
        logits, batch = decoder.prefill_many([prompts[i] for i in rows])
        for step in range(len(continuations[rows[0]])):
            for r, i in enumerate(rows):
                out[i].append(int(np.argmax(logits[r])))
            if step + 1 < len(continuations[rows[0]]):
                logits, batch = decoder.decode([continuations[i][step] for i in rows], batch)
    return out


@dataclass
class Int8Gate:
    """The int8 decoder's gate: agreement with the fp32 reference, batched = single, the served template."""

    label: str
    agreement: Agreement  # single-row int8 argmax vs transformers fp32, teacher-forced
    batched: Agreement  # batched int8 argmax vs single-row int8 argmax, same positions
    parity: GenerationParity  # the generation parity check run on the int8 decoder (its batched/template parts)
    min_agreement: float = MIN_AGREEMENT
    min_positions: int = MIN_POSITIONS
    cpu: str = ""  # the CPU feature that picked ONNX Runtime's int8 kernels (llm_decode_mode.cpu_int8_features)

    @property
    def passed(self) -> bool:
        enough = self.agreement.positions >= self.min_positions and self.agreement.rate >= self.min_agreement
        return (enough and self.batched.identical and not self.parity.batch_mismatches
                and not self.parity.template_mismatches)

    def describe(self) -> str:
        """A short multi-line report, printed by the CLI."""
        p = self.parity
        n = len(p.prompts)
        lines = [
            f"int8 decode gate [{self.label}]: {'PASS' if self.passed else 'FAIL'}",
            f"  teacher-forced top-1 agreement with the fp32 reference: {self.agreement.rate:.4f} "
            f"({self.agreement.agreeing}/{self.agreement.positions} positions, {len(self.agreement.per_prompt)} "
            f"prompts; gate >= {self.min_agreement} over >= {self.min_positions})",
            f"  batched vs single-row, teacher-forced: {self.batched.agreeing}/{self.batched.positions} positions "
            "identical (gate: all)",
            f"  batched (bursts in one pass, prefix reuse, chunked prefill, continuous) vs single: "
            f"{n - len(p.batch_mismatches)}/{n} prompts equal (gate: all)",
            f"  int8 kernels: {self.cpu or 'unknown'} (the gate holds for these: llm_decode_mode)",
            f"  served chat template vs transformers apply_chat_template: {n - len(p.template_mismatches)}/{n} equal",
            f"  not gated: greedy tokens equal to transformers generate on {n - len(p.mismatches)}/{n} prompts, max "
            f"abs logit diff prefill {p.prefill_max_abs_diff:.3e}, decode {p.decode_max_abs_diff:.3e}",
        ]
        lines += [f"  {q!r} → {a!r}" for q, a in zip(p.prompts, p.answers, strict=False)]
        return "\n".join(lines)

    def parameters(self) -> dict[str, str]:
        """What config.pbtxt records of this gate (the served model logs it at load)."""
        return {
            "decode_gate_agreement": f"{self.agreement.rate:.4f}",
            "decode_gate_positions": str(self.agreement.positions),
            "decode_gate_min_agreement": str(self.min_agreement),
            "decode_gate_batched_identical": f"{self.batched.agreeing}/{self.batched.positions}",
            "decode_gate_cpu": self.cpu,
        }


def check(model, tokenizer, exact, candidate, parity: GenerationParity, *, label: str,
          prompts: Sequence[str] = PROMPTS, tokens: int = TOKENS_PER_PROMPT,
          min_agreement: float = MIN_AGREEMENT, min_positions: int = MIN_POSITIONS) -> Int8Gate:
    """Run the gate (module docstring): `exact` writes the reference's tokens, `candidate` is the int8 decoder,
    `parity` the generation parity check already run on it."""
    from export.llm.parity import prompt_ids
    from triton_models.llm_decode_mode import cpu_int8_features

    encoded = [prompt_ids(tokenizer, p) for p in prompts]
    continuations = reference_continuations(exact, encoded, tokens)
    reference = reference_argmax(model, encoded, continuations)
    single = teacher_forced(candidate, encoded, continuations, batched=False)
    batched = teacher_forced(candidate, encoded, continuations, batched=True)
    return Int8Gate(label, top1_agreement(reference, single), top1_agreement(single, batched), parity,
                    min_agreement, min_positions, cpu_int8_features())


def enforce(gate: Int8Gate) -> None:
    """Raise ParityError (gate attached) unless every part of the gate passed."""
    if gate.passed:
        return
    a = gate.agreement
    if a.positions < gate.min_positions:
        reason = f"the agreement covers {a.positions} positions, fewer than {gate.min_positions}"
    elif a.rate < gate.min_agreement:
        reason = f"teacher-forced top-1 agreement {a.rate:.4f} is below {gate.min_agreement}"
    elif not gate.batched.identical:
        reason = (f"batched decoding differs from single-row decoding at "
                  f"{gate.batched.positions - gate.batched.agreeing} teacher-forced positions")
    elif gate.parity.batch_mismatches:
        reason = f"batched decoding differs from single-stream decoding for prompts {gate.parity.batch_mismatches}"
    else:
        reason = f"the served chat template tokenizes prompts {gate.parity.template_mismatches} differently"
    raise ParityError(f"int8 decode gate failed for {gate.label}: {reason}; nothing was written (the exact "
                      "default, --decode exact, keeps greedy tokens equal to transformers)", gate)
