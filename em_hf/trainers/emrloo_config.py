"""Configuration of :class:`em_hf.EMRLOOTrainer`: trl's ``RLOOConfig`` plus the EM reward (EM-RL,
Unreasonable Effectiveness of EM, sec. 3.2)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from trl import RLOOConfig

from em_hf.utils.validation import check_choice, check_generation_kwargs, check_number

__all__ = ["EM_REWARDS", "LABEL_FREE_REWARDS", "EMRLOOConfig"]

EM_REWARDS = ("token", "sequence")
# The label-free rewards EMRLOOTrainer computes from its own scoring pass (em_hf.rewards):
# self_certainty (INTUITOR), mean_entropy (RENT), token_entropy (EM-RL-token), sequence_logprob
# (EM-RL-sequence), semantic_entropy (EMPO).
LABEL_FREE_REWARDS = (
    "self_certainty",
    "mean_entropy",
    "token_entropy",
    "sequence_logprob",
    "semantic_entropy",
)

# The paper's EM-RL setup (Unreasonable Effectiveness of EM, sec. 3.3 "Training data, models, and
# methods"): "We set the number of rollouts to N=4, batch size to 512, learning rate to 1e-6. We use a
# KL regularizer with small coefficient beta=0.001". Appendix D adds sequence length 4096 and early
# stopping on a validation set (about 100 steps). Batch size and sequence length are left to the
# user's hardware.
PAPER_EM_RL = {"num_generations": 4, "beta": 0.001, "learning_rate": 1e-6}


def bf16_available() -> bool:
    """Whether bf16 mixed precision can train here: a CUDA GPU that supports bf16."""
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


@dataclass
class EMRLOOConfig(RLOOConfig):
    r"""``trl.RLOOConfig`` with the EM-RL reward (Unreasonable Effectiveness of EM, sec. 3.2).

    Every ``RLOOConfig`` field keeps trl's meaning and default (generation, ``beta`` KL penalty, clipping
    ``epsilon``, ``reward_weights`` for the user's reward functions, vLLM, ...); see trl's documentation.
    Added here:

    Parameters:
        em_reward (`str` or `None`, *optional*, defaults to `"token"`):
            The entropy reward, computed from the sampling policy over the completion tokens only:

            - ``"token"`` (EM-RL-token, eq. 4): r(y) = -sum_t H(pi(. | x, y_<t)).
            - ``"sequence"`` (EM-RL-sequence, eq. 3): r(y) = sum_t log pi(y_t | x, y_<t) = log pi(y).
            - `None`: no EM reward; the trainer is plain RLOO with the given reward functions (e.g.
              the SC-RL baseline, :func:`em_hf.rewards.self_consistency_reward`).
        em_reward_weight (`float`, *optional*, defaults to `1.0`):
            Weight of the EM reward in the weighted sum of rewards (the user's reward functions are
            weighted by ``reward_weights``). 0 keeps it as a logged metric only.

        label_free_rewards (`dict[str, float]`, *optional*):
            More label-free rewards, by name, with their weights in the weighted sum, each logged by trl
            as its own reward function (``rewards/<name>/mean``) and computed from the trainer's own
            scoring pass (:mod:`em_hf.rewards`): ``"self_certainty"`` (INTUITOR: mean KL(U || p) over the
            completion tokens), ``"mean_entropy"`` (RENT: minus the mean token entropy),
            ``"token_entropy"`` (EM-RL-token: minus the summed entropy), ``"sequence_logprob"``
            (EM-RL-sequence: log pi(y)), ``"semantic_entropy"`` (EMPO: share of the group in the
            completion's answer cluster; the group's cluster entropy is logged as
            ``semantic_entropy/cluster_entropy``). E.g. ``{"self_certainty": 1.0, "token_entropy": 0.5}``.
        format_penalty (`float`, *optional*, defaults to `0.0`):
            RENT's option: subtracted from ``"mean_entropy"`` for a completion without an extractable
            final answer (>= 0).

        vllm_engine_kwargs (`dict[str, Any]`, *optional*):
            With ``use_vllm=True, vllm_mode="colocate"``: extra ``vllm.LLM`` arguments for trl's call, e.g.
            ``{"dtype": "float32", "enforce_eager": True}`` on a CPU. (trl's colocated engine is also given a
            weight sync that works on vLLM's CPU backend: see :mod:`em_hf.trainers.vllm_rollouts`.)
        vllm_weight_sync_dir (`str`, *optional*):
            With ``use_vllm=True, vllm_mode="server"`` and no CUDA: the folder the trainer writes its
            weights to and the server (started with ``VLLM_SERVER_DEV_MODE=1 ... --worker-extension-cls
            em_hf.generation.vllm.weight_sync.FolderWeightSync``) reloads from. `None`: a temporary folder.

    ``num_generations`` must be at least 2: the RLOO baseline of a completion is the mean reward of
    the other completions of its prompt. Use :meth:`paper` for the paper's values.

    **Precision follows the hardware.** trl's ``bf16`` defaults to `True`, which stops a machine without
    a bf16 GPU at once ("Your setup doesn't support bf16/gpu"). Here ``bf16`` left unset (`None`) becomes
    `True` only where ``torch.cuda.is_available()`` and the GPU supports bf16, else `False` (float32;
    training then runs on the CPU without ``use_cpu``). A ``bf16`` or ``fp16`` you set is kept as it is.

    **The sizes are trl's** unless you set them: 3 epochs over the dataset (``num_train_epochs``), 8
    completions per device and micro-step, completions of up to 512 tokens, gradient checkpointing on. On
    a CPU set ``max_steps``, ``max_completion_length`` and ``per_device_train_batch_size`` (README: a
    CPU-sized run and its time).

    Examples:
        >>> from em_hf import EMRLOOConfig
        >>> args = EMRLOOConfig.paper(em_reward="sequence", output_dir="em-rl", use_cpu=True, report_to=[])
        >>> args.em_reward, args.num_generations, args.beta, args.learning_rate
        ('sequence', 4, 0.001, 1e-06)
    """

    em_reward: str | None = field(
        default="token",
        metadata={
            "help": "EM reward: 'token' (-sum_t H_t, eq. 4), 'sequence' (sum_t log pi(y_t|y_<t), "
            "eq. 3) or None (no EM reward: plain RLOO with the given reward functions).",
        },
    )
    em_reward_weight: float = field(
        default=1.0,
        metadata={"help": "Weight of the EM reward in the weighted sum of rewards."},
    )

    label_free_rewards: dict[str, float] | None = field(
        default=None,
        metadata={
            "help": "Label-free rewards and their weights, e.g. {'self_certainty': 1.0, "
            f"'token_entropy': 0.5}}; names: {', '.join(LABEL_FREE_REWARDS)}.",
        },
    )
    format_penalty: float = field(
        default=0.0,
        metadata={
            "help": "RENT's format penalty for 'mean_entropy': subtracted when a completion has no answer."
        },
    )

    vllm_engine_kwargs: dict[str, Any] | None = field(
        default=None,
        metadata={
            "help": "Extra vllm.LLM arguments for trl's colocated engine, e.g. {'enforce_eager': True}."
        },
    )
    vllm_weight_sync_dir: str | None = field(
        default=None,
        metadata={
            "help": "Server mode without CUDA: folder of the weights the server reloads (None: a temp one)."
        },
    )

    def __post_init__(self) -> None:
        if self.bf16 is None and not self.fp16:
            self.bf16 = bf16_available()
        if isinstance(self.em_reward, str) and self.em_reward.lower() in ("none", "null", ""):
            self.em_reward = None  # the CLI passes strings
        if self.em_reward is not None and self.em_reward not in EM_REWARDS:
            raise ValueError(
                f"`em_reward` must be one of {EM_REWARDS} or None, got {self.em_reward!r}: 'token' for "
                "EM-RL-token (-sum of token entropies), 'sequence' for EM-RL-sequence (log pi(y))."
            )
        if (
            isinstance(self.em_reward_weight, bool)
            or not isinstance(self.em_reward_weight, int | float)
            or not math.isfinite(self.em_reward_weight)
        ):
            raise ValueError(f"`em_reward_weight` must be a finite number, got {self.em_reward_weight!r}.")
        self._check_label_free_rewards()
        if self.num_generations is None or self.num_generations < 2:
            raise ValueError(
                f"`num_generations` must be >= 2 for the RLOO leave-one-out baseline (the mean reward of the "
                f"other completions of the same prompt), got {self.num_generations!r}; the paper uses 4 "
                "(EMRLOOConfig.paper())."
            )
        if not self.use_vllm:  # with vLLM they are SamplingParams fields, which vLLM checks
            check_generation_kwargs("generation_kwargs", self.generation_kwargs)
        super().__post_init__()

    def _check_label_free_rewards(self) -> None:
        rewards = self.label_free_rewards
        if isinstance(rewards, str):  # the CLI passes JSON
            rewards = json.loads(rewards)
        if rewards is not None:
            if not isinstance(rewards, dict) or not rewards:
                raise ValueError(
                    "`label_free_rewards` must be a non-empty dict {name: weight}, e.g. "
                    f"{{'self_certainty': 1.0, 'token_entropy': 0.5}}, got {self.label_free_rewards!r}."
                )
            for name, weight in rewards.items():
                check_choice("label_free_rewards key", name, LABEL_FREE_REWARDS)
                check_number(f"label_free_rewards[{name!r}]", weight)
            rewards = {name: float(weight) for name, weight in rewards.items()}
        self.label_free_rewards = rewards
        check_number("format_penalty", self.format_penalty, low=0.0)

    @classmethod
    def paper(cls, em_reward: str | None = "token", **overrides: Any) -> EMRLOOConfig:
        """The paper's EM-RL setup: ``num_generations=4``, ``beta=0.001``, ``learning_rate=1e-6``
        (Unreasonable Effectiveness of EM, sec. 3.3; batch size 512 and sequence length 4096 there are
        left to you).

        Parameters:
            em_reward (`str` or `None`, *optional*, defaults to `"token"`):
                ``"token"`` (EM-RL-token), ``"sequence"`` (EM-RL-sequence) or `None`, as the field.
            **overrides:
                Any ``EMRLOOConfig`` field (e.g. ``output_dir``), applied on top of the paper's values.
        """
        return cls(em_reward=em_reward, **{**PAPER_EM_RL, **overrides})
