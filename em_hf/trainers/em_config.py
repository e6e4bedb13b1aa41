"""Configuration of :class:`~em_hf.trainers.EntropyMinTrainer` (EM-FT and one-shot EM)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from em_hf.utils.validation import check_int, check_number

__all__ = ["LOSS_NORMALIZATIONS", "EntropyMinConfig"]

LOSS_NORMALIZATIONS = ("token_mean", "sequence_sum")


@dataclass
class EntropyMinConfig(TrainingArguments):
    r"""``TrainingArguments`` plus the generation and loss settings of entropy-minimization fine-tuning.

    Each optimizer step samples completions from the current weights and minimizes

        L = mean over generated tokens t of  H(softmax(z_t / T_H))  [+ beta * KL_t(pi_theta || pi_ref)]

    (paper 1 sec. 3.1, EM-FT; paper 2 sec. 2.1, one-shot EM), ``T_H = entropy_temperature``. Field names
    follow trl's ``GRPOConfig`` where the meaning is the same (``num_generations``, ``max_completion_length``,
    ``temperature``, ``top_p``, ``top_k``, ``repetition_penalty``, ``generation_kwargs``, ``beta``,
    ``model_init_kwargs``, ``shuffle_dataset``) and, as there, ``per_device_train_batch_size`` counts
    completions: a micro-batch holds ``per_device_train_batch_size`` (prompt, completion) rows, each prompt
    repeated ``num_generations`` times in a row (trl's ``RepeatSampler``). Unlike GRPO the loss needs no
    groups, so the batch size need not be a multiple of ``num_generations``.

    Presets with the papers' hyperparameters: :meth:`one_shot` and :meth:`em_ft`.
    """

    learning_rate: float = field(default=1e-6, metadata={"help": "AdamW learning rate (paper 1: 1e-6)."})
    logging_steps: float = field(default=1, metadata={"help": "Log every N optimizer steps."})
    remove_unused_columns: bool | None = field(
        default=False,
        metadata={"help": "Kept False: the trainer reads the raw `prompt` column, not model inputs."},
    )
    model_init_kwargs: dict[str, Any] | None = field(
        default=None,
        metadata={"help": "Keyword arguments for `from_pretrained` when `model` is given as a string."},
    )

    # Generation (the rollouts the entropy is measured on).
    num_generations: int = field(
        default=1, metadata={"help": "Completions sampled per prompt (paper 1: N=1; one-shot EM: 64)."}
    )
    max_prompt_length: int | None = field(
        default=512,
        metadata={
            "help": "Longer prompts are truncated from the LEFT (the end of a prompt, next to the answer, "
            "is kept) with one warning. None disables truncation."
        },
    )
    max_completion_length: int = field(default=256, metadata={"help": "Maximum new tokens per completion."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the rollouts."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass in (0, 1]."})
    top_k: int = field(default=0, metadata={"help": "Top-k filtering of the rollouts; 0 disables it."})
    repetition_penalty: float = field(default=1.0, metadata={"help": "Repetition penalty of the rollouts."})
    generation_kwargs: dict[str, Any] | None = field(
        default=None,
        metadata={"help": "Extra `GenerationConfig` fields for the rollouts (they override the above)."},
    )
    shuffle_dataset: bool = field(default=True, metadata={"help": "Shuffle the prompts every epoch."})

    # Loss.
    entropy_temperature: float = field(
        default=1.0,
        metadata={"help": "T inside the entropy H(softmax(z / T)); one-shot EM uses 0.5, its sampling T."},
    )
    beta: float = field(
        default=0.0,
        metadata={
            "help": "Weight of KL(pi_theta || pi_ref) per completion token (k3 estimator on the sampled "
            "tokens, as trl's GRPO); 0 needs no reference model."
        },
    )
    loss_normalization: str = field(
        default="token_mean",
        metadata={
            "help": "'token_mean': mean over all completion tokens of the micro-batch (paper 2's code); "
            "'sequence_sum': each sequence's token-entropy sum, averaged over sequences (paper 1's H_tok)."
        },
    )
    lm_head_chunk_size: int | None = field(
        default=None,
        metadata={
            "help": "Rows per chunk of the fused LM-head entropy (em_hf.ops.linear_entropy_loss); None: "
            "about 3 * 2**24 / vocab rows."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_em_fields()

    def _check_em_fields(self) -> None:
        check_int("num_generations", self.num_generations)
        check_int("max_completion_length", self.max_completion_length)
        if self.max_prompt_length is not None:
            check_int("max_prompt_length", self.max_prompt_length)
        if self.lm_head_chunk_size is not None:
            check_int("lm_head_chunk_size", self.lm_head_chunk_size)
        check_number("temperature", self.temperature, low=0.0, low_open=True)
        check_number("entropy_temperature", self.entropy_temperature, low=0.0, low_open=True)
        check_number("repetition_penalty", self.repetition_penalty, low=0.0, low_open=True)
        check_number(
            "top_p", self.top_p, low=0.0, high=1.0, low_open=True, hint=" (1.0 disables nucleus sampling)"
        )
        check_int("top_k", self.top_k, minimum=0, hint=" (0 disables top-k)")
        check_number("beta", self.beta, low=0.0, hint=" (the KL weight)")
        if self.loss_normalization not in LOSS_NORMALIZATIONS:
            raise ValueError(
                f"`loss_normalization` must be one of {LOSS_NORMALIZATIONS}, got {self.loss_normalization!r}."
            )

    @classmethod
    def one_shot(cls, **overrides: Any) -> EntropyMinConfig:
        """One-shot EM (paper 2, sec. 3.1 and Table 1): 64 samples of ONE prompt per step, sampling
        temperature 0.5 and the same 0.5 inside the entropy, top_p 0.95, AdamW with a constant learning rate
        2e-5, gradient clipping 1.0, max response length 2048, 10 steps.

        ``per_device_train_batch_size * gradient_accumulation_steps * processes`` should stay 64 when you
        shrink the micro-batch, e.g.
        ``one_shot(per_device_train_batch_size=8, gradient_accumulation_steps=8)``.
        """
        values: dict[str, Any] = {
            "num_generations": 64,  # paper 2, Table 1: batch size 64 (all of them samples of the one prompt)
            "per_device_train_batch_size": 64,
            "gradient_accumulation_steps": 1,
            "temperature": 0.5,  # paper 2, Table 1
            "entropy_temperature": 0.5,  # paper 2's code: softmax(logits / temperature) with the same 0.5
            "top_p": 0.95,  # paper 2's code (SPEC.md, method 2)
            "learning_rate": 2e-5,  # paper 2, sec. 3.1: constant 2e-5
            "lr_scheduler_type": "constant",
            "warmup_steps": 0,
            "max_grad_norm": 1.0,  # paper 2's code: gradient clipping 1.0
            "max_completion_length": 2048,  # paper 2, Table 1: max response length
            "max_steps": 10,  # paper 2, sec. 3.1: 10 steps (accuracy peaks near step 10)
            "loss_normalization": "token_mean",
            "beta": 0.0,
        }
        values.update(overrides)
        return cls(**values)

    @classmethod
    def em_ft(cls, **overrides: Any) -> EntropyMinConfig:
        """EM-FT (paper 1, sec. 3.1 and sec. 3.3 "Training data, models, and methods"): N=1 completion per
        prompt, batch 512, learning rate 1e-6, sequences of 4096 tokens (here 1024 prompt + 3072 completion),
        the total token-level entropy per sequence (H_tok) averaged over sequences, no KL. The paper stops
        early on a validation set (about 40 steps): use
        :class:`~em_hf.trainers.BenchmarkEarlyStoppingCallback`.

        The batch of 512 is ``per_device_train_batch_size (8) * gradient_accumulation_steps (64)`` on one
        process; divide the accumulation by the number of processes.
        """
        values: dict[str, Any] = {
            "num_generations": 1,  # paper 1, Table 2: EM-FT N=1
            "per_device_train_batch_size": 8,
            "gradient_accumulation_steps": 64,  # 8 * 64 = 512, paper 1 sec. 3.3: batch size 512
            "learning_rate": 1e-6,  # paper 1 sec. 3.3
            "temperature": 1.0,
            "entropy_temperature": 1.0,
            "max_prompt_length": 1024,
            "max_completion_length": 3072,  # 4096 tokens in all (SPEC.md, method 1)
            "loss_normalization": "sequence_sum",  # paper 1, Table 1: (1/N) sum_i sum_t H_t
            "beta": 0.0,
        }
        values.update(overrides)
        return cls(**values)
