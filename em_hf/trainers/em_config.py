"""Configuration of :class:`~em_hf.trainers.EntropyMinTrainer` (EM-FT and one-shot EM)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from em_hf.trainers.collapse_guard import COLLAPSE_ACTIONS, CollapseGuardConfig
from em_hf.utils.validation import (
    check_choice,
    check_generation_kwargs,
    check_int,
    check_number,
    parse_json_object,
)

__all__ = ["LOSS_NORMALIZATIONS", "EntropyMinConfig"]

LOSS_NORMALIZATIONS = ("token_mean", "sequence_sum")


@dataclass
class EntropyMinConfig(TrainingArguments):
    r"""``TrainingArguments`` plus the generation and loss settings of entropy-minimization fine-tuning.

    Each optimizer step samples completions from the current weights and minimizes

        L = mean over generated tokens t of  H(softmax(z_t / T_H))  [+ beta * KL_t(pi_theta || pi_ref)]

    (Unreasonable Effectiveness of EM, sec. 3.1, EM-FT; One-shot EM, sec. 2.1), ``T_H =
    entropy_temperature``. Field names follow trl's ``GRPOConfig`` where the meaning is the same
    (``num_generations``, ``max_completion_length``, ``temperature``, ``top_p``, ``top_k``,
    ``repetition_penalty``, ``generation_kwargs``, ``beta``, ``model_init_kwargs``, ``shuffle_dataset``)
    and, as there, ``per_device_train_batch_size`` counts completions: a micro-batch holds
    ``per_device_train_batch_size`` (prompt, completion) rows, each prompt repeated ``num_generations``
    times in a row (trl's ``RepeatSampler``). Unlike GRPO the loss needs no groups, so the batch size
    need not be a multiple of ``num_generations``.

    Presets with the papers' hyperparameters: :meth:`one_shot` and :meth:`em_ft`.

    Only the fields below are this class's (or get another default here); every other field
    (``output_dir``, ``max_steps``, ``per_device_train_batch_size``, ``gradient_accumulation_steps``,
    ``use_cpu``, ``report_to``, ...) is ``transformers.TrainingArguments``' with its meaning and default.

    Parameters:
        > Fields of ``TrainingArguments`` with another default

        learning_rate (`float`, *optional*, defaults to `1e-6`):
            AdamW learning rate; 1e-6 is EM-FT's (Unreasonable Effectiveness of EM, sec. 3.3).
        logging_steps (`float`, *optional*, defaults to `1`):
            Log every this many optimizer steps (EM runs are short: tens of steps).
        remove_unused_columns (`bool`, *optional*, defaults to `False`):
            Kept `False`: the trainer reads the raw ``prompt`` column, not model inputs.

        > Model loading

        model_init_kwargs (`dict[str, Any]`, *optional*):
            Keyword arguments for :func:`em_hf.load_model` when the trainer's ``model`` is a string.

        > Generation (the rollouts the entropy is measured on)

        num_generations (`int`, *optional*, defaults to `1`):
            Completions sampled per prompt. EM-FT samples N=1 (Unreasonable Effectiveness of EM, Table 2);
            one-shot EM samples 64 of its single prompt (One-shot EM, Table 1).
        max_prompt_length (`int` or `None`, *optional*, defaults to `512`):
            Longer prompts are truncated from the LEFT (the end of a prompt, next to the answer, is kept),
            with one warning. `None` disables truncation.
        max_completion_length (`int`, *optional*, defaults to `256`):
            Maximum new tokens per completion.
        temperature (`float`, *optional*, defaults to `1.0`):
            Sampling temperature of the rollouts (One-shot EM samples at 0.5). Also the temperature of the
            reference log-probabilities in the KL term.
        top_p (`float`, *optional*, defaults to `1.0`):
            Nucleus sampling mass in (0, 1]; 1.0 disables it.
        top_k (`int`, *optional*, defaults to `0`):
            Top-k filtering of the rollouts; 0 disables it.
        repetition_penalty (`float`, *optional*, defaults to `1.0`):
            Repetition penalty of the rollouts; 1.0 disables it.
        generation_kwargs (`dict[str, Any]`, *optional*):
            Extra ``GenerationConfig`` fields for the rollouts; they override the fields above.
        shuffle_dataset (`bool`, *optional*, defaults to `True`):
            Shuffle the prompts every epoch (the order is a function of ``seed`` and the epoch, so a resumed
            run sees the same order as an uninterrupted one).

        > Loss

        entropy_temperature (`float`, *optional*, defaults to `1.0`):
            T_H inside the entropy H(softmax(z / T_H)). One-shot EM's code uses its sampling temperature
            0.5 here too.
        beta (`float`, *optional*, defaults to `0.0`):
            Weight of KL(pi_theta || pi_ref) per completion token (the k3 estimator on the sampled tokens, as
            in trl's GRPO). 0 (both papers' EM-FT and one-shot EM) needs no reference model; above 0 the
            reference is a frozen copy of the initial model, or the adapter-free model under PEFT.
        loss_normalization (`str`, *optional*, defaults to `"token_mean"`):
            ``"token_mean"``: the mean over all completion tokens of the micro-batch (One-shot EM's code);
            ``"sequence_sum"``: each sequence's summed token entropy, averaged over sequences (H_tok,
            Unreasonable Effectiveness of EM, Table 1).
        lm_head_chunk_size (`int`, *optional*):
            Rows per chunk of the fused LM-head entropy (:func:`em_hf.ops.linear_entropy_loss`), which never
            holds the full [rows, vocab] logits. `None`: about 3 * 2**24 / vocab rows.

        > Rollouts from vLLM (trl's ``GRPOConfig`` names and meanings; trl's ``VLLMGeneration`` runs them)

        use_vllm (`bool`, *optional*, defaults to `False`):
            Generate the rollouts with vLLM instead of ``model.generate``. The prompts are rendered by
            :func:`em_hf.generation.prompts.render_prompt` and sent as token ids; the batch handed to the loss
            has the same layout as with ``generate``. ``temperature``, ``top_p``, ``top_k``,
            ``repetition_penalty`` and ``max_completion_length`` become ``SamplingParams`` fields, and
            ``generation_kwargs`` then holds extra ``SamplingParams`` fields (e.g. ``{"min_p": 0.05}``).
        vllm_mode (`str`, *optional*, defaults to `"colocate"`):
            ``"colocate"``: a ``vllm.LLM`` in the training process; after every optimizer step the new weights
            are loaded into it before the next rollouts (on-policy). ``"server"``: requests to a
            ``trl vllm-serve`` / ``vllm serve`` server through trl's ``VLLMClient``; its weights are updated
            after every optimizer step over vLLM's NCCL weight-transfer engine where the trainer has CUDA,
            else through a folder (``vllm_weight_sync_dir``) the server reloads from (start it with
            ``VLLM_SERVER_DEV_MODE=1`` and ``--worker-extension-cls
            em_hf.generation.vllm.weight_sync.FolderWeightSync``).
        vllm_model_impl (`str`, *optional*, defaults to `"vllm"`):
            ``"vllm"`` or ``"transformers"`` (vLLM's model implementation; colocate).
        vllm_gpu_memory_utilization (`float`, *optional*, defaults to `0.3`):
            Share of the accelerator's memory vLLM may take (colocate). vLLM's CPU backend sizes its KV cache
            from ``VLLM_CPU_KVCACHE_SPACE`` (GiB) instead.
        vllm_max_model_length (`int`, *optional*):
            The engine's context length (colocate); at least the longest prompt plus
            ``max_completion_length``. `None`: from the model config.
        vllm_tensor_parallel_size (`int`, *optional*, defaults to `1`):
            Tensor-parallel size of each colocated engine.
        vllm_enable_sleep_mode (`bool`, *optional*, defaults to `False`):
            Offload the engine's weights and KV cache during the optimizer step (colocate, GPU).
        vllm_engine_kwargs (`dict[str, Any]`, *optional*):
            Extra ``vllm.LLM`` arguments (colocate), e.g. ``{"dtype": "float32", "enforce_eager": True}``
            on a CPU.
        vllm_server_base_url (`str`, *optional*):
            The server's URL (e.g. ``"http://127.0.0.1:8000"``); overrides host and port.
        vllm_server_host (`str`, *optional*, defaults to `"0.0.0.0"`):
            The server's host.
        vllm_server_port (`int`, *optional*, defaults to `8000`):
            The server's port.
        vllm_server_timeout (`float`, *optional*, defaults to `240.0`):
            Seconds to wait for the server to answer before a ``ConnectionError``.
        vllm_group_port (`int`, *optional*, defaults to `51216`):
            Port of the weight-update group with the server.
        vllm_weight_sync_dir (`str`, *optional*):
            Server mode without CUDA: the folder the trainer writes its weights to (one
            ``model.safetensors``, replaced at every sync) and the server reloads from; both must see it
            (same host or a shared file system). `None`: a new temporary folder.

        > Collapse guard (:class:`~em_hf.trainers.collapse_guard.CollapseGuardCallback`; the rule is in
        :mod:`em_hf.trainers.collapse_guard`)

        collapse_guard (`bool`, *optional*, defaults to `False`):
            Add a ``CollapseGuardCallback`` built from the fields below (``True`` in :meth:`one_shot`; pass
            ``collapse_guard=False`` there to turn it off). The trainer logs the signals it reads in any case.
        collapse_guard_action (`str`, *optional*, defaults to `"stop"`):
            ``"warn"``, ``"stop"`` or ``"restore"`` (stop and copy back the best weights it kept).
        collapse_guard_kwargs (`dict` or `str`, *optional*):
            The guard's thresholds, as keyword arguments of
            :class:`~em_hf.trainers.collapse_guard.CollapseGuardConfig` (a dict, or its JSON text on the
            command line), e.g. ``{"entropy_drop": 0.5, "min_corroborating": 1}``: ``window`` (1),
            ``entropy_drop`` (0.6), ``distinct_ratio`` (0.5), ``length_drop`` (0.25), ``repetition_rise``
            (0.2), ``accuracy_drop`` (0.03), ``min_corroborating`` (0); what each means is in that class.
            `None`: its defaults.
        repetition_ngram (`int`, *optional*, defaults to `4`):
            n of the logged ``completions/repeated_ngram_share`` (token n-grams).

    Examples:
        >>> from em_hf import EntropyMinConfig
        >>> args = EntropyMinConfig.one_shot(output_dir="one-shot-em", report_to=[])
        >>> args.num_generations, args.temperature, args.entropy_temperature, args.learning_rate
        (64, 0.5, 0.5, 2e-05)
        >>> args = EntropyMinConfig(output_dir="em-ft", max_completion_length=64, report_to=[])
        >>> args.learning_rate, args.loss_normalization
        (1e-06, 'token_mean')
    """

    learning_rate: float = field(default=1e-6, metadata={"help": "AdamW learning rate (EM-FT: 1e-6)."})
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
        default=1, metadata={"help": "Completions sampled per prompt (EM-FT: N=1; one-shot EM: 64)."}
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
            "help": "'token_mean': mean over all completion tokens of the micro-batch (one-shot EM's code); "
            "'sequence_sum': each sequence's token-entropy sum, averaged over sequences (EM-FT's H_tok)."
        },
    )
    lm_head_chunk_size: int | None = field(
        default=None,
        metadata={
            "help": "Rows per chunk of the fused LM-head entropy (em_hf.ops.linear_entropy_loss); None: "
            "about 3 * 2**24 / vocab rows."
        },
    )

    # Collapse guard (em_hf.trainers.collapse_guard).
    collapse_guard: bool = field(
        default=False, metadata={"help": "Add a CollapseGuardCallback (True in the one_shot() preset)."}
    )
    collapse_guard_action: str = field(
        default="stop",
        metadata={"help": "On collapse: 'warn', 'stop', or 'restore' (stop, best weights back)."},
    )
    collapse_guard_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={
            "help": "CollapseGuardConfig keyword arguments (JSON on the command line), e.g. "
            '{"entropy_drop": 0.5}; None: its defaults.'
        },
    )
    repetition_ngram: int = field(default=4, metadata={"help": "n of the logged repeated n-gram share."})

    # Rollouts from vLLM (trl's GRPOConfig names).
    use_vllm: bool = field(default=False, metadata={"help": "Generate the rollouts with vLLM."})
    vllm_mode: str = field(
        default="colocate",
        metadata={
            "help": "'colocate' (an engine in this process) or 'server' (trl vllm-serve / vllm serve)."
        },
    )
    vllm_model_impl: str = field(default="vllm", metadata={"help": "vLLM model implementation (colocate)."})
    vllm_gpu_memory_utilization: float = field(
        default=0.3, metadata={"help": "Share of accelerator memory vLLM may take (colocate)."}
    )
    vllm_max_model_length: int | None = field(
        default=None,
        metadata={"help": "The engine's context length (colocate); None: the model's."},
    )
    vllm_tensor_parallel_size: int = field(default=1, metadata={"help": "Tensor-parallel size (colocate)."})
    vllm_enable_sleep_mode: bool = field(
        default=False, metadata={"help": "Offload the engine during the optimizer step (colocate)."}
    )
    vllm_engine_kwargs: dict[str, Any] | None = field(
        default=None,
        metadata={"help": "Extra vllm.LLM arguments (colocate), e.g. {'enforce_eager': True}."},
    )
    vllm_server_base_url: str | None = field(
        default=None, metadata={"help": "The vLLM server's URL; overrides host and port."}
    )
    vllm_server_host: str = field(default="0.0.0.0", metadata={"help": "The vLLM server's host."})
    vllm_server_port: int = field(default=8000, metadata={"help": "The vLLM server's port."})
    vllm_server_timeout: float = field(
        default=240.0, metadata={"help": "Seconds to wait for the vLLM server before a ConnectionError."}
    )
    vllm_group_port: int = field(default=51216, metadata={"help": "Weight-update group port (server)."})
    vllm_weight_sync_dir: str | None = field(
        default=None,
        metadata={
            "help": "Server mode without CUDA: folder of the weights the server reloads (None: a temp one)."
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
        if not self.use_vllm:  # with vLLM they are SamplingParams fields, which vLLM checks
            check_generation_kwargs("generation_kwargs", self.generation_kwargs)
        if self.use_vllm:
            from em_hf.trainers.vllm_rollouts import check_vllm_available, check_vllm_mode

            check_vllm_mode(self.vllm_mode)
            check_int("vllm_tensor_parallel_size", self.vllm_tensor_parallel_size)
            if self.vllm_max_model_length is not None:
                check_int("vllm_max_model_length", self.vllm_max_model_length)
            check_number("vllm_server_timeout", self.vllm_server_timeout, low=0.0)
            check_vllm_available()
        check_int("repetition_ngram", self.repetition_ngram)
        check_choice("collapse_guard_action", self.collapse_guard_action, COLLAPSE_ACTIONS)
        if isinstance(self.collapse_guard_kwargs, str):  # from the command line, as TrainingArguments' dicts
            self.collapse_guard_kwargs = parse_json_object(
                "collapse_guard_kwargs", self.collapse_guard_kwargs
            )
        try:
            self.collapse_guard_config()
        except (TypeError, ValueError) as error:
            raise ValueError(f"`collapse_guard_kwargs`: {error}") from None
        if self.loss_normalization not in LOSS_NORMALIZATIONS:
            raise ValueError(
                f"`loss_normalization` must be one of {LOSS_NORMALIZATIONS}, got {self.loss_normalization!r}."
            )

    def collapse_guard_config(self) -> CollapseGuardConfig:
        """``collapse_guard_kwargs`` as a :class:`~em_hf.trainers.collapse_guard.CollapseGuardConfig`."""
        return CollapseGuardConfig.from_kwargs(self.collapse_guard_kwargs or {})

    @classmethod
    def one_shot(cls, **overrides: Any) -> EntropyMinConfig:
        """One-shot EM (One-shot EM, sec. 3.1 and Table 1): 64 samples of ONE prompt per step, sampling
        temperature 0.5 and the same 0.5 inside the entropy, top_p 0.95, AdamW with a constant learning rate
        2e-5, gradient clipping 1.0, max response length 2048, 10 steps. Not from the paper: the collapse
        guard is on (``collapse_guard=True``, action ``"stop"``; ``collapse_guard=False`` turns it off).

        ``per_device_train_batch_size * gradient_accumulation_steps * processes`` should stay 64 when you
        shrink the micro-batch, e.g.
        ``one_shot(per_device_train_batch_size=8, gradient_accumulation_steps=8)``.

        These are GPU-sized: 64 completions of up to 2048 tokens per step. On a CPU, shrink
        ``num_generations`` (with the batch), ``max_completion_length`` and ``max_steps``; the README's
        one-shot section shows such a run with the time it took.

        Checkpoints hold the model only (``save_only_model=True``): a 10-step run has no use for a
        resumable optimizer state, and AdamW's two float32 moments cost 8 bytes per parameter on disk
        (1.1 GB for a 135M model, 56 GB for 7B) on top of the weights. Pass ``save_only_model=False``
        to keep optimizer, scheduler and RNG states for ``resume_from_checkpoint``.

        Parameters:
            **overrides:
                Any ``EntropyMinConfig`` field (e.g. ``output_dir``), applied on top of the preset.
        """
        values: dict[str, Any] = {
            "num_generations": 64,  # One-shot EM, Table 1: batch 64, all samples of the one prompt
            "per_device_train_batch_size": 64,
            "gradient_accumulation_steps": 1,
            "temperature": 0.5,  # One-shot EM, Table 1
            "entropy_temperature": 0.5,  # One-shot EM's code: softmax(logits / temperature), the same 0.5
            "top_p": 0.95,  # One-shot EM's released code
            "learning_rate": 2e-5,  # One-shot EM, sec. 3.1: constant 2e-5
            "lr_scheduler_type": "constant",
            "warmup_steps": 0,
            "max_grad_norm": 1.0,  # One-shot EM's code: gradient clipping 1.0
            "max_completion_length": 2048,  # One-shot EM, Table 1: max response length
            "max_steps": 10,  # One-shot EM, sec. 3.1: 10 steps (accuracy peaks near step 10)
            "save_only_model": True,  # weights only: no 8-bytes-per-parameter optimizer state on disk
            "loss_normalization": "token_mean",
            "beta": 0.0,
            "collapse_guard": True,  # em_hf's, not the paper's: em_hf.trainers.collapse_guard
        }
        values.update(overrides)
        return cls(**values)

    @classmethod
    def em_ft(cls, **overrides: Any) -> EntropyMinConfig:
        """EM-FT (Unreasonable Effectiveness of EM, sec. 3.1 and sec. 3.3 "Training data, models, and
        methods"): N=1 completion per prompt, batch 512, learning rate 1e-6, sequences of 4096 tokens
        (here 1024 prompt + 3072 completion), the total token-level entropy per sequence (H_tok) averaged
        over sequences, no KL. The paper stops early on a validation set (about 40 steps): use
        :class:`~em_hf.trainers.BenchmarkEarlyStoppingCallback`.

        Parameters:
            **overrides:
                Any ``EntropyMinConfig`` field (e.g. ``output_dir``), applied on top of the preset.

        The batch of 512 is ``per_device_train_batch_size (8) * gradient_accumulation_steps (64)`` on one
        process; divide the accumulation by the number of processes.
        """
        values: dict[str, Any] = {
            "num_generations": 1,  # Unreasonable Effectiveness of EM, Table 2: EM-FT N=1
            "per_device_train_batch_size": 8,
            "gradient_accumulation_steps": 64,  # 8 * 64 = 512 (Unreasonable Effectiveness of EM, sec. 3.3)
            "learning_rate": 1e-6,  # Unreasonable Effectiveness of EM, sec. 3.3
            "temperature": 1.0,
            "entropy_temperature": 1.0,
            "max_prompt_length": 1024,
            "max_completion_length": 3072,  # 4096 tokens in all (sec. 3.3)
            "loss_normalization": "sequence_sum",  # H_tok, (1/N) sum_i sum_t H_t (Table 1)
            "beta": 0.0,
        }
        values.update(overrides)
        return cls(**values)
