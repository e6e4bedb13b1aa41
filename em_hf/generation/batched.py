"""Batched generation of completions with a decoding method, measuring tokens and entropy."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, LogitsProcessorList

from em_hf.generation.decoding import DecodingMethod
from em_hf.generation.prompts import Prompt, left_pad, render_prompts
from em_hf.generation.recording import TokenEntropyRecorder, completion_mask
from em_hf.generation.sampling import SeededRowSampler

__all__ = ["Completion", "eos_token_ids", "generate_completions"]


@dataclass(frozen=True)
class Completion:
    """One generated answer and what it cost.

    Parameters:
        text (`str`):
            The decoded new tokens (special tokens skipped).
        num_tokens (`int`):
            Generated tokens through the first EOS.
        mean_entropy (`float`):
            Mean over those tokens of the model's entropy H(softmax(z_t)), in nats.
        prompt_tokens (`int`, *optional*, defaults to `0`):
            Prompt tokens the model processed for it (padding excluded).
        seconds (`float`, *optional*, defaults to `0.0`):
            Its share of the batch's wall time (the batch time divided by the rows of the batch); not part
            of equality, which compares the outputs.

    Examples:
        >>> from em_hf.generation.batched import Completion
        >>> a = Completion("7", num_tokens=2, mean_entropy=0.4, seconds=0.1)
        >>> a == Completion("7", num_tokens=2, mean_entropy=0.4, seconds=0.3)  # time is not compared
        True
    """

    text: str
    num_tokens: int
    mean_entropy: float
    prompt_tokens: int = 0
    seconds: float = field(default=0.0, compare=False)


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """The ids ``generate`` stops at: the model's generation config EOS (int or list), else the
    tokenizer's."""
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None) if config is not None else None
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return []
    return [int(eos)] if isinstance(eos, int) else [int(e) for e in eos]


def generate_completions(
    model,
    tokenizer,
    prompts: Sequence[Prompt],
    method: DecodingMethod,
    max_new_tokens: int = 64,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = True,
    seeds: Sequence[int] | None = None,
) -> tuple[list[Completion], float]:
    """Generate one completion per prompt with ``method``; returns (completions, wall seconds).

    Prompts are rendered by :func:`~em_hf.generation.prompts.render_prompt` (strings as they are,
    chat messages through the chat template) and left-padded in batches of ``batch_size``;
    ``torch.manual_seed(seed)`` is set once before the first batch, so a run is reproducible for a
    given batch size. With ``seeds`` (one per prompt), a sampled prompt draws its tokens from its own
    generator (:class:`~em_hf.generation.sampling.SeededRowSampler`): its completion no longer depends on
    the batch size or on the other prompts of its batch.

    Parameters:
        model (`PreTrainedModel`):
            A causal LM.
        tokenizer (`PreTrainedTokenizerBase`):
            Its tokenizer; it needs a pad token.
        prompts (`Sequence[str | list[dict]]`):
            Strings or chat messages.
        method (`DecodingMethod`):
            Sampling settings and logits processors (:func:`~em_hf.generation.decoding.parse_method`);
            one trajectory per prompt whatever its strategy (voting and refinement are the harness's).
        max_new_tokens (`int`, *optional*, defaults to `64`):
            Maximum new tokens per completion.
        batch_size (`int`, *optional*, defaults to `32`):
            Prompts per ``generate`` call.
        seed (`int`, *optional*, defaults to `0`):
            ``torch.manual_seed`` before the first batch.
        progress (`bool`, *optional*, defaults to `True`):
            Show a progress bar over the batches.
        seeds (`Sequence[int]`, *optional*):
            One sampling seed per prompt (e.g. :func:`~em_hf.generation.sampling.item_seed`); ignored by
            greedy methods.

    Returns:
        `tuple[list[Completion], float]`: one :class:`Completion` per prompt, in order, and the wall time.

    Examples:
        >>> from em_hf.generation.batched import generate_completions
        >>> from em_hf.generation.decoding import parse_method
        >>> from em_hf.utils.testing import tiny_llama_and_tokenizer
        >>> model, tokenizer = tiny_llama_and_tokenizer()
        >>> prompts = ["Compute 1 + 2 =", [{"role": "user", "content": "2 + 2 ="}]]
        >>> completions, seconds = generate_completions(
        ...     model, tokenizer, prompts, parse_method("greedy"), max_new_tokens=3, progress=False
        ... )
        >>> [(c.text, c.num_tokens, round(c.mean_entropy, 2), c.prompt_tokens) for c in completions]
        [('assistant = assistant', 3, 2.89, 5), ('= assistant =', 3, 2.89, 6)]
    """
    if len(prompts) == 0:
        raise ValueError("`prompts` is empty: nothing to generate.")
    if tokenizer.pad_token_id is None:
        raise ValueError(
            "The tokenizer has no pad token, which batched generation needs; set one, e.g. "
            "`tokenizer.pad_token = tokenizer.eos_token`."
        )
    per_row = seeds is not None and method.do_sample
    if seeds is not None and len(seeds) != len(prompts):
        raise ValueError(f"`seeds` has {len(seeds)} entries for {len(prompts)} prompts: give one per prompt.")
    rows = render_prompts(tokenizer, prompts)
    eos_token_id = eos_token_ids(model, tokenizer) or None
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=eos_token_id,
        # per-row sampling: the warpers and the draw are processors, generate takes the argmax of the draw
        **({"do_sample": False} if per_row else method.generation_kwargs()),
    )
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    completions: list[Completion] = []
    start = time.perf_counter()
    batches = range(0, len(rows), batch_size)
    for begin in tqdm(batches, desc=method.name, disable=not progress, leave=False):
        input_ids, attention_mask = left_pad(rows[begin : begin + batch_size], tokenizer.pad_token_id)
        batch = {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}
        recorder = TokenEntropyRecorder()
        processors = [recorder, *method.logits_processors()]
        if per_row:
            assert seeds is not None
            processors += [*method.sampling_warpers(), SeededRowSampler(seeds[begin : begin + batch_size])]
        batch_start = time.perf_counter()
        with torch.no_grad():
            output = model.generate(
                **batch, generation_config=config, logits_processor=LogitsProcessorList(processors)
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
