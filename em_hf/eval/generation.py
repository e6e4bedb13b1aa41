"""Batched generation of completions with a decoding method, measuring tokens and entropy."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, LogitsProcessorList

from em_hf.eval.decoding import DecodingMethod
from em_hf.generation.recording import TokenEntropyRecorder, completion_mask

__all__ = ["Completion", "generate_completions", "render_prompts"]

Prompt = str | list[dict[str, str]]


@dataclass(frozen=True)
class Completion:
    """One generated answer: its text, its number of generated tokens (through the first EOS), the
    mean over those tokens of the model's entropy H(softmax(z_t)) (nats), the number of prompt tokens
    the model processed for it (padding excluded) and its share of the batch's wall time (the batch
    time divided by the rows of the batch; not part of equality, which compares the outputs)."""

    text: str
    num_tokens: int
    mean_entropy: float
    prompt_tokens: int = 0
    seconds: float = field(default=0.0, compare=False)


def render_prompts(tokenizer, prompts: Sequence[Prompt]) -> list[str]:
    """Prompt strings: chat messages go through the tokenizer's chat template (with the generation
    prompt); plain strings are used as they are."""
    texts = []
    for prompt in prompts:
        if isinstance(prompt, str):
            texts.append(prompt)
            continue
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "The prompts are chat messages but the tokenizer has no chat template; pass plain strings "
                "or set `tokenizer.chat_template`."
            )
        texts.append(tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True))
    return texts


def generate_completions(
    model,
    tokenizer,
    prompts: Sequence[Prompt],
    method: DecodingMethod,
    max_new_tokens: int = 64,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = True,
) -> tuple[list[Completion], float]:
    """Generate one completion per prompt with ``method``; returns (completions, wall seconds).

    Prompts are left-padded in batches of ``batch_size``; ``torch.manual_seed(seed)`` is set once
    before the first batch, so a run is reproducible for a given batch size.
    """
    if len(prompts) == 0:
        raise ValueError("`prompts` is empty: nothing to generate.")
    if tokenizer.pad_token_id is None:
        raise ValueError(
            "The tokenizer has no pad token, which batched generation needs; set one, e.g. "
            "`tokenizer.pad_token = tokenizer.eos_token`."
        )
    eos_token_id = model.generation_config.eos_token_id
    if eos_token_id is None:
        eos_token_id = tokenizer.eos_token_id
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=eos_token_id,
        **method.generation_kwargs(),
    )
    texts = render_prompts(tokenizer, prompts)
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    completions: list[Completion] = []
    start = time.perf_counter()
    batches = range(0, len(texts), batch_size)
    for begin in tqdm(batches, desc=method.name, disable=not progress, leave=False):
        batch = tokenizer(
            texts[begin : begin + batch_size],
            return_tensors="pt",
            padding=True,
            padding_side="left",
            add_special_tokens=False,
        ).to(device)
        recorder = TokenEntropyRecorder()
        batch_start = time.perf_counter()
        with torch.no_grad():
            output = model.generate(
                **batch,
                generation_config=config,
                logits_processor=LogitsProcessorList([recorder, *method.logits_processors()]),
            )
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        mask = completion_mask(new_tokens, eos_token_id).cpu()
        entropies = recorder.entropies
        lengths = mask.sum(dim=1)
        mean_entropy = (entropies * mask).sum(dim=1) / lengths.clamp_min(1)
        decoded = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        prompt_tokens = batch["attention_mask"].sum(dim=1).tolist()
        share = (time.perf_counter() - batch_start) / len(decoded)
        completions.extend(
            Completion(text=t, num_tokens=int(n), mean_entropy=float(h), prompt_tokens=int(p), seconds=share)
            for t, n, h, p in zip(decoded, lengths, mean_entropy, prompt_tokens, strict=True)
        )
    return completions, time.perf_counter() - start
