"""Run one decoding method on a batch of benchmark items: single trajectory, self-consistency or
iterative refinement, all through :func:`~em_hf.generation.batched.generate_completions` (batched
``model.generate`` plus the method's logits processors), or through another generator with its call
signature (``generator=``, e.g. :class:`~em_hf.generation.vllm.engine.VLLMGenerator`).

Accounting per item (what :class:`ItemResult` holds):

- ``tokens``: generated tokens through the first EOS, summed over the item's trajectories/rounds;
- ``prompt_tokens``: prompt tokens the model processed (padding excluded), summed likewise (refinement
  rounds re-read the growing conversation, so they count again);
- ``flops = 2 * P * (prompt_tokens + tokens)`` (Unreasonable Effectiveness of EM, appendix D.4:
  inference costs 2PD), P the model's parameters (tied weights once). Not counted: padding and the
  steps a batch keeps running after a row's EOS (implementation waste, not method cost), and the
  EM-INF / adaptive-temperature logit work, O(n_steps * V) per token, under 0.5% of 2P per token for
  the default model;
- ``seconds``: the item's share of its batches' wall time (batch time / rows), summed;
- ``mean_entropy``: the model's own token entropy averaged over every generated token of the item
  (token-weighted over trajectories/rounds), recorded before any processor.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from em_hf.eval.benchmarks import BenchmarkItem
from em_hf.eval.scoring import final_answer, grade_item
from em_hf.generation.batched import Completion, generate_completions
from em_hf.generation.decoding import DecodingMethod
from em_hf.generation.sampling import item_seed

__all__ = ["REFINE_INSTRUCTIONS", "ItemResult", "majority_vote", "run_items"]

REFINE_INSTRUCTIONS = {
    "math": (
        "Review your previous solution carefully: check every step for mistakes, then write an improved "
        "solution. Please reason step by step, and put your final answer within \\boxed{}."
    ),
    "physics": (
        "Review your previous solution carefully: check every step and every number for mistakes, then write "
        "an improved solution. Put your final answer within \\boxed{}."
    ),
    "code": (
        "Review your previous code carefully: check it against the examples and the constraints, then write "
        "the corrected complete solution in a single ```python code block."
    ),
    "arithmetic": "Check your previous answer carefully and correct it if needed. "
    "Reply with just the number.",
}


@dataclass
class ItemResult:
    """One (benchmark, method, seed, item) outcome; one line of the run's JSONL.

    Parameters:
        benchmark, method, seed, item_id (`str`, `str`, `int`, `str`):
            Which item, answered how: the benchmark label, the method's spec, the generation seed.
        answer (`str` or `None`):
            The graded trajectory's final answer (`None` for code).
        reference (`str` or `None`):
            The item's reference answer (physics: its references joined; code: `None`).
        correct (`bool`):
            Whether the graded trajectory is right.
        status (`str`):
            The grader's status (:class:`~em_hf.eval.scoring.Grade`).
        tokens, prompt_tokens (`int`):
            Generated and prompt tokens over all trajectories/rounds (module docstring).
        seconds, flops (`float`):
            Wall time share and 2 * P * (prompt_tokens + tokens).
        mean_entropy (`float`):
            The model's token entropy averaged over every generated token of the item (nats).
        trajectories (`int`):
            Trajectories (``-sc``) or rounds (``-refine``); 1 otherwise.
        completion (`str`):
            The graded completion's text.
        answers (`list[str | None]`, *optional*, defaults to `[]`):
            Every trajectory's final answer (self-consistency's votes).

    Examples:
        One line of a run's ``items.jsonl`` (:func:`run_items` returns them; ``to_dict`` serializes):

        >>> from em_hf.eval.methods import ItemResult
        >>> result = ItemResult("arithmetic", "greedy", 0, "arith-0-0", "7", "7", True, "correct", tokens=3,
        ...                     prompt_tokens=12, seconds=0.1, mean_entropy=0.5, flops=2 * 100 * 15,
        ...                     trajectories=1, completion="7")
        >>> sorted(result.to_dict())[:4]
        ['answer', 'answers', 'benchmark', 'completion']
    """

    benchmark: str
    method: str
    seed: int
    item_id: str
    answer: str | None
    reference: str | None
    correct: bool
    status: str
    tokens: int
    prompt_tokens: int
    seconds: float
    mean_entropy: float
    flops: float
    trajectories: int
    completion: str
    answers: list[str | None] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def majority_vote(answers: Sequence[str | None]) -> int:
    """Index of the trajectory whose answer wins the vote: the most frequent non-None answer, ties
    going to the answer seen first; 0 when no trajectory has an answer."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return 0
    best = max(counts.values())
    winner = next(a for a in answers if a is not None and counts[a] == best)
    return answers.index(winner)


def _aggregate(
    item: BenchmarkItem,
    method: DecodingMethod,
    seed: int,
    trajectories: list[Completion],
    chosen: int,
    answers: list[str | None],
    num_parameters: int,
    code_timeout_s: float,
) -> ItemResult:
    text = trajectories[chosen].text
    grade = grade_item(item, text, code_timeout_s=code_timeout_s)
    tokens = sum(c.num_tokens for c in trajectories)
    prompt_tokens = sum(c.prompt_tokens for c in trajectories)
    entropy_sum = sum(c.mean_entropy * c.num_tokens for c in trajectories)
    return ItemResult(
        benchmark=item.benchmark,
        method=method.name,
        seed=seed,
        item_id=item.id,
        answer=grade.answer,
        reference=item.reference if item.task != "physics" else ", ".join(item.references),
        correct=grade.correct,
        status=grade.status,
        tokens=tokens,
        prompt_tokens=prompt_tokens,
        seconds=sum(c.seconds for c in trajectories),
        mean_entropy=entropy_sum / tokens if tokens else 0.0,
        flops=2.0 * num_parameters * (prompt_tokens + tokens),
        trajectories=len(trajectories),
        completion=text,
        answers=answers,
    )


def run_items(
    model,
    tokenizer,
    items: Sequence[BenchmarkItem],
    method: DecodingMethod,
    *,
    num_parameters: int | None = None,
    seed: int = 0,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    code_timeout_s: float = 10.0,
    generator: Callable | None = None,
) -> list[ItemResult]:
    """Answer ``items`` with ``method`` and grade them; one :class:`ItemResult` per item, in order.

    Self-consistency (``-sc``) generates ``n`` trajectories per item (the item's prompt repeated, so
    they share batches) and votes (:func:`majority_vote` over
    :func:`~em_hf.eval.scoring.final_answer`); the winning trajectory is graded. It is not defined
    for code (no answer to vote on): a ``ValueError`` says so. Refinement (``-refine``) runs ``n``
    rounds; round r > 1 sends the conversation [question, previous answer, instruction to check and
    improve it] and the last round is graded. Sampled methods draw each trajectory (round) from its
    own random stream, seeded with :func:`~em_hf.generation.sampling.item_seed` of (``seed``, the item's
    benchmark, its id, the trajectory or round index): an item's answers do not depend on the other
    items of its batch, so a resumed run samples what an uninterrupted one would have.

    Parameters:
        model, tokenizer, max_new_tokens:
            As in :func:`~em_hf.generation.batched.generate_completions` (``max_new_tokens`` defaults to
            256 here).
        items (`Sequence[BenchmarkItem]`):
            The items (:func:`~em_hf.eval.benchmarks.load_benchmark`).
        method (`DecodingMethod`):
            The decoding method (:func:`~em_hf.generation.decoding.parse_method`), strategy included.
        seed (`int`, *optional*, defaults to `0`):
            The generation seed (each item's streams derive from it, see above).
        batch_size (`int`, *optional*, defaults to `16`):
            Prompts per ``generate`` call (trajectories count as prompts).
        code_timeout_s (`float`, *optional*, defaults to `10.0`):
            The sandbox's time limit per code item (:func:`~em_hf.eval.sandbox.run_code`).
        num_parameters (`int`, *optional*):
            P of the FLOPs count; defaults to ``model.num_parameters()`` (tied weights once).
        generator (`Callable`, *optional*):
            What generates the completions, called as
            :func:`~em_hf.generation.batched.generate_completions` (the default, ``model.generate``);
            :class:`~em_hf.generation.vllm.engine.VLLMGenerator` generates with a vLLM engine. It is
            also given ``seeds=``, one sampling seed per prompt.

    Returns:
        `list[ItemResult]`

    Examples:
        >>> from em_hf.eval.benchmarks import load_benchmark
        >>> from em_hf.eval.methods import run_items
        >>> from em_hf.generation.decoding import parse_method
        >>> from em_hf.utils.testing import tiny_llama_and_tokenizer
        >>> model, tokenizer = tiny_llama_and_tokenizer()
        >>> items = load_benchmark("arithmetic:n=2")
        >>> results = run_items(model, tokenizer, items, parse_method("sc:3"), max_new_tokens=2)
        >>> [(r.item_id, r.trajectories, r.tokens, r.correct) for r in results]
        [('arith-0-0', 3, 6, False), ('arith-0-1', 3, 6, False)]
    """
    if not items:
        raise ValueError("`items` is empty: nothing to evaluate.")
    # P of the 2PD rule; PreTrainedModel.num_parameters() counts a tied embedding/LM head once.
    params = model.num_parameters() if num_parameters is None else num_parameters
    n = method.num_trajectories
    generate_fn = generate_completions if generator is None else generator
    generate = dict(max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, progress=False)
    if method.strategy == "sc":
        code = [item for item in items if item.task == "code"]
        if code:
            raise ValueError(
                f"Self-consistency ({method.name}) does not apply to code ({code[0].benchmark}): "
                "a program has "
                "no final answer to vote on. Use a single-trajectory method or refinement."
            )
        prompts = [item.prompt for item in items for _ in range(n)]
        seeds = [item_seed(seed, item.benchmark, item.id, k) for item in items for k in range(n)]
        completions, _ = generate_fn(model, tokenizer, prompts, method, seeds=seeds, **generate)
        results = []
        for index, item in enumerate(items):
            group = completions[index * n : (index + 1) * n]
            answers = [final_answer(item, c.text) for c in group]
            results.append(
                _aggregate(item, method, seed, group, majority_vote(answers), answers, params, code_timeout_s)
            )
        return results
    rounds: list[list[Completion]] = [[] for _ in items]
    for round_index in range(n if method.strategy == "refine" else 1):
        prompts = [
            item.prompt
            if round_index == 0
            else [
                *item.prompt,
                {"role": "assistant", "content": history[-1].text},
                {"role": "user", "content": REFINE_INSTRUCTIONS[item.task]},
            ]
            for item, history in zip(items, rounds, strict=True)
        ]
        generate["seed"] = seed + 7919 * round_index  # a different stream for each round
        seeds = [item_seed(seed, item.benchmark, item.id, round_index) for item in items]
        completions, _ = generate_fn(model, tokenizer, prompts, method, seeds=seeds, **generate)
        for history, completion in zip(rounds, completions, strict=True):
            history.append(completion)
    results = []
    for item, history in zip(items, rounds, strict=True):
        answers = [final_answer(item, c.text) for c in history] if item.task != "code" else []
        results.append(
            _aggregate(item, method, seed, history, len(history) - 1, answers, params, code_timeout_s)
        )
    return results
