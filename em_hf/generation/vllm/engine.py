"""Generation with a vLLM engine, returning what :func:`~em_hf.generation.batched.generate_completions`
returns: one :class:`~em_hf.generation.batched.Completion` per prompt.

What matches the ``transformers`` path, by construction:

- **input ids**: prompts are rendered by :func:`~em_hf.generation.prompts.render_prompt` and sent as
  ``TokensPrompt(prompt_token_ids=...)``, so vLLM reads exactly the ids ``generate`` reads;
- **decoding**: :func:`sampling_params` maps a :class:`~em_hf.generation.decoding.DecodingMethod` to
  ``SamplingParams`` (greedy = temperature 0; ``t``/``top_p``/``top_k`` as given, 0 = no top-k in
  both; EM-INF / adaptive temperature through ``extra_args`` read by the em_hf vLLM logits processors,
  which see the raw logits before temperature, as in ``generate``);
- **stopping**: ``ignore_eos=True`` plus ``stop_token_ids`` = the EOS ids ``generate`` stops at (the
  model's generation config, else the tokenizer's), so vLLM stops at exactly those ids and nothing
  else; ``num_tokens`` counts through the first EOS, ``text`` is the HF tokenizer's decoding of the
  ids with special tokens skipped;
- **mean entropy**: the model's own token entropy H(softmax(z_t)) along the generated tokens, the
  quantity :class:`~em_hf.generation.recording.TokenEntropyRecorder` records before any processor.
  vLLM does not return it: its full-vocabulary logprobs (``logprobs=-1``) come back as one Python
  object per vocabulary entry per token (49,152 per token for the default model), far slower than the
  generation itself. It is recomputed instead with the ``transformers`` model the harness already
  holds: one batched forward pass over prompt + completion (a prefill, not a decode), then
  :func:`~em_hf.ops.linear_token_entropy` at the completion positions only (the LM head's logits are
  never materialized for the prompt). This costs a second copy of the weights in memory and one
  transformers prefill per completion; the time is included in ``seconds``, summed in
  ``VLLMGenerator.entropy_seconds``, and measured in the README (on the default model and short
  arithmetic answers it took longer than vLLM's own generation).

Seeds: sampled requests carry their own ``SamplingParams(seed=...)``: the caller's ``seeds`` (one per
prompt) when given, else drawn from ``seed`` by a ``random.Random(seed)`` in prompt order, so a run is
reproducible whatever vLLM's batching; vLLM's CPU engine fails on large batches of seeded requests ("CPU
Generator does not use offset"), so seeded requests are sent at most :data:`MAX_SEEDED_PER_CALL` per
``generate`` call. Greedy requests carry no seed and go ``batch_size`` at a time.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Any

import torch

from em_hf.generation.batched import CompletionGenerator, GeneratedChunk, GenerationCall, eos_token_ids
from em_hf.generation.decoding import DecodingMethod
from em_hf.generation.vllm._requirements import VLLM_INSTALL_HINT, import_vllm
from em_hf.ops.linear_entropy import linear_token_entropy

__all__ = [
    "MAX_SEEDED_PER_CALL",
    "VLLM_INSTALL_HINT",
    "VLLMGenerator",
    "check_methods",
    "import_vllm",
    "load_vllm",
    "sampling_params",
]

MAX_SEEDED_PER_CALL = 32
_EXTRA_ARGS_KEY = {"em-inf": "em_inf", "adaptive": "adaptive_temperature"}


def _processor_classes() -> list[type]:
    """The em_hf vLLM logits processors (EM-INF, adaptive temperature); ``ImportError`` without vLLM."""
    from em_hf.generation.vllm.processors import AdaptiveTemperatureVLLMProcessor, EntropyMinVLLMProcessor

    return [EntropyMinVLLMProcessor, AdaptiveTemperatureVLLMProcessor]


def check_methods(methods: Sequence[DecodingMethod]) -> None:
    """Fail early (``ImportError`` saying how to install it) when vLLM is missing, before an engine
    start-up; the processors of EM-INF and adaptive temperature are loaded when a method needs them."""
    import_vllm()
    if any(m.base in _EXTRA_ARGS_KEY for m in methods):
        _processor_classes()


def sampling_params(
    method: DecodingMethod,
    *,
    max_new_tokens: int,
    stop_token_ids: Sequence[int] = (),
    seed: int | None = None,
):
    """The ``vllm.SamplingParams`` of one trajectory of ``method`` (module docstring).

    Parameters:
        method (`DecodingMethod`):
            The decoding method; its strategy (``-sc``, ``-refine``) is the harness's, not vLLM's.
        max_new_tokens (`int`):
            ``max_tokens``.
        stop_token_ids (`Sequence[int]`, *optional*, defaults to `()`):
            The EOS ids to stop at (:func:`eos_token_ids`); vLLM's own EOS handling is switched off
            (``ignore_eos=True``) so that these are the only ones, as in ``generate``.
        seed (`int`, *optional*):
            The request's sampling seed (ignored for greedy).

    Returns:
        `vllm.SamplingParams`

    Examples:
        >>> from em_hf.generation.decoding import parse_method
        >>> from em_hf.generation.vllm.engine import sampling_params
        >>> params = sampling_params(parse_method("em-inf:t=0.5,n_steps=3"), max_new_tokens=8,
        ...                          stop_token_ids=[2], seed=1)  # doctest: +SKIP
        >>> params.temperature, params.extra_args["em_inf"]["n_steps"]  # doctest: +SKIP
        (0.5, 3)
    """
    vllm = import_vllm()
    kwargs: dict[str, Any] = {
        "n": 1,
        "max_tokens": max_new_tokens,
        "ignore_eos": True,
        "stop_token_ids": [int(t) for t in stop_token_ids],
        "detokenize": False,
        "skip_special_tokens": True,
        "repetition_penalty": 1.0,
        "min_tokens": 0,
    }
    generation = method.generation_kwargs()
    if generation["do_sample"]:
        kwargs.update(
            temperature=float(generation["temperature"]),
            top_p=float(generation["top_p"]),
            top_k=int(generation["top_k"]),
            seed=seed,
        )
    else:
        kwargs.update(temperature=0.0, top_p=1.0, top_k=0)
    key = _EXTRA_ARGS_KEY.get(method.base)
    if key is not None:
        kwargs["extra_args"] = {key: dict(method.processor_kwargs)}
    return vllm.SamplingParams(**kwargs)


def load_vllm(model: str, **llm_kwargs):
    """A ``vllm.LLM`` for ``model`` (a Hub id or folder) with the em_hf logits processors registered.

    Parameters:
        model (`str`):
            What ``vllm.LLM(model=...)`` takes (for the default model, the folder of
            :func:`~em_hf.models.ensure_default_model_cache`).
        llm_kwargs:
            Passed to ``vllm.LLM`` (``dtype``, ``enforce_eager``, ``max_model_len``, ...).

    Returns:
        `vllm.LLM`

    Examples:
        Start-up takes 1-2 minutes on a CPU, so it is not run here:

        >>> from em_hf.generation.vllm.engine import VLLMGenerator, load_vllm
        >>> from em_hf.models import ensure_default_model_cache
        >>> llm = load_vllm(str(ensure_default_model_cache()), dtype="float32", enforce_eager=True,
        ...                 max_model_len=512)  # doctest: +SKIP
    """
    vllm = import_vllm()
    llm_kwargs.setdefault("logits_processors", _processor_classes())
    return vllm.LLM(model=str(model), **llm_kwargs)


@torch.no_grad()
def _mean_entropies(
    model, rows: list[list[int]], completions: list[list[int]], batch_size: int
) -> list[float]:
    """Mean over each completion's tokens of H(softmax(z_t)), z_t the model's logits that predicted
    token t (read at the position before it), recomputed with one forward pass per batch."""
    base = model.base_model
    head = model.get_output_embeddings()
    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]) + len(completions[i]))
    found: dict[int, float] = {}
    for begin in range(0, len(order), batch_size):
        chunk = order[begin : begin + batch_size]
        sequences = [rows[i] + completions[i] for i in chunk]
        width = max(len(s) for s in sequences)
        input_ids = torch.zeros((len(chunk), width), dtype=torch.long)
        attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, seq in enumerate(sequences):  # right padding: positions are 0.. for every row
            input_ids[r, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            attention_mask[r, : len(seq)] = 1
        hidden = base(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device))[0]
        picks = [(r, len(rows[i]) - 1 + t) for r, i in enumerate(chunk) for t in range(len(completions[i]))]
        if not picks:
            found.update({i: 0.0 for i in chunk})
            continue
        index_r = torch.tensor([p[0] for p in picks], device=device)
        index_t = torch.tensor([p[1] for p in picks], device=device)
        states = hidden[index_r, index_t]
        entropy = linear_token_entropy(states, head.weight, getattr(head, "bias", None)).float().cpu()
        offset = 0
        for i in chunk:
            n = len(completions[i])
            found[i] = float(entropy[offset : offset + n].mean()) if n else 0.0
            offset += n
    return [found[i] for i in range(len(rows))]


class VLLMGenerator(CompletionGenerator):
    """A drop-in for :func:`~em_hf.generation.batched.generate_completions` that generates with a vLLM
    engine (module docstring: same ids, same stopping, same accounting).

    A :class:`~em_hf.generation.batched.CompletionGenerator`: call it as ``generate_completions``,
    ``generator(model, tokenizer, prompts, method, max_new_tokens=64, batch_size=32, seed=0,
    progress=True)``. ``model`` is the ``transformers`` model of the same checkpoint: it is not used to
    generate, only to recompute the mean token entropy (one prefill per completion) and,
    in the harness, for P of the FLOPs count (``model.num_parameters()``, as with ``--engine hf``).
    :func:`~em_hf.eval.methods.run_items` and :func:`~em_hf.eval.runner.evaluate` take it as
    ``generator=``.

    Parameters:
        llm (`vllm.LLM`):
            The engine (:func:`load_vllm`), serving the same weights as ``model``.
        entropy_batch_size (`int`, *optional*, defaults to `8`):
            Sequences per forward pass of the entropy recomputation.

    Attributes ``generate_seconds`` and ``entropy_seconds`` sum the time spent in vLLM's ``generate``
    and in the entropy recomputation over all calls (``em-hf eval --engine vllm`` prints them).

    Examples:
        The engine takes 1-2 minutes to start on a CPU, so this is not run here:

        >>> from em_hf import load_default_model
        >>> from em_hf.generation.decoding import parse_method
        >>> from em_hf.generation.vllm.engine import VLLMGenerator, load_vllm
        >>> from em_hf.models import ensure_default_model_cache
        >>> model, tokenizer = load_default_model()  # doctest: +SKIP
        >>> llm = load_vllm(str(ensure_default_model_cache()), dtype="float32", enforce_eager=True,
        ...                 max_model_len=512)  # doctest: +SKIP
        >>> generate = VLLMGenerator(llm)  # doctest: +SKIP
        >>> completions, seconds = generate(model, tokenizer, ["2 + 2 ="], parse_method("greedy"),
        ...                                 max_new_tokens=8)  # doctest: +SKIP
    """

    engine = "vllm"

    def __init__(self, llm, entropy_batch_size: int = 8) -> None:
        if isinstance(entropy_batch_size, bool) or not isinstance(entropy_batch_size, int):
            raise ValueError(f"`entropy_batch_size` must be an integer >= 1, got {entropy_batch_size!r}.")
        if entropy_batch_size < 1:
            raise ValueError(f"`entropy_batch_size` must be an integer >= 1, got {entropy_batch_size!r}.")
        self.llm = llm
        self.entropy_batch_size = entropy_batch_size
        self.generate_seconds = 0.0  # in vLLM's generate, summed over calls
        self.entropy_seconds = 0.0  # in the entropy recomputation, summed over calls

    def __repr__(self) -> str:
        return f"VLLMGenerator(entropy_batch_size={self.entropy_batch_size})"

    def chunk_size(self, method: DecodingMethod, batch_size: int) -> int:
        return min(batch_size, MAX_SEEDED_PER_CALL) if method.do_sample else batch_size

    def prepare(
        self, model, tokenizer, method: DecodingMethod, call: GenerationCall
    ) -> tuple[list, list[int]]:
        import_vllm()
        stop = eos_token_ids(model, tokenizer)
        rng = random.Random(call.seed)
        drawn = (
            call.seeds if call.seeds is not None else [rng.getrandbits(31) for _ in range(call.num_prompts)]
        )
        params = [
            sampling_params(
                method,
                max_new_tokens=call.max_new_tokens,
                stop_token_ids=stop,
                seed=request_seed if method.do_sample else None,
            )
            for request_seed in drawn
        ]
        return params, stop

    def generate_chunk(
        self, model, tokenizer, chunk: list[list[int]], begin: int, plan: tuple[list, list[int]]
    ) -> GeneratedChunk:
        from vllm.inputs import TokensPrompt

        params, stop = plan
        generate_start = time.perf_counter()
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=list(row)) for row in chunk],
            params[begin : begin + len(chunk)],
            use_tqdm=False,
        )
        ids = [_through_eos(list(out.outputs[0].token_ids), stop) for out in outputs]
        entropy_start = time.perf_counter()
        self.generate_seconds += entropy_start - generate_start
        entropies = _mean_entropies(model, chunk, ids, self.entropy_batch_size)
        self.entropy_seconds += time.perf_counter() - entropy_start
        return GeneratedChunk(
            texts=tokenizer.batch_decode(ids, skip_special_tokens=True),
            num_tokens=[len(i) for i in ids],
            mean_entropies=entropies,
        )


def _through_eos(ids: list[int], stop: Sequence[int]) -> list[int]:
    """The ids through the first EOS (vLLM stops there already; this guards the count)."""
    for position, token in enumerate(ids):
        if token in stop:
            return ids[: position + 1]
    return ids
