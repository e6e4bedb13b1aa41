"""Label-free rewards: EM-RL and its self-consistency baseline (Unreasonable Effectiveness of EM,
sec. 3.2, 3.3), and the family around them: INTUITOR's self-certainty, RENT's mean entropy and
EMPO's semantic entropy.

Two pure tensor functions turn per-token quantities of N sampled completions into one reward per
completion (``[N, T]`` inputs, ``[N]`` output), summing over the completion tokens only:

    token_entropy_reward:    r_tok(y) = -sum_t mask_t * H_t                (eq. 4)
    sequence_logprob_reward: r_seq(y) =  sum_t mask_t * log pi(y_t | y_<t)  (= log pi(y), eq. 3)

where ``mask`` is 1 on the generated tokens (through the first EOS) and 0 on padding and on
anything after EOS. Maximising E[r_tok] minimises the token-level entropy estimate (eq. 2),
maximising E[r_seq] the trajectory-level one (eq. 1). :class:`em_hf.EMRLOOTrainer` feeds them with
the per-token entropies and log-probabilities that trl's RLOOTrainer already computes in its scoring
forward pass of the sampling policy.

Two more per-token reductions, means over the completion tokens instead of sums:

    self_certainty_reward:   r_sc(y)   =  (1/|y|) sum_t mask_t KL(U || pi(. | y_<t))
                             (INTUITOR, "Learning to Reason without External Rewards",
                             arXiv:2505.19590; higher = more confident)
    mean_entropy_reward:     r_rent(y) = -(1/|y|) sum_t mask_t H_t
                             (RENT, "Maximizing Confidence Alone Improves Reasoning",
                             arXiv:2505.22660; higher = lower entropy = more confident)

with U uniform over the vocabulary (its unmasked tokens) and KL(U || p) = logsumexp(z) - mean(z)
- log V (:func:`em_hf.ops.token_statistics` computes it in the entropy pass).

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
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from em_hf.generation.prompts import is_conversational, render_prompt
from em_hf.ops import token_statistics
from em_hf.utils.answers import answers_equivalent, extract_answer
from em_hf.utils.validation import (
    check_choice,
    check_float_tensor,
    check_int,
    check_number,
    check_temperature,
)

__all__ = [
    "PER_TOKEN_REWARDS",
    "TokenStatisticsReward",
    "cluster_entropy",
    "completion_text",
    "mean_entropy_reward",
    "self_certainty_reward",
    "self_consistency_reward",
    "semantic_clusters",
    "semantic_entropy_reward",
    "semantic_entropy_rewards_and_entropies",
    "sequence_logprob_reward",
    "token_entropy_reward",
]


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


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the masked-in positions of each row; 0 for a row without any."""
    count = mask.to(values.device).sum(dim=-1).clamp_min(1)
    return _masked_sum(values, mask) / count


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


def self_certainty_reward(self_certainty: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """INTUITOR's reward: the mean self-certainty over the completion tokens,
    r(y) = (1/|y|) sum_t KL(U || pi(. | x, y_<t)).

    "Learning to Reason without External Rewards" (arXiv:2505.19590), eq. of "self-certainty":
    KL(U || p) = -log V - (1/V) sum_v log p_v = logsumexp(z) - mean(z) - log V, with U uniform over
    the V unmasked vocabulary tokens. Sign: higher = more confident (0 for a uniform p); maximize it.

    Parameters:
        self_certainty (`torch.Tensor` of shape `[N, T]`):
            Per-token KL(U || p) of the sampling policy at the positions that predict the completion
            tokens (:func:`em_hf.ops.token_statistics` or ``linear_token_entropy(...,
            self_certainty=True)`` return it).
        mask (`torch.Tensor` of shape `[N, T]`):
            As in :func:`token_entropy_reward`.

    Returns:
        `torch.Tensor` of shape `[N]`: float32 (float64 for float64 input); 0 for an all-masked row.

    Examples:
        >>> import torch
        >>> from em_hf.rewards import self_certainty_reward
        >>> values = torch.tensor([[2.0, 1.0, 7.0], [0.5, 0.0, 0.0]])
        >>> mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
        >>> self_certainty_reward(values, mask)
        tensor([1.5000, 0.5000])
    """
    mask = _check_per_token(self_certainty, mask, "self_certainty")
    return _masked_mean(self_certainty, mask)


def mean_entropy_reward(
    entropies: torch.Tensor,
    mask: torch.Tensor,
    has_answer: torch.Tensor | None = None,
    format_penalty: float = 0.0,
) -> torch.Tensor:
    """RENT's reward: minus the mean token entropy over the completion tokens,
    r(y) = -(1/|y|) sum_t H(pi(. | x, y_<t)), optionally minus a format penalty.

    "Maximizing Confidence Alone Improves Reasoning" (RENT, arXiv:2505.22660): the entropy averaged
    over the response, negated. Unlike EM-RL-token (:func:`token_entropy_reward`, a sum), the mean
    does not reward short answers for being short. Sign: higher = more confident; maximize it.
    The option: a completion without an extractable final answer (``has_answer`` False) loses
    ``format_penalty``, so that confidence is not bought by dropping the answer format.

    Parameters:
        entropies (`torch.Tensor` of shape `[N, T]`):
            Token entropies, as in :func:`token_entropy_reward`.
        mask (`torch.Tensor` of shape `[N, T]`):
            As in :func:`token_entropy_reward`.
        has_answer (`torch.Tensor` of shape `[N]`, *optional*):
            Bool: whether each completion has a final answer (e.g. ``extract_answer(text) is not
            None``). Required when ``format_penalty`` is not 0.
        format_penalty (`float`, *optional*, defaults to `0.0`):
            Subtracted from the reward of completions without an answer (>= 0).

    Returns:
        `torch.Tensor` of shape `[N]`: float32 (float64 for float64 input); 0 for an all-masked row
        (before the penalty).

    Examples:
        >>> import torch
        >>> from em_hf.rewards import mean_entropy_reward
        >>> entropies = torch.tensor([[0.5, 0.25, 9.0], [1.0, 3.0, 2.0]])
        >>> mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
        >>> mean_entropy_reward(entropies, mask)
        tensor([-0.3750, -2.0000])
        >>> mean_entropy_reward(entropies, mask, has_answer=torch.tensor([True, False]), format_penalty=1.0)
        tensor([-0.3750, -3.0000])
    """
    mask = _check_per_token(entropies, mask, "entropies")
    penalty = check_number("format_penalty", format_penalty, low=0.0)
    rewards = -_masked_mean(entropies, mask)
    if penalty:
        if not isinstance(has_answer, torch.Tensor) or has_answer.shape != rewards.shape:
            raise ValueError(
                f"`has_answer` must be a bool tensor of shape {tuple(rewards.shape)} (one per completion) "
                "when `format_penalty` is not 0."
            )
        rewards = rewards - penalty * (~has_answer.bool()).to(rewards.device, rewards.dtype)
    return rewards


PER_TOKEN_REWARDS = ("self_certainty", "mean_entropy", "token_entropy", "sequence_logprob")


class TokenStatisticsReward:
    """A per-token label-free reward as a trl reward function, for trl's own ``RLOOTrainer`` and
    ``GRPOTrainer``: it scores the completions with one no-grad forward of ``model`` (pass the
    policy being trained) and reduces the per-token statistics of :func:`em_hf.ops.token_statistics`.

    ``"self_certainty"`` (INTUITOR, :func:`self_certainty_reward`), ``"mean_entropy"`` (RENT,
    :func:`mean_entropy_reward`), ``"token_entropy"`` (EM-RL-token, :func:`token_entropy_reward`) or
    ``"sequence_logprob"`` (EM-RL-sequence, :func:`sequence_logprob_reward`), at the sampling
    ``temperature``. The cost is that forward (prompt + completion, the logits of the completion
    positions); :class:`em_hf.EMRLOOTrainer` computes the same rewards without it, from its own
    scoring pass (``EMRLOOConfig.label_free_rewards``). trl logs it as ``rewards/<name>/mean``.

    Parameters:
        name (`str`):
            One of ``"self_certainty"``, ``"mean_entropy"``, ``"token_entropy"``, ``"sequence_logprob"``.
        model (`PreTrainedModel`):
            The policy (the same object the trainer trains, so that the reward follows its updates).
        processing_class (`PreTrainedTokenizerBase`):
            Its tokenizer (prompts are rendered with :func:`em_hf.generation.prompts.render_prompt`).
        temperature (`float`, *optional*, defaults to `1.0`):
            The sampling temperature (trl's ``args.temperature``).
        format_penalty (`float`, *optional*, defaults to `0.0`):
            RENT's option for ``"mean_entropy"``: subtracted when a completion has no final answer.

    Examples:
        >>> from em_hf.rewards import TokenStatisticsReward
        >>> from em_hf.utils.testing import tiny_llama_and_tokenizer
        >>> model, tokenizer = tiny_llama_and_tokenizer()
        >>> reward = TokenStatisticsReward("self_certainty", model, tokenizer)
        >>> values = reward(["2 + 2 ="] * 2, ["4", "5 6"], completion_ids=[[5], [6, 7]])
        >>> len(values), all(v > 0 for v in values)
        (2, True)
    """

    def __init__(
        self,
        name: str,
        model: Any,
        processing_class: Any,
        temperature: float = 1.0,
        format_penalty: float = 0.0,
    ) -> None:
        self.name = check_choice("name", name, PER_TOKEN_REWARDS)
        self.__name__ = name
        self.model = model
        self.processing_class = processing_class
        self.temperature = check_temperature(temperature)
        self.format_penalty = check_number("format_penalty", format_penalty, low=0.0)

    @torch.no_grad()
    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]],
        **kwargs,
    ) -> list[float | None]:
        prompt_ids = [render_prompt(self.processing_class, prompt) for prompt in prompts]
        device = next(self.model.parameters()).device
        rows = [list(p) + list(c) for p, c in zip(prompt_ids, completion_ids, strict=True)]
        pad = self.processing_class.pad_token_id or 0
        width = max(len(row) for row in rows)
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for i, row in enumerate(rows):  # right padding: the completion follows its prompt
            input_ids[i, : len(row)] = torch.tensor(row)
            attention_mask[i, : len(row)] = 1
        logits = self.model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
        # position t - 1 predicts token t: the completion of row i is predicted from len(prompt) - 1 on
        picked = [
            logits[i, len(p) - 1 : len(p) - 1 + len(c)]
            for i, (p, c) in enumerate(zip(prompt_ids, completion_ids, strict=True))
        ]
        labels = torch.tensor([t for c in completion_ids for t in c], dtype=torch.long, device=logits.device)
        stats = token_statistics(torch.cat(picked).float(), self.temperature, labels)
        lengths = [len(c) for c in completion_ids]
        mask = torch.zeros(len(rows), max(max(lengths), 1), dtype=torch.bool)
        per_token = {key: torch.zeros(mask.shape) for key in ("entropy", "self_certainty", "logprob")}
        start = 0
        for i, n in enumerate(lengths):
            mask[i, :n] = True
            for key in per_token:
                per_token[key][i, :n] = getattr(stats, key)[start : start + n].cpu()
            start += n
        if self.name == "self_certainty":
            rewards = self_certainty_reward(per_token["self_certainty"], mask)
        elif self.name == "mean_entropy":
            has_answer = torch.tensor([extract_answer(completion_text(c)) is not None for c in completions])
            rewards = mean_entropy_reward(per_token["entropy"], mask, has_answer, self.format_penalty)
        elif self.name == "token_entropy":
            rewards = token_entropy_reward(per_token["entropy"], mask)
        else:
            rewards = sequence_logprob_reward(per_token["logprob"], mask)
        return [None if n == 0 else float(r) for r, n in zip(rewards.tolist(), lengths, strict=True)]


def completion_text(completion: Any) -> str:
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


_AGREEMENT_PARAMETERS = """
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
"""


def _agreement_reward(
    name: str, cluster: Callable[[Sequence[str | None]], list[int | None]], summary: str, examples: str
) -> Callable[..., list[float]]:
    """A trl reward function r_i = |C(i)| / N: the share of the N completions of completion i's prompt
    whose final answer falls in its answer cluster C(i) (``cluster`` forms the clusters of one group);
    0 without an answer. Its docstring is ``summary``, the shared parameters and ``examples``."""

    def reward(
        prompts: Sequence[Any],
        completions: Sequence[Any],
        num_generations: int | None = None,
        gather: bool = True,
        **kwargs: Any,
    ) -> list[float]:
        answers, groups, local = _grouped_answers(prompts, completions, num_generations, gather)
        return _cluster_shares(answers, groups, cluster)[0][local]

    reward.__name__ = reward.__qualname__ = name
    reward.__doc__ = summary + _AGREEMENT_PARAMETERS + examples
    return reward


def _grouped_answers(
    prompts: Sequence[Any], completions: Sequence[Any], num_generations: int | None, gather: bool
) -> tuple[list[str | None], list[range], slice]:
    """The final answers of the completions (all processes' when gathering), their prompt groups and
    the slice of them that belongs to this process."""
    if len(prompts) != len(completions):
        raise ValueError(
            f"`prompts` ({len(prompts)}) and `completions` ({len(completions)}) must have the same length: "
            "one prompt per completion."
        )
    if num_generations is not None:
        check_int("num_generations", num_generations, hint=" (or None)")
    keys = [_prompt_key(p) for p in prompts]
    answers = [extract_answer(completion_text(c)) for c in completions]
    offset = 0
    distributed = gather and torch.distributed.is_available() and torch.distributed.is_initialized()
    if distributed and torch.distributed.get_world_size() > 1:
        keys, answers, offset = _gather_across_processes(keys, answers)
    return answers, _groups(keys, num_generations), slice(offset, offset + len(completions))


def _exact_clusters(answers: Sequence[str | None]) -> list[int | None]:
    """Cluster ids of final answers by equal strings (self-consistency's votes); None for a missing
    answer."""
    ids: dict[str, int] = {}
    return [None if answer is None else ids.setdefault(answer, len(ids)) for answer in answers]


def semantic_clusters(answers: Sequence[str | None]) -> list[int | None]:
    r"""Cluster ids of final answers by mathematical equivalence: each answer joins the first cluster
    whose first member it is equivalent to (:func:`em_hf.utils.answers.answers_equivalent`: equal
    normalized strings, equal numbers, else math-verify's symbolic equivalence), else opens a new
    one. None for a missing answer.

    Examples:
        >>> from em_hf.rewards import semantic_clusters
        >>> semantic_clusters(["1/2", "0.5", "\\frac{1}{2}", "2", None])
        [0, 0, 0, 1, None]
    """
    representatives: list[str] = []
    clusters: list[int | None] = []
    for answer in answers:
        if answer is None:
            clusters.append(None)
            continue
        for index, representative in enumerate(representatives):
            if answers_equivalent(answer, representative):
                clusters.append(index)
                break
        else:
            representatives.append(answer)
            clusters.append(len(representatives) - 1)
    return clusters


def cluster_entropy(clusters: Sequence[int | None]) -> float:
    """The semantic entropy of one group: -sum_k (|C_k| / N) log(|C_k| / N) over its answer clusters,
    a completion without an answer counting as a cluster of its own (it agrees with nothing). 0 when
    all N agree, log N when no two do."""
    size = len(clusters)
    counts: dict[Any, int] = {}
    for index, cluster in enumerate(clusters):
        key = ("none", index) if cluster is None else cluster
        counts[key] = counts.get(key, 0) + 1
    return -sum(c / size * math.log(c / size) for c in counts.values())


self_consistency_reward = _agreement_reward(
    "self_consistency_reward",
    _exact_clusters,
    summary="""SC-RL reward: the share of the completions of the same prompt whose answer equals this one's.

    r_i = (1/N) sum_{j in group(i)} 1[a_i == a_j] (Unreasonable Effectiveness of EM, sec. 3.3,
    "Baseline"), itself included, so a unique answer gets 1/N and a unanimous one 1; a completion without
    an extractable answer (:func:`em_hf.utils.answers.extract_answer` returns None) gets 0.

    Pass it as ``reward_funcs=self_consistency_reward`` to ``trl.RLOOTrainer``, ``trl.GRPOTrainer`` or
    :class:`em_hf.EMRLOOTrainer`. trl calls it with the local batch: ``prompts`` (strings or chat
    message lists) repeated ``num_generations`` times in a row by its ``RepeatSampler``, and
    ``completions`` (strings, or ``[{"role": "assistant", "content": ...}]``).
""",
    examples="""
    Examples:
        >>> from em_hf.rewards import self_consistency_reward
        >>> completions = [r"so \\boxed{4}", "The answer is 4", "5", "no idea"]
        >>> self_consistency_reward(["What is 2 + 2?"] * 4, completions)
        [0.5, 0.5, 0.25, 0.0]
    """,
)


semantic_entropy_reward = _agreement_reward(
    "semantic_entropy_reward",
    semantic_clusters,
    summary="""EMPO's reward: the share of the completions of the same prompt whose final answer is
    mathematically equivalent to this one's.

    "Right Question is Already Half the Answer: Fully Unsupervised LLM Reasoning Incentivization"
    (EMPO, arXiv:2504.05812): the N completions of a prompt are clustered by meaning (here: final
    answers by mathematical equivalence, :func:`semantic_clusters`), and r_i = |C(i)| / N, the
    empirical probability of completion i's cluster; minimizing the group's semantic entropy
    H = -sum_k (|C_k|/N) log(|C_k|/N) (:func:`cluster_entropy`) is what this reward drives in
    expectation. Sign: higher = the answer is shared by more samples. A completion without an
    extractable answer gets 0. Unlike :func:`self_consistency_reward` (exact string votes),
    ``1/2``, ``0.5`` and ``\\frac{1}{2}`` fall in one cluster. Needs math-verify (``em_hf[eval]``).

    A trl reward function (``prompts``, ``completions``, ``**kwargs``), grouped and gathered like
    :func:`self_consistency_reward`; :class:`em_hf.EMRLOOTrainer` (``label_free_rewards``) also
    logs the mean cluster entropy of its groups as ``semantic_entropy/cluster_entropy``.
""",
    examples="""
    Examples:
        >>> from em_hf.rewards import semantic_entropy_reward
        >>> completions = [r"\\boxed{\\frac{1}{2}}", "it is 0.5", r"\\boxed{2}", "no idea"]
        >>> semantic_entropy_reward(["Half of 1?"] * 4, completions)
        [0.5, 0.5, 0.25, 0.0]
    """,
)


def semantic_entropy_rewards_and_entropies(
    prompts: Sequence[Any],
    completions: Sequence[Any],
    num_generations: int | None = None,
    gather: bool = True,
) -> tuple[list[float], list[float]]:
    """:func:`semantic_entropy_reward`'s rewards (this process's completions) and the cluster
    entropy of every group (all processes' groups when gathering)."""
    answers, groups, local = _grouped_answers(prompts, completions, num_generations, gather)
    rewards, group_clusters = _cluster_shares(answers, groups, semantic_clusters)
    return rewards[local], [cluster_entropy(clusters) for clusters in group_clusters]


def _cluster_shares(
    answers: Sequence[str | None],
    groups: Sequence[range],
    cluster: Callable[[Sequence[str | None]], list[int | None]],
) -> tuple[list[float], list[list[int | None]]]:
    """r_i = |C(i)| / N within each group of N completions, C(i) being completion i's answer cluster
    under ``cluster`` (0 without an answer), and every group's cluster ids."""
    rewards = [0.0] * len(answers)
    group_clusters = []
    for group in groups:
        clusters = cluster([answers[i] for i in group])
        group_clusters.append(clusters)
        for i, cluster_id in zip(group, clusters, strict=True):
            if cluster_id is not None:
                rewards[i] = clusters.count(cluster_id) / len(group)
    return rewards, group_clusters
