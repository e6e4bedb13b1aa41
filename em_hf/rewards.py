"""Rewards for EM-RL and its self-consistency baseline (Unreasonable Effectiveness of EM, sec. 3.2, 3.3).

Two pure tensor functions turn per-token quantities of N sampled completions into one reward per
completion (``[N, T]`` inputs, ``[N]`` output), summing over the completion tokens only:

    token_entropy_reward:    r_tok(y) = -sum_t mask_t * H_t                (eq. 4)
    sequence_logprob_reward: r_seq(y) =  sum_t mask_t * log pi(y_t | y_<t)  (= log pi(y), eq. 3)

where ``mask`` is 1 on the generated tokens (through the first EOS) and 0 on padding and on
anything after EOS. Maximising E[r_tok] minimises the token-level entropy estimate (eq. 2),
maximising E[r_seq] the trajectory-level one (eq. 1). :class:`em_hf.EMRLOOTrainer` feeds them with
the per-token entropies and log-probabilities that trl's RLOOTrainer already computes in its scoring
forward pass of the sampling policy.

``self_consistency_reward`` is the SC-RL baseline (Unreasonable Effectiveness of EM, sec. 3.3), a reward
function in the form trl's ``RLOOTrainer`` and ``GRPOTrainer`` call (``prompts``, ``completions``,
``**kwargs``):

    r(y_i) = (1/N) sum_{j=1}^{N} 1[a_i == a_j]     over the N completions of the same prompt,

with a_i the final answer of completion i (:func:`em_hf.utils.answers.extract_answer`: the last
``\\boxed{}``, else the last number). A completion without an extractable answer gets 0 and never
counts as a vote for another one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import torch

from em_hf.generation.prompts import is_conversational
from em_hf.utils.answers import extract_answer
from em_hf.utils.validation import check_float_tensor, check_int

__all__ = ["self_consistency_reward", "sequence_logprob_reward", "token_entropy_reward"]


def _check_per_token(values: torch.Tensor, mask: torch.Tensor, name: str) -> torch.Tensor:
    """Validate ``values`` [N, T] and ``mask`` [N, T]; return the mask as a bool tensor."""
    check_float_tensor(values, name)
    if values.dim() != 2:
        raise ValueError(
            f"`{name}` must have shape [N, T] (completions x tokens), got {tuple(values.shape)}."
        )
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"`mask` must be a torch.Tensor of shape [N, T], got {type(mask).__name__}.")
    if mask.shape != values.shape:
        raise ValueError(
            f"`mask` must have the shape of `{name}` {tuple(values.shape)}, got {tuple(mask.shape)}; pass "
            "the completion mask aligned with the completion tokens (1 through the first EOS, 0 after it "
            "and on padding)."
        )
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("`mask` must contain only 0 and 1 (or be a bool tensor).")
        mask = mask != 0
    if not bool(torch.isfinite(values[mask]).all()):
        raise ValueError(f"`{name}` contains NaN or inf at masked-in (completion) positions.")
    return mask


def _masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # where() instead of a product: NaN or inf at padding positions must not leak into the sum.
    dtype = torch.float64 if values.dtype == torch.float64 else torch.float32
    values = values.to(dtype)
    return torch.where(mask.to(values.device), values, torch.zeros_like(values)).sum(dim=-1)


def token_entropy_reward(entropies: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """EM-RL-token reward r_tok(y) = -sum_t mask_t H_t, one value per completion (Unreasonable
    Effectiveness of EM, sec. 3.2, eq. 4).

    Parameters:
        entropies (`torch.Tensor` of shape `[N, T]`):
            Token entropies H_t = -sum_v p_v log p_v of the sampling policy at the position that predicts
            completion token t (as returned by :func:`em_hf.token_entropy` or trl's
            ``_get_per_token_logps_and_entropies``).
        mask (`torch.Tensor` of shape `[N, T]`):
            Bool or 0/1: 1 on the completion tokens (EOS included), 0 on padding and after EOS. Values at
            masked-out positions are ignored, even NaN.

    Returns:
        `torch.Tensor` of shape `[N]`: the rewards in float32 (float64 for float64 input); 0 for an
        all-masked row.

    Examples:
        >>> import torch
        >>> from em_hf.rewards import token_entropy_reward
        >>> entropies = torch.tensor([[0.5, 0.25, 9.0], [1.0, float("nan"), 2.0]])
        >>> mask = torch.tensor([[1, 1, 0], [1, 0, 0]])  # padding (and its NaN) is ignored
        >>> token_entropy_reward(entropies, mask)
        tensor([-0.7500, -1.0000])
    """
    mask = _check_per_token(entropies, mask, "entropies")
    return -_masked_sum(entropies, mask)


def sequence_logprob_reward(logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """EM-RL-sequence reward r_seq(y) = sum_t mask_t log pi(y_t | y_<t) = log pi(y) (Unreasonable
    Effectiveness of EM, sec. 3.2, eq. 3).

    Parameters:
        logps (`torch.Tensor` of shape `[N, T]`):
            Log-probabilities of the sampled completion tokens under the sampling policy.
        mask (`torch.Tensor` of shape `[N, T]`):
            As in :func:`token_entropy_reward`.

    Returns:
        `torch.Tensor` of shape `[N]`: as in :func:`token_entropy_reward`.

    Examples:
        >>> import math, torch
        >>> from em_hf.rewards import sequence_logprob_reward
        >>> logps = torch.log(torch.tensor([[0.5, 0.5, 1.0], [0.25, 1.0, 1.0]]))
        >>> rewards = sequence_logprob_reward(logps, torch.tensor([[1, 1, 0], [1, 1, 1]]))
        >>> [round(math.exp(r), 4) for r in rewards.tolist()]  # pi(y) = 0.5 * 0.5 and 0.25 * 1 * 1
        [0.25, 0.25]
    """
    mask = _check_per_token(logps, mask, "logps")
    return _masked_sum(logps, mask)


def _completion_text(completion: Any) -> str:
    """The text of one completion as trl passes it: a string (standard format) or a list of chat
    messages (conversational format; the content of the last message, text parts joined)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list | tuple) and completion and isinstance(completion[-1], dict):
        content = completion[-1].get("content", "")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return "".join(
                part.get("text", "")
                for part in content
                if isinstance(part, dict) and part.get("type") == "text"
            )
    raise TypeError(
        "`completions` must hold strings or lists of chat messages ({'role': ..., 'content': ...}), got "
        f"{type(completion).__name__}: {completion!r:.80}"
    )


def _prompt_key(prompt: Any) -> str:
    """A hashable identity for a prompt (string, or chat messages compared by their JSON form)."""
    if not is_conversational(prompt):
        return prompt
    return json.dumps(prompt, sort_keys=True, default=str)


def _gather_across_processes(keys: list[str], answers: list[str | None]) -> tuple[list, list, int]:
    """All processes' keys and answers in rank order, and this process's offset in them."""
    world = torch.distributed.get_world_size()
    gathered: list[Any] = [None] * world
    torch.distributed.all_gather_object(gathered, (keys, answers))
    rank = torch.distributed.get_rank()
    offset = sum(len(part[0]) for part in gathered[:rank])
    all_keys = [k for part in gathered for k in part[0]]
    all_answers = [a for part in gathered for a in part[1]]
    return all_keys, all_answers, offset


def _groups(keys: Sequence[str], num_generations: int | None) -> list[range]:
    """Index ranges of the prompt groups: consecutive runs of the same prompt (the layout of trl's
    ``RepeatSampler``), or consecutive blocks of ``num_generations`` when it is given."""
    if num_generations is None:
        groups, start = [], 0
        for i in range(1, len(keys) + 1):
            if i == len(keys) or keys[i] != keys[start]:
                groups.append(range(start, i))
                start = i
        return groups
    if len(keys) % num_generations != 0:
        raise ValueError(
            f"{len(keys)} completions cannot be split into groups of `num_generations`={num_generations}; "
            "pass the trainer's num_generations (and all completions of each prompt), or leave it None "
            "to group consecutive equal prompts."
        )
    groups = [range(s, s + num_generations) for s in range(0, len(keys), num_generations)]
    for group in groups:
        if len({keys[i] for i in group}) != 1:
            raise ValueError(
                f"completions {group.start}..{group.stop - 1} should share one prompt (a group of "
                f"`num_generations`={num_generations}) but their prompts differ; check num_generations."
            )
    return groups


def self_consistency_reward(
    prompts: Sequence[Any],
    completions: Sequence[Any],
    num_generations: int | None = None,
    gather: bool = True,
    **kwargs: Any,
) -> list[float]:
    """SC-RL reward: the share of the completions of the same prompt whose answer equals this one's.

    r_i = (1/N) sum_{j in group(i)} 1[a_i == a_j] (Unreasonable Effectiveness of EM, sec. 3.3,
    "Baseline"), itself included, so a unique answer gets 1/N and a unanimous one 1; a completion without
    an extractable answer (:func:`em_hf.utils.answers.extract_answer` returns None) gets 0.

    Pass it as ``reward_funcs=self_consistency_reward`` to ``trl.RLOOTrainer``, ``trl.GRPOTrainer`` or
    :class:`em_hf.EMRLOOTrainer`. trl calls it with the local batch: ``prompts`` (strings or chat
    message lists) repeated ``num_generations`` times in a row by its ``RepeatSampler``, and
    ``completions`` (strings, or ``[{"role": "assistant", "content": ...}]``).

    Parameters:
        prompts (`Sequence[str | list[dict]]`):
            One prompt per completion.
        completions (`Sequence[str | list[dict]]`):
            The completions, aligned with ``prompts``.
        num_generations (`int`, *optional*):
            Group size N. `None` (what trl passes) groups consecutive equal prompts, which is exact unless
            the same prompt is drawn twice in a row; give it (e.g. with ``functools.partial``) to split
            the groups into blocks of exactly N and check them.
        gather (`bool`, *optional*, defaults to `True`):
            In a distributed run (``torch.distributed`` initialized, several processes), gather the
            prompts and answers of all processes first: trl's trainers call reward functions on every
            process at the same point, and a prompt's group may be split across processes (per-device
            batch smaller than ``num_generations``). `False` votes locally.
        **kwargs:
            The other columns trl passes (``completion_ids``, ``trainer_state``, ...); ignored.

    Returns:
        `list[float]`: one value in [0, 1] per completion.

    Examples:
        >>> from em_hf.rewards import self_consistency_reward
        >>> completions = [r"so \\boxed{4}", "The answer is 4", "5", "no idea"]
        >>> self_consistency_reward(["What is 2 + 2?"] * 4, completions)
        [0.5, 0.5, 0.25, 0.0]
    """
    if len(prompts) != len(completions):
        raise ValueError(
            f"`prompts` ({len(prompts)}) and `completions` ({len(completions)}) must have the same length: "
            "one prompt per completion."
        )
    if num_generations is not None:
        check_int("num_generations", num_generations, hint=" (or None)")
    keys = [_prompt_key(p) for p in prompts]
    answers = [extract_answer(_completion_text(c)) for c in completions]
    offset = 0
    distributed = gather and torch.distributed.is_available() and torch.distributed.is_initialized()
    if distributed and torch.distributed.get_world_size() > 1:
        keys, answers, offset = _gather_across_processes(keys, answers)
    rewards = [0.0] * len(keys)
    for group in _groups(keys, num_generations):
        size = len(group)
        for i in group:
            if answers[i] is not None:
                rewards[i] = sum(answers[j] == answers[i] for j in group) / size
    return rewards[offset : offset + len(completions)]
