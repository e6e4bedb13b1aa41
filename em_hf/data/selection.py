r"""Prompt selection for one-shot EM by pass@k variance (One-shot EM, sec. 2.2).

For each candidate prompt x, draw k samples y^(1..k) ~ p_theta(. | x), grade them, and compute

    pass@k(x) = (1/k) sum_i 1[y^(i) is correct],     Var(x) = (1/k) sum_i (1[y^(i) correct] - pass@k(x))^2
                                                            = pass@k(x) (1 - pass@k(x))

then take x* = argmax_x Var(x): the prompts on the cusp of the model's ability (neither always right nor
always wrong) give entropy minimization the most signal.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from em_hf.generation.batched import generate_completions
from em_hf.generation.decoding import DecodingMethod
from em_hf.generation.prompts import Prompt
from em_hf.utils.answers import extract_answer, extract_boxed, normalize_answer

__all__ = ["PromptPassVariance", "default_verifier", "select_by_pass_variance"]

Verifier = Callable[[str, Any], bool]


@dataclass(frozen=True)
class PromptPassVariance:
    """One candidate prompt's sampled pass rate and its variance p(1 - p).

    Parameters:
        index (`int`):
            Position in the candidate list.
        prompt (`str` or `list[dict]`):
            The candidate prompt, as given.
        answer (`Any`):
            Its reference answer, as given.
        pass_rate (`float`):
            Share of the ``num_samples`` completions the verifier accepted (pass@k averaged).
        variance (`float`):
            ``pass_rate * (1 - pass_rate)``, what the ranking sorts by (highest first).
        num_samples (`int`):
            k, the completions sampled.
        completions (`tuple[str, ...]`):
            The sampled completion texts.

    Examples:
        >>> from em_hf.data.selection import PromptPassVariance
        >>> row = PromptPassVariance(0, "Compute 2 + 2.", 4, pass_rate=0.25, variance=0.1875, num_samples=4,
        ...                          completions=("4", "5", "3", "22"))
        >>> row.variance == row.pass_rate * (1 - row.pass_rate)
        True
    """

    index: int
    prompt: Prompt
    answer: Any
    pass_rate: float
    variance: float
    num_samples: int
    completions: tuple[str, ...]


def _as_number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def default_verifier(completion: str, answer: Any) -> bool:
    """Is ``completion``'s final answer equal to ``answer``?

    The final answer is the last ``\\boxed{}`` content, else the last number (:func:`extract_answer`).
    Numbers (an int/float reference or a numeric string) are compared numerically (relative tolerance
    1e-6); anything else, or a boxed completion whose content is not a plain number, goes through
    ``math_verify`` (``pip install math-verify``) when it is installed, else through exact string equality
    after normalization.

    Parameters:
        completion (`str`):
            The model's text.
        answer (`Any`):
            The reference: a number, or a string (LaTeX allowed with math-verify).

    Examples:
        >>> from em_hf.data import default_verifier
        >>> default_verifier("13 + 14 = 27", 27), default_verifier(r"so \\boxed{28}", "27")
        (True, False)
    """
    predicted = extract_answer(completion)
    if predicted is None:
        return False
    reference = normalize_answer(str(answer))
    predicted_number, reference_number = _as_number(predicted), _as_number(reference)
    if predicted_number is not None and reference_number is not None:
        return math.isclose(predicted_number, reference_number, rel_tol=1e-6, abs_tol=1e-9)
    if predicted == reference:
        return True
    try:
        from math_verify import parse, verify
    except ImportError:
        return False
    boxed = extract_boxed(completion)
    gold = parse(f"${reference}$")
    guess = parse(f"${boxed if boxed is not None else predicted}$")
    return bool(gold) and bool(guess) and bool(verify(gold, guess))


def select_by_pass_variance(
    model,
    tokenizer,
    prompts: Sequence[Prompt],
    answers: Sequence[Any],
    k: int = 8,
    verifier: Verifier | None = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 256,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = True,
) -> list[PromptPassVariance]:
    """Sample ``k`` answers per prompt, grade them and rank the prompts by pass@k variance, highest first.

    One-shot EM then trains on the top prompt (One-shot EM, sec. 2.2).

    Parameters:
        model, tokenizer, prompts:
            As in :func:`~em_hf.generation.batched.generate_completions`: the candidate prompts, strings or
            chat messages.
        answers (`Sequence[Any]`):
            The reference answer of each prompt.
        k (`int`, *optional*, defaults to `8`):
            Samples per prompt (>= 2): the k of pass@k.
        verifier (`Callable[[str, Any], bool]`, *optional*):
            ``verifier(completion, answer) -> bool``; defaults to :func:`default_verifier` (numeric match,
            math-verify for ``\\boxed{}`` answers).
        temperature (`float`, *optional*, defaults to `1.0`):
            Sampling temperature.
        top_p (`float`, *optional*, defaults to `1.0`):
            Nucleus sampling mass.
        max_new_tokens, batch_size, seed, progress:
            As in :func:`~em_hf.generation.batched.generate_completions` (``max_new_tokens`` defaults to
            256 here); the seed makes the selection reproducible for a given batch size.

    Returns:
        `list[PromptPassVariance]`: one per prompt, sorted by variance (ties: the candidate order).

    Examples:
        With a tiny random model (its samples are noise, but seeded):

        >>> from em_hf.data import select_by_pass_variance
        >>> from em_hf.utils.testing import tiny_llama_and_tokenizer
        >>> model, tokenizer = tiny_llama_and_tokenizer()
        >>> prompts = ["Compute 1 + 2 =", "Compute 3 + 4 =", "Compute 2 + 2 ="]
        >>> ranked = select_by_pass_variance(
        ...     model, tokenizer, prompts, ["3", "7", "4"], k=8, max_new_tokens=1, progress=False
        ... )
        >>> [(r.index, r.pass_rate, r.variance) for r in ranked]
        [(0, 0.125, 0.109375), (2, 0.125, 0.109375), (1, 0.0, 0.0)]
    """
    if len(prompts) == 0:
        raise ValueError("`prompts` is empty: give at least one candidate prompt.")
    if len(prompts) != len(answers):
        raise ValueError(
            f"`prompts` has {len(prompts)} items but `answers` has {len(answers)}; give one answer each."
        )
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValueError(f"`k` must be an integer >= 2 (a variance needs several samples), got {k!r}.")
    verifier = default_verifier if verifier is None else verifier
    if not callable(verifier):
        raise TypeError("`verifier` must be callable as verifier(completion, answer) -> bool.")
    method = DecodingMethod(
        kind="sample", temperature=temperature, top_p=top_p, label=f"sample:t={temperature}"
    )
    repeated = [prompt for prompt in prompts for _ in range(k)]
    completions, _ = generate_completions(
        model,
        tokenizer,
        repeated,
        method,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
    )
    results = []
    for index, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        texts = tuple(c.text for c in completions[index * k : (index + 1) * k])
        passed = [bool(verifier(text, answer)) for text in texts]
        pass_rate = sum(passed) / k
        variance = sum((float(p) - pass_rate) ** 2 for p in passed) / k
        results.append(PromptPassVariance(index, prompt, answer, pass_rate, variance, k, texts))
    return sorted(results, key=lambda item: (-item.variance, item.index))
