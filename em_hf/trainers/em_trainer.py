r"""``EntropyMinTrainer``: EM-FT (Unreasonable Effectiveness of EM, sec. 3.1) and one-shot EM (One-shot EM)
as a ``transformers.Trainer``.

Every micro-batch, the trainer samples one completion per (repeated) prompt from the CURRENT weights (eval
mode, KV cache, no grad), builds a batch in trl's layout and minimizes the mean token entropy over the
generated positions (see :mod:`em_hf.trainers.em_loss` for the formula). Everything else (optimizer,
schedulers, gradient accumulation and checkpointing, mixed precision, Accelerate/DeepSpeed launch, saving,
resuming, ``report_to``) is the parent ``Trainer``'s.

trl primitives reused: ``RepeatSampler`` (each prompt repeated ``num_generations`` times in a row),
``unwrap_model_for_generation`` (unwraps DDP/DeepSpeed for ``generate`` and pauses gradient checkpointing),
``selective_log_softmax`` (reference log-probs on the logits path). For ``beta > 0`` without PEFT the
reference model is a frozen ``copy.deepcopy`` of the model (with PEFT, the model with its adapters
disabled).
"""

from __future__ import annotations

import copy
import functools
import math
import time
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import GenerationConfig, PreTrainedModel, Trainer
from transformers.utils import is_peft_available

from em_hf.generation.prompts import Prompt, left_pad, render_prompt, render_prompts
from em_hf.generation.recording import completion_mask as completion_mask_from_ids
from em_hf.models import prepare_tokenizer
from em_hf.trainers.checkpoints import CompleteCheckpointsMixin
from em_hf.trainers.collapse_guard import CollapseGuardCallback, completion_collapse_metrics
from em_hf.trainers.em_config import EntropyMinConfig
from em_hf.trainers.em_loss import (
    check_completion_batch,
    completion_positions_forward,
    entropy_min_loss,
    fused_head_unsupported_reason,
    reference_token_logps,
)
from em_hf.utils.quiet import training_warnings_filtered
from em_hf.utils.validation import check_generation_kwargs, check_pad_token_id, check_prompt_dataset

__all__ = ["EntropyMinTrainer"]


def _keep_examples(features: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The data collator: examples stay raw; prompts are tokenized when their completions are generated."""
    return features


@functools.cache
def _epoch_seeded_repeat_sampler_class() -> type:
    """trl's ``RepeatSampler`` whose shuffled order is a function of ``(seed, epoch)``.

    trl's sampler draws every epoch's permutation from one generator seeded once, which a run resumed from a
    checkpoint does not advance through the finished epochs: it would replay epoch 0's prompt order.
    Accelerate calls ``set_epoch`` before each epoch (resumed runs included), so reseeding there makes a
    resumed run see the prompts in the same order as an uninterrupted one.
    """
    from trl.trainer.utils import RepeatSampler

    class EpochSeededRepeatSampler(RepeatSampler):
        def set_epoch(self, epoch: int) -> None:
            if self.shuffle:
                self.generator.manual_seed((self.seed or 0) + epoch)

    return EpochSeededRepeatSampler


def _is_peft_model(model: nn.Module) -> bool:
    if not is_peft_available():
        return False
    from peft import PeftModel

    return isinstance(model, PeftModel)


def _as_prompt_dataset(dataset: Any, name: str):
    """A ``datasets.Dataset`` with a ``prompt`` column, from a Dataset, a list of prompts or of dicts."""
    from datasets import Dataset

    if dataset is None:
        return None
    if isinstance(dataset, list | tuple):
        if len(dataset) == 0:
            raise ValueError(f"`{name}` is empty: give at least one prompt.")
        if all(isinstance(item, Mapping) for item in dataset):
            dataset = Dataset.from_list([dict(item) for item in dataset])
        else:
            dataset = Dataset.from_dict({"prompt": list(dataset)})
    if not isinstance(dataset, Dataset):
        raise TypeError(
            f"`{name}` must be a datasets.Dataset or a list of prompts, got {type(dataset).__name__}."
        )
    check_prompt_dataset(dataset, name)
    return dataset


def _repeat_group_size(rows: Sequence[Sequence[int]], num_generations: int) -> int:
    """The largest k dividing both ``len(rows)`` and ``num_generations`` such that the rows come in runs of k
    identical prompts (trl's ``RepeatSampler`` order), else 1; a vLLM server samples ``n=k`` per prompt."""
    size = math.gcd(len(rows), num_generations)
    while size > 1:
        if len(rows) % size == 0 and all(rows[i] == rows[i - i % size] for i in range(len(rows))):
            return size
        size -= 1
    return 1


class EntropyMinTrainer(CompleteCheckpointsMixin, Trainer):
    """Unsupervised fine-tuning by token-entropy minimization on the model's own samples.

    EM-FT (Unreasonable Effectiveness of EM, sec. 3.1) and one-shot EM (One-shot EM, sec. 2) differ only in
    their :class:`~em_hf.trainers.EntropyMinConfig` (presets ``em_ft()`` and ``one_shot()``).

    Parameters:
        model (`str`, `PreTrainedModel` or `nn.Module`):
            The causal LM to train, or a name/path loaded with :func:`em_hf.load_model` and
            ``args.model_init_kwargs`` (``"default"`` is the embedded SmolLM2-135M-Instruct).
        args (`EntropyMinConfig`, *optional*):
            The training, generation and loss settings. Defaults to
            ``EntropyMinConfig(output_dir="em-trainer-output")``.
        train_dataset (`datasets.Dataset` or `list`, *optional*):
            Prompts in a ``prompt`` column, strings or chat messages (trl's standard and conversational
            formats, rendered by :func:`em_hf.generation.prompts.render_prompt`); a list of prompts or of
            dicts is turned into a ``Dataset``. No labels: the model is trained on its own samples.
        eval_dataset (`datasets.Dataset`, `list` or `dict`, *optional*):
            Prompts whose EM loss ``evaluate()`` reports (``eval_loss``, ``eval_entropy``); a dict of them
            is evaluated name by name, as in ``transformers.Trainer``.
        processing_class (`PreTrainedTokenizerBase`, *optional*):
            The tokenizer; it needs a pad token. Required when ``model`` is a model object, loaded with
            the model when it is a string.
        callbacks (`list[TrainerCallback]`, *optional*):
            As for ``transformers.Trainer``, e.g. :class:`~em_hf.trainers.BenchmarkEarlyStoppingCallback`.
            With ``args.collapse_guard`` (the ``one_shot()`` default) a
            :class:`~em_hf.trainers.CollapseGuardCallback` is appended unless one is given (then
            ``trainer.collapse_guard``).
        optimizers (`tuple`, *optional*, defaults to `(None, None)`):
            ``(optimizer, lr_scheduler)``, as for ``transformers.Trainer``.
        optimizer_cls_and_kwargs (`tuple`, *optional*):
            ``(optimizer class, keyword arguments)``, as for ``transformers.Trainer``.
        peft_config (`peft.PeftConfig`, *optional*):
            When given, the model is wrapped with ``get_peft_model`` (8-bit/4-bit models are first prepared
            with ``prepare_model_for_kbit_training``); the KL reference is then the adapter-free model.

    A batch built by hand can be scored with ``trainer.compute_loss(model, batch)``: ``batch`` holds
    ``prompt_ids``/``prompt_mask`` [B, P] (left-padded), ``completion_ids``/``completion_mask`` [B, C]
    (right-padded, mask 1 through the first EOS and 0 after it), as in trl's GRPO/RLOO.

    Examples:
        One optimizer step on a tiny random model (the logs are printed by the ``Trainer``):

        >>> import tempfile
        >>> from em_hf import EntropyMinConfig, EntropyMinTrainer
        >>> from em_hf.utils.testing import tiny_llama_and_tokenizer
        >>> model, tokenizer = tiny_llama_and_tokenizer()
        >>> args = EntropyMinConfig(
        ...     output_dir=tempfile.mkdtemp(), max_steps=1, per_device_train_batch_size=2,
        ...     num_generations=2, max_completion_length=2, use_cpu=True, report_to=[],
        ...     disable_tqdm=True, save_strategy="no",
        ... )
        >>> trainer = EntropyMinTrainer(
        ...     model=model, args=args, train_dataset=["Compute 1 + 2 =", "Compute 3 + 4 ="],
        ...     processing_class=tokenizer,
        ... )
        >>> result = trainer.train()
        {'loss': ..., 'entropy': ..., 'epoch': '0.5'}
        {'train_runtime': ..., 'train_loss': ..., 'epoch': '0.5'}
        >>> result.global_step, round(result.training_loss, 2)  # mean entropy, about log(18) here
        (1, 2.89)
    """

    _tag_names: ClassVar[list[str]] = ["em_hf", "entropy-minimization"]

    def __init__(
        self,
        model: str | PreTrainedModel | nn.Module,
        args: EntropyMinConfig | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        callbacks: list | None = None,
        optimizers: tuple = (None, None),
        optimizer_cls_and_kwargs: tuple | None = None,
        peft_config: Any = None,
    ) -> None:
        if args is None:
            args = EntropyMinConfig(output_dir="em-trainer-output")
        elif not isinstance(args, EntropyMinConfig):
            raise TypeError(
                f"`args` must be an EntropyMinConfig (a TrainingArguments subclass with the EM fields), got "
                f"{type(args).__name__}; build it with `EntropyMinConfig(...)` or "
                "`EntropyMinConfig.one_shot(...)`."
            )
        if isinstance(model, str):
            model, loaded_tokenizer = self._load_model(model, args)
            processing_class = processing_class if processing_class is not None else loaded_tokenizer
        if processing_class is None:
            raise ValueError(
                "`processing_class` (the tokenizer) is required when `model` is a model object; pass "
                "`processing_class=AutoTokenizer.from_pretrained(...)`."
            )
        self._check_tokenizer(processing_class)
        # Left padding recorded in the tokenizer, so that `save_model` writes one that reloads with it.
        prepare_tokenizer(processing_class)
        check_pad_token_id(processing_class, model)
        if peft_config is not None:
            model = self._wrap_peft(model, peft_config, args)
        train_dataset = _as_prompt_dataset(train_dataset, "train_dataset")
        if isinstance(eval_dataset, dict):
            eval_dataset = {
                key: _as_prompt_dataset(value, f"eval_dataset[{key!r}]")
                for key, value in eval_dataset.items()
            }
        else:
            eval_dataset = _as_prompt_dataset(eval_dataset, "eval_dataset")
        if train_dataset is not None:
            render_prompt(processing_class, train_dataset[0]["prompt"])  # fails early on a bad prompt
        callbacks = list(callbacks or [])
        self.collapse_guard: CollapseGuardCallback | None = next(
            (c for c in callbacks if isinstance(c, CollapseGuardCallback)), None
        )
        if args.collapse_guard and self.collapse_guard is None:
            self.collapse_guard = CollapseGuardCallback(
                args.collapse_guard_config(), args.collapse_guard_action
            )
            callbacks.append(self.collapse_guard)  # last: it reads what the other callbacks logged

        # Trainer's leading parameters in its own order: model, args, data_collator, train_dataset,
        # eval_dataset, processing_class.
        super().__init__(
            model,
            args,
            _keep_examples,
            train_dataset,
            eval_dataset,
            processing_class,
            callbacks=callbacks or None,
            optimizers=optimizers,
            optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
        )
        self.loss_is_scaled_for_ga = False  # our loss is a per-micro-batch mean: the Trainer divides by GA
        self._metrics: dict[str, dict[str, list[float]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }
        self._warned_truncation = False
        self._step_time = 0.0
        self._micro_steps = 0
        self.generation_config = self._build_generation_config(args, processing_class)
        self.ref_model = self._build_reference_model() if args.beta > 0 else None
        self.vllm_generation = self._build_vllm_rollouts() if args.use_vllm else None
        self._last_loaded_step = -1  # the global step whose weights the vLLM engine holds

    # ----------------------------------------------------------------------------------------- set-up

    def train(self, *args: Any, **kwargs: Any) -> Any:
        """``transformers.Trainer.train``, with the known third-party warnings of a training run on a CPU
        (torch's unpinned-memory note) filtered by message and module
        (:func:`em_hf.utils.quiet.training_warnings_filtered`); every other warning shows."""
        with training_warnings_filtered():
            return super().train(*args, **kwargs)

    @staticmethod
    def _load_model(name: str, args: EntropyMinConfig):
        from em_hf.models import load_model

        kwargs = dict(args.model_init_kwargs or {})
        return load_model(name, **kwargs)

    @staticmethod
    def _check_tokenizer(tokenizer: Any) -> None:
        if getattr(tokenizer, "pad_token_id", None) is None:
            raise ValueError(
                "The tokenizer has no pad token, which batched generation and the batch layout need; set "
                "one, e.g. `tokenizer.pad_token = tokenizer.eos_token`."
            )
        if getattr(tokenizer, "eos_token_id", None) is None:
            warnings.warn(
                "The tokenizer has no EOS token: every completion runs to `max_completion_length`.",
                stacklevel=3,
            )

    @staticmethod
    def _wrap_peft(model: nn.Module, peft_config: Any, args: EntropyMinConfig) -> nn.Module:
        if not is_peft_available():
            raise ImportError("`peft_config` needs the `peft` package: `pip install peft`.")
        from peft import PeftConfig, get_peft_model, prepare_model_for_kbit_training

        if not isinstance(peft_config, PeftConfig):
            kind = type(peft_config).__name__
            raise TypeError(f"`peft_config` must be a peft.PeftConfig (e.g. LoraConfig), got {kind}.")
        if _is_peft_model(model):
            raise ValueError("`model` is already a PeftModel; pass a PeftModel or `peft_config`, not both.")
        if getattr(model, "is_loaded_in_8bit", False) or getattr(model, "is_loaded_in_4bit", False):
            model = prepare_model_for_kbit_training(
                model,
                use_gradient_checkpointing=args.gradient_checkpointing,
                gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs,
            )
        return get_peft_model(model, peft_config)

    @staticmethod
    def _build_generation_config(args: EntropyMinConfig, tokenizer: Any) -> GenerationConfig:
        values: dict[str, Any] = {
            "max_new_tokens": args.max_completion_length,
            "do_sample": True,
            "temperature": args.temperature,
            "top_p": args.top_p,
            "top_k": args.top_k,
            "repetition_penalty": args.repetition_penalty,
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        }
        if not args.use_vllm:  # with vLLM they are SamplingParams fields (trl's convention)
            check_generation_kwargs("generation_kwargs", args.generation_kwargs)  # mutated after __init__?
            values.update(args.generation_kwargs or {})
        return GenerationConfig(**values)

    def _build_vllm_rollouts(self):
        """trl's ``VLLMGeneration`` (as ``em_hf.trainers.vllm_rollouts.VLLMRollouts``) from the config."""
        from em_hf.trainers.vllm_rollouts import make_vllm_rollouts

        args = self.args
        generation_kwargs = {
            "stop_token_ids": self._eos_token_ids() or []
        }  # the trainer's EOS, as `generate`
        generation_kwargs.update(args.generation_kwargs or {})
        return make_vllm_rollouts(
            model=self.model,
            accelerator=self.accelerator,
            processing_class=self.processing_class,
            mode=args.vllm_mode,
            server_base_url=args.vllm_server_base_url,
            server_host=args.vllm_server_host,
            server_port=args.vllm_server_port,
            server_timeout=args.vllm_server_timeout,
            group_port=args.vllm_group_port,
            weight_sync_dir=args.vllm_weight_sync_dir,
            tensor_parallel_size=args.vllm_tensor_parallel_size,
            gpu_memory_utilization=args.vllm_gpu_memory_utilization,
            max_model_length=args.vllm_max_model_length,
            max_num_seqs=args.per_device_train_batch_size * args.vllm_tensor_parallel_size,
            enable_sleep_mode=args.vllm_enable_sleep_mode,
            model_impl=args.vllm_model_impl,
            repetition_penalty=args.repetition_penalty,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            max_completion_length=args.max_completion_length,
            logprobs=None,  # the loss rescores the completions with the training model
            generation_kwargs=generation_kwargs,
            engine_kwargs=args.vllm_engine_kwargs,
        )

    def _build_reference_model(self) -> nn.Module | None:
        """None for a PEFT model (its adapters are disabled instead), else a frozen copy of the model."""
        if _is_peft_model(self.accelerator.unwrap_model(self.model)):
            return None
        reference = copy.deepcopy(self.accelerator.unwrap_model(self.model))
        reference.requires_grad_(False)
        reference.eval()
        return self.accelerator.prepare_model(reference, evaluation_mode=True)

    def _set_signature_columns_if_needed(self) -> None:
        if self._signature_columns is None:
            self._signature_columns = ["prompt"]

    def _get_train_sampler(self, dataset: Any = None):
        dataset = self.train_dataset if dataset is None else dataset
        return _epoch_seeded_repeat_sampler_class()(
            data_source=dataset,
            mini_repeat_count=self.args.num_generations,
            shuffle=self.args.shuffle_dataset,
            seed=self.args.seed,
        )

    def _get_eval_sampler(self, eval_dataset: Any):
        from trl.trainer.utils import RepeatSampler

        return RepeatSampler(
            data_source=eval_dataset, mini_repeat_count=self.args.num_generations, shuffle=False
        )

    # ----------------------------------------------------------------------------------------- rollouts
    def _prompt_token_rows(self, prompts: Sequence[Prompt]) -> list[list[int]]:
        """The rendered prompts' token ids; prompts over ``max_prompt_length`` lose their start."""
        tokenizer = self.processing_class
        ids = render_prompts(tokenizer, prompts)
        limit = self.args.max_prompt_length
        if limit is not None and any(len(row) > limit for row in ids):
            if not self._warned_truncation:
                longest = max(len(row) for row in ids)
                warnings.warn(
                    f"A prompt has {longest} tokens, more than max_prompt_length={limit}; prompts are "
                    "truncated from the left (their start is dropped). Raise `max_prompt_length` to keep "
                    "them whole.",
                    stacklevel=2,
                )
                self._warned_truncation = True
            ids = [row[-limit:] for row in ids]
        return [list(row) for row in ids]

    def _eos_token_ids(self) -> list[int] | None:
        eos = self.generation_config.eos_token_id
        if eos is None:
            return None
        return [eos] if isinstance(eos, int) else list(eos)

    @torch.no_grad()
    def generate_batch(self, prompts: Sequence[Prompt]) -> dict[str, torch.Tensor]:
        """Sample one completion per prompt with the current weights; the batch in trl's layout."""
        rows = self._prompt_token_rows(prompts)
        prompt_ids, prompt_mask = left_pad(rows, self.processing_class.pad_token_id)
        prompt_ids, prompt_mask = (
            prompt_ids.to(self.accelerator.device),
            prompt_mask.to(self.accelerator.device),
        )
        mode = "train" if self.model.training else "eval"
        if self.vllm_generation is not None:
            completion_ids = self._vllm_completion_ids(rows)
        else:
            completion_ids = self._hf_completion_ids(prompt_ids, prompt_mask)
        return self._completion_batch(prompt_ids, prompt_mask, completion_ids, mode)

    def _hf_completion_ids(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        """``generate``'s new tokens [N, longest] (rows finished early are padded after their EOS)."""
        from trl.models.utils import unwrap_model_for_generation

        with unwrap_model_for_generation(
            self.model_wrapped,
            self.accelerator,
            gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
        ) as unwrapped:
            was_training = unwrapped.training
            unwrapped.eval()
            try:
                output = unwrapped.generate(
                    input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=self.generation_config
                )
            finally:
                unwrapped.train(was_training)
        return output[:, prompt_ids.shape[1] :]

    def _vllm_completion_ids(self, rows: list[list[int]]) -> torch.Tensor:
        """vLLM's completions of the prompt rows [N, longest], right-padded; the engine first gets the weights
        of the current optimizer step if it does not have them (colocate: loaded in place; server: sent)."""
        if self.state.global_step != self._last_loaded_step:
            self.vllm_generation.sync_weights()
            self._last_loaded_step = self.state.global_step
        _, completions, _, _ = self.vllm_generation.generate(
            prompts=rows, images=None, num_generations=_repeat_group_size(rows, self.args.num_generations)
        )
        if len(completions) != len(rows):
            raise RuntimeError(f"vLLM returned {len(completions)} completions for {len(rows)} prompts.")
        width = max(1, max(len(ids) for ids in completions))
        pad = self.processing_class.pad_token_id
        padded = [list(ids) + [pad] * (width - len(ids)) for ids in completions]
        return torch.tensor(padded, dtype=torch.long, device=self.accelerator.device)

    def _completion_batch(
        self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor, mode: str
    ) -> dict[str, torch.Tensor]:
        """trl's layout from the new tokens: mask through the first EOS, pad after it; logs the lengths."""
        eos = self._eos_token_ids()
        completion_mask = completion_mask_from_ids(completion_ids, eos).to(completion_ids.device)
        completion_ids = completion_ids.masked_fill(completion_mask == 0, self.processing_class.pad_token_id)
        if eos is None:
            truncated = torch.ones(completion_ids.shape[0], dtype=torch.bool, device=completion_ids.device)
        else:
            eos_ids = torch.tensor(eos, device=completion_ids.device)
            truncated = ~torch.isin(completion_ids, eos_ids).any(dim=1)
        lengths = self.accelerator.gather(completion_mask.sum(dim=1).float())
        self._metrics[mode]["completions/mean_length"].append(lengths.mean().item())
        self._metrics[mode]["completions/clipped_ratio"].append(
            self.accelerator.gather(truncated.float()).mean().item()
        )
        signals = completion_collapse_metrics(  # what the collapse guard reads
            self.processing_class,
            prompt_ids,
            prompt_mask,
            completion_ids,
            completion_mask,
            self.args.repetition_ngram,
        )
        for key, value in signals.items():
            local = torch.tensor([value], device=completion_ids.device)
            self._metrics[mode][key].append(self.accelerator.gather(local).mean().item())
        return {
            "prompt_ids": prompt_ids,
            "prompt_mask": prompt_mask,
            "completion_ids": completion_ids,
            "completion_mask": completion_mask,
        }

    def _prepare_inputs(self, inputs: Any) -> dict[str, torch.Tensor]:
        if isinstance(inputs, Mapping):  # already in trl's layout (built by hand or by generate_batch)
            return super()._prepare_inputs(dict(inputs))
        prompts = [example["prompt"] for example in inputs]
        return self.generate_batch(prompts)

    # ----------------------------------------------------------------------------------------- loss
    def _head_for(self, model: nn.Module) -> nn.Linear | None:
        unwrapped = self.accelerator.unwrap_model(model)
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return None
        if fused_head_unsupported_reason(unwrapped) is not None:
            return None
        return unwrapped.get_output_embeddings()

    @torch.no_grad()
    def _reference_logps(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if self.ref_model is not None:
            model, context = self.ref_model, nullcontext()
        else:
            model = self.model_wrapped
            context = self.accelerator.unwrap_model(self.model).disable_adapter()
        with context:
            head = self._head_for(model)
            states = completion_positions_forward(model, batch, head)
            return reference_token_logps(
                states,
                batch["completion_ids"],
                batch["completion_mask"],
                head,
                self.args.temperature,
                self.args.lm_head_chunk_size,
            )

    def compute_loss(
        self,
        model: nn.Module,
        inputs: Mapping[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ):
        """The EM loss (:mod:`em_hf.trainers.em_loss`) of a batch in trl's layout (see the class doc)."""
        if return_outputs:
            raise ValueError("EntropyMinTrainer.compute_loss does not return model outputs.")
        check_completion_batch(inputs)
        args = self.args
        ref_logps = self._reference_logps(inputs) if args.beta > 0 else None
        head = self._head_for(model)
        states = completion_positions_forward(model, inputs, head)
        output = entropy_min_loss(
            states,
            inputs["completion_ids"],
            inputs["completion_mask"],
            head=head,
            entropy_temperature=args.entropy_temperature,
            normalization=args.loss_normalization,
            beta=args.beta,
            ref_logps=ref_logps,
            sampling_temperature=args.temperature,
            chunk_size=args.lm_head_chunk_size,
        )
        mode = "train" if model.training else "eval"
        tokens = output.num_tokens.to(self.accelerator.device).float()
        entropy_sum = self.accelerator.gather(output.mean_entropy.to(tokens.device) * tokens).sum()
        self._metrics[mode]["entropy"].append((entropy_sum / self.accelerator.gather(tokens).sum()).item())
        if output.mean_kl is not None:
            self._metrics[mode]["kl"].append(
                self.accelerator.gather(output.mean_kl.to(tokens.device)).mean().item()
            )
        return output.loss

    def training_step(self, model: nn.Module, inputs: Any, num_items_in_batch: Any = None) -> torch.Tensor:
        start = time.perf_counter()
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._step_time += time.perf_counter() - start
        self._micro_steps += 1
        if self._micro_steps % self.current_gradient_accumulation_steps == 0:
            self._metrics["train"]["step_time"].append(self._step_time)
            self._step_time = 0.0
        return loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        metrics = {key: sum(values) / len(values) for key, values in self._metrics[mode].items() if values}
        if mode == "eval":
            metrics = {f"eval_{key}": value for key, value in metrics.items()}
        logs.update(metrics)  # in place, as trl does: evaluate() then returns eval_entropy etc. too
        super().log(logs, start_time)
        self._metrics[mode].clear()
