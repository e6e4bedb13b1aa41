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

__all__ = [
    "Completion",
    "CompletionGenerator",
    "GeneratedChunk",
    "GenerationCall",
    "TransformersGenerator",
    "eos_token_ids",
    "generate_completions",
]


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


@dataclass(frozen=True)
class GeneratedChunk:
    """What a backend returns for one chunk of rendered prompts, one entry per prompt, in order.

    Parameters:
        texts (`list[str]`):
            The decoded new tokens (special tokens skipped).
        num_tokens (`list[int]`):
            Generated tokens through the first EOS.
        mean_entropies (`list[float]`):
            Mean token entropy of the model along those tokens, in nats.

    Examples:
        >>> from em_hf.generation.batched import GeneratedChunk
        >>> GeneratedChunk(texts=["4"], num_tokens=[2], mean_entropies=[0.1]).texts
        ['4']
    """

    texts: list[str]
    num_tokens: list[int]
    mean_entropies: list[float]


@dataclass(frozen=True)
class GenerationCall:
    """The per-call settings a backend's :meth:`CompletionGenerator.prepare` gets.

    Parameters:
        num_prompts (`int`):
            Prompts in the call.
        max_new_tokens (`int`):
            Maximum new tokens per completion.
        seed (`int`):
            The call's seed.
        seeds (`tuple[int, ...]`, *optional*):
            One sampling seed per prompt, when the caller gave them.

    Examples:
        >>> from em_hf.generation.batched import GenerationCall
        >>> GenerationCall(num_prompts=2, max_new_tokens=8, seed=0).max_new_tokens
        8
    """

    num_prompts: int
    max_new_tokens: int
    seed: int
    seeds: tuple[int, ...] | None = None


class CompletionGenerator:
    """The interface every generator of completions has, and what all of them share: the checks, the
    prompt rendering, the chunk loop with its progress bar and the time accounting. A backend subclasses
    it and implements :meth:`prepare` (once per call: seeds, configs; it returns the call's plan, so one
    generator instance can serve several calls) and :meth:`generate_chunk`.

    Called as ``generator(model, tokenizer, prompts, method, max_new_tokens=64, batch_size=32, seed=0,
    progress=True, seeds=None)``, it returns ``(completions, wall seconds)``: one :class:`Completion` per
    prompt, in order. Prompts are rendered by :func:`~em_hf.generation.prompts.render_prompt` (strings as
    they are, chat messages through the chat template).

    Call parameters:
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
            Prompts per backend call (a backend may lower it: :meth:`chunk_size`).
        seed (`int`, *optional*, defaults to `0`):
            Seed of the sampling (how it is applied is the backend's: see :meth:`prepare`).
        progress (`bool`, *optional*, defaults to `True`):
            Show a progress bar over the chunks.
        seeds (`Sequence[int]`, *optional*):
            One sampling seed per prompt (e.g. :func:`~em_hf.generation.sampling.item_seed`): a sampled
            prompt's completion then depends on its seed only, not on the batch it lands in or on the
            other prompts; ignored by greedy methods.

    Parameters:
        (none: a backend's constructor takes its own.)

    Examples:
        >>> from em_hf.generation.batched import CompletionGenerator, generate_completions
        >>> isinstance(generate_completions, CompletionGenerator)
        True
    """

    engine = "custom"

    def __call__(
        self,
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
        if len(prompts) == 0:
            raise ValueError("`prompts` is empty: nothing to generate.")
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(
                f"`seeds` has {len(seeds)} entries for {len(prompts)} prompts: give one per prompt."
            )
        rows = render_prompts(tokenizer, prompts)
        call = GenerationCall(
            num_prompts=len(rows),
            max_new_tokens=max_new_tokens,
            seed=seed,
            seeds=None if seeds is None else tuple(int(s) for s in seeds),
        )
        plan = self.prepare(model, tokenizer, method, call)
        step = self.chunk_size(method, batch_size)
        start = time.perf_counter()
        completions: list[Completion] = []
        for begin in tqdm(range(0, len(rows), step), desc=method.name, disable=not progress, leave=False):
            chunk = rows[begin : begin + step]
            chunk_start = time.perf_counter()
            out = self.generate_chunk(model, tokenizer, chunk, begin, plan)
            share = (time.perf_counter() - chunk_start) / len(chunk)
            completions.extend(
                Completion(
                    text=t, num_tokens=int(n), mean_entropy=float(h), prompt_tokens=len(r), seconds=share
                )
                for t, n, h, r in zip(out.texts, out.num_tokens, out.mean_entropies, chunk, strict=True)
            )
        return completions, time.perf_counter() - start

    def chunk_size(self, method: DecodingMethod, batch_size: int) -> int:
        """Prompts per :meth:`generate_chunk` call (``batch_size`` unless the backend needs fewer)."""
        return batch_size

    def prepare(self, model, tokenizer, method: DecodingMethod, call: GenerationCall) -> Any:
        """Per-call set-up before the first chunk (sampling configuration, seeds): the call's plan,
        handed to every :meth:`generate_chunk` of the call."""
        raise NotImplementedError(f"{type(self).__name__} must implement `prepare`.")

    def generate_chunk(
        self, model, tokenizer, chunk: list[list[int]], begin: int, plan: Any
    ) -> GeneratedChunk:
        """Generate for ``chunk`` (rendered prompt ids; ``begin`` is the index of its first row in the
        call, ``plan`` what :meth:`prepare` returned)."""
        raise NotImplementedError(f"{type(self).__name__} must implement `generate_chunk`.")


class TransformersGenerator(CompletionGenerator):
    """Generation with ``model.generate``: prompts left-padded in batches of ``batch_size``, the
    method's logits processors after a :class:`~em_hf.generation.recording.TokenEntropyRecorder` (which
    records the model's own entropy before any processor), ``torch.manual_seed(seed)`` set once before
    the first batch, so a run is reproducible for a given batch size. With ``seeds``, a sampled prompt
    draws its tokens from its own generator instead
    (:class:`~em_hf.generation.sampling.SeededRowSampler`, after the method's sampling warpers, with
    ``generate`` itself greedy), so its completion does not depend on its batch. The module's
    :data:`generate_completions` is an instance; call parameters are :class:`CompletionGenerator`'s.

    Parameters:
        (none.)

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

    engine = "hf"

    def __repr__(self) -> str:
        return "TransformersGenerator()"

    def prepare(
        self, model, tokenizer, method: DecodingMethod, call: GenerationCall
    ) -> tuple[GenerationConfig, DecodingMethod, tuple[int, ...] | None]:
        if tokenizer.pad_token_id is None:
            raise ValueError(
                "The tokenizer has no pad token, which batched generation needs; set one, e.g. "
                "`tokenizer.pad_token = tokenizer.eos_token`."
            )
        row_seeds = call.seeds if method.do_sample else None
        config = GenerationConfig(
            max_new_tokens=call.max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=eos_token_ids(model, tokenizer) or None,
            # per-row sampling: the warpers and the draw are processors, generate takes the argmax of the draw
            **({"do_sample": False} if row_seeds is not None else method.generation_kwargs()),
        )
        torch.manual_seed(call.seed)
        return config, method, row_seeds

    def generate_chunk(
        self,
        model,
        tokenizer,
        chunk: list[list[int]],
        begin: int,
        plan: tuple[GenerationConfig, DecodingMethod, tuple[int, ...] | None],
    ) -> GeneratedChunk:
        config, method, row_seeds = plan
        device = next(model.parameters()).device
        input_ids, attention_mask = left_pad(chunk, tokenizer.pad_token_id)
        recorder = TokenEntropyRecorder()
        processors = [recorder, *method.logits_processors()]
        if row_seeds is not None:
            processors += [
                *method.sampling_warpers(),
                SeededRowSampler(row_seeds[begin : begin + len(chunk)]),
            ]
        with torch.no_grad():
            output = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                generation_config=config,
                logits_processor=LogitsProcessorList(processors),
            )
        new_tokens = output[:, input_ids.shape[1] :]
        mask = completion_mask(new_tokens, config.eos_token_id).cpu()
        lengths = mask.sum(dim=1)
        mean_entropy = (recorder.entropies * mask).sum(dim=1) / lengths.clamp_min(1)
        return GeneratedChunk(
            texts=tokenizer.batch_decode(new_tokens, skip_special_tokens=True),
            num_tokens=lengths.tolist(),
            mean_entropies=mean_entropy.tolist(),
        )


generate_completions = TransformersGenerator()
"""Generate one completion per prompt with ``model.generate``: a :class:`TransformersGenerator`;
``generate_completions(model, tokenizer, prompts, method, max_new_tokens=64, batch_size=32, seed=0,
progress=True, seeds=None)`` returns ``(completions, wall seconds)``."""
