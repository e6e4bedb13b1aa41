r"""EM-RL on trl's RLOOTrainer: REINFORCE with the leave-one-out baseline and a negative-entropy reward
(Unreasonable Effectiveness of EM, sec. 3.2).

For each prompt x the trainer samples N completions y^1..y^N from pi_theta and scores each with

    EM-RL-token     r(y) = -sum_{t=1}^{|y|} H(pi_theta(. | x, y_<t))        (eq. 4)
    EM-RL-sequence  r(y) =  sum_{t=1}^{|y|} log pi_theta(y_t | x, y_<t)      (eq. 3, = log pi_theta(y))

over the completion tokens only (through the first EOS; padding and everything after EOS excluded),
plus sum_k w_k r_k(y) for the user's reward functions when given. Everything after the reward is
trl's RLOO, unchanged: the KL penalty r <- r - beta * sum_t (log pi_theta - log pi_ref), the
leave-one-out advantage A_i = r_i - (1/(N-1)) sum_{j != i} r_j, and the clipped policy loss.

Where the numbers come from (no extra forward pass). trl's ``_generate_and_score_completions``
always scores the sampled completions with the sampling policy (``old_per_token_logps``: one
no-grad forward of ``self.model`` through trl's fused LM head, which computes the per-token
log-probabilities AND entropies of softmax(z / temperature) in the same pass). trl keeps only the
log-probabilities; this trainer asks that same call for the entropies too and keeps both. So
r_seq is exactly trl's ``old_logps`` and r_tok costs nothing but the entropy output that trl's head
computes anyway. The policy is softmax(z / temperature) at ``args.temperature``, the distribution
the completions were sampled from before any top-k / top-p filter. No extra forward is needed in any
generation mode of trl 1.16 (transformers ``generate``, continuous batching, vLLM): RLOO rescores
every sampled completion with the training model in all of them.

The hook (one place, :meth:`EMRLOOTrainer._get_per_token_logps_and_entropies`, armed by
:meth:`EMRLOOTrainer._generate_and_score_completions`) relies on these trl internals, checked by
the package's test suite (the EM-RL contract tests) and guarded at run time:

1. ``_generate_and_score_completions(inputs)`` makes its FIRST ``_get_per_token_logps_and_entropies``
   call with ``self.model`` on ``(prompt + completion ids, prompt mask + completion mask,
   logits_to_keep = completion length)`` before any reference-model call;
2. ``_get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep,
   batch_size, compute_entropy=...)`` returns ``(logps, entropies, aux_loss)``, ``[B, logits_to_keep]``;
3. reward functions are then called (``_calculate_rewards``) with ``completion_ids`` (the local
   completions' token ids through EOS) and weighted by ``self.reward_weights``.

Supported trl versions: :data:`SUPPORTED_TRL` (pinned in setup.cfg).
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import trl
from accelerate.utils import is_peft_model
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from trl import RLOOTrainer
from trl.trainer.utils import get_config_model_id

from em_hf.models import prepare_tokenizer
from em_hf.ops import linear_token_entropy
from em_hf.rewards import (
    completion_text,
    mean_entropy_reward,
    self_certainty_reward,
    semantic_entropy_rewards_and_entropies,
    sequence_logprob_reward,
    token_entropy_reward,
)
from em_hf.trainers.checkpoints import CompleteCheckpointsMixin
from em_hf.trainers.collapse_guard import completion_collapse_metrics
from em_hf.trainers.emrloo_config import EM_REWARDS, EMRLOOConfig
from em_hf.utils.answers import extract_answer
from em_hf.utils.quiet import training_warnings_filtered
from em_hf.utils.validation import check_generation_kwargs, check_pad_token_id, check_prompt_dataset

__all__ = ["SUPPORTED_TRL", "EMRLOOTrainer", "check_trl_version"]

# The trl releases whose RLOOTrainer internals the hook was written against and tested with. Keep in
# sync with setup.cfg's install_requires.
SUPPORTED_TRL = ">=1.16,<1.17"


def check_trl_version(version: str | None = None) -> None:
    """Raise ``RuntimeError`` when ``version`` (default: the installed trl) is outside
    :data:`SUPPORTED_TRL`."""
    version = trl.__version__ if version is None else version
    if Version(version) not in SpecifierSet(SUPPORTED_TRL):
        raise RuntimeError(
            f"em_hf's EMRLOOTrainer hooks private methods of trl's RLOOTrainer and supports "
            f"trl{SUPPORTED_TRL}; trl {version} is installed. Install a supported trl "
            f"(pip install 'trl{SUPPORTED_TRL}') or check the trl internals listed in the docstring of "
            "em_hf.trainers.emrloo_trainer against the new release before widening the range."
        )


def _contract_error(what: str) -> RuntimeError:
    return RuntimeError(
        f"EMRLOOTrainer: {what}. The EM reward reuses the sampling-policy scores of trl's "
        f"RLOOTrainer._generate_and_score_completions, as in trl{SUPPORTED_TRL} "
        f"(installed: trl {trl.__version__}); "
        "this trl release changed what the hook relies on (see em_hf/trainers/emrloo_trainer.py)."
    )


@dataclass
class _PolicyScores:
    """What the sampling policy's scoring forward returned, for the local generation batch."""

    logps: torch.Tensor  # [B, C] log pi(y_t | x, y_<t); 0 where mask is 0
    entropies: torch.Tensor  # [B, C] H(pi(. | x, y_<t)); 0 where mask is 0
    mask: torch.Tensor  # [B, C] completion mask (1 through the first EOS)
    completion_ids: torch.Tensor  # [B, C] the completion tokens that were scored
    self_certainty: torch.Tensor | None = None  # [B, C] KL(U || pi(. | x, y_<t)), when requested


class _LabelFreeReward:
    """One of ``args.label_free_rewards`` as a trl reward function (trl weights, logs and gathers
    it under its name); computed by the trainer from the captured scores or the completions."""

    def __init__(self, trainer: EMRLOOTrainer, name: str) -> None:
        self._trainer = weakref.ref(trainer)
        self.__name__ = name

    def __call__(self, prompts: list, completions: list, completion_ids: list[list[int]], **kwargs: Any):
        trainer = self._trainer()
        if trainer is None:
            raise RuntimeError("the EMRLOOTrainer that owns this reward no longer exists.")
        return trainer._label_free_rewards(self.__name__, prompts, completions, completion_ids)


class _EMReward:
    """The EM reward as one of trl's reward functions, so that trl weights, logs and gathers it like
    any other. It reads the scores captured by the trainer's hook for the current batch."""

    def __init__(self, trainer: EMRLOOTrainer, kind: str) -> None:
        self._trainer = weakref.ref(trainer)
        self.kind = kind
        self.__name__ = f"em_{kind}"

    def __call__(self, prompts: list, completions: list, completion_ids: list[list[int]], **kwargs: Any):
        trainer = self._trainer()
        if trainer is None:
            raise RuntimeError("the EMRLOOTrainer that owns this EM reward no longer exists.")
        return trainer._em_rewards(completion_ids)


@contextlib.contextmanager
def _vllm_generation_patch(args: EMRLOOConfig):
    """trl's ``RLOOTrainer.__init__`` builds ``VLLMGeneration`` by name: let it build em_hf's subclass."""
    from trl.trainer import rloo_trainer

    from em_hf.trainers.vllm_rollouts import check_vllm_available, make_vllm_rollouts

    check_vllm_available()
    original = rloo_trainer.VLLMGeneration
    rloo_trainer.VLLMGeneration = functools.partial(
        make_vllm_rollouts, engine_kwargs=args.vllm_engine_kwargs, weight_sync_dir=args.vllm_weight_sync_dir
    )
    try:
        yield
    finally:
        rloo_trainer.VLLMGeneration = original


class EMRLOOTrainer(CompleteCheckpointsMixin, RLOOTrainer):
    r"""``trl.RLOOTrainer`` whose reward is the EM-RL negative entropy (Unreasonable Effectiveness of EM,
    sec. 3.2).

    Parameters:
        model (`str` or `PreTrainedModel`):
            As in ``trl.RLOOTrainer``: the policy, or a name/path loaded with ``args.model_init_kwargs``.
            With ``args.beta > 0`` trl reloads the KL reference from ``model.config._name_or_path``, so an
            in-memory model (no such path) needs ``beta=0`` or a ``peft_config``.
        reward_funcs (`callable`, `str`, `PreTrainedModel` or a `list` of them, *optional*):
            The user's reward functions or reward models, as in ``trl.RLOOTrainer``. With ``args.em_reward``
            set the reward is ``em_reward_weight * r_em(y) + sum_k reward_weights[k] * r_k(y)``, and
            ``args.reward_weights`` (if given) has one entry per function here. With ``em_reward=None`` at
            least one is required (e.g. SC-RL: :func:`em_hf.rewards.self_consistency_reward`).
        args (`EMRLOOConfig`, *optional*):
            Must be an :class:`~em_hf.trainers.EMRLOOConfig`. Defaults to
            ``EMRLOOConfig("<model name>-EMRLOO")`` (``em_reward="token"``).
        train_dataset, eval_dataset, processing_class, reward_processing_classes:
            As in ``trl.RLOOTrainer``: datasets with a ``prompt`` column (trl's standard or conversational
            format), the tokenizer, the reward models' tokenizers (the EM reward needs none).
        callbacks, optimizers, quantization_config, peft_config:
            As in ``trl.RLOOTrainer``; with ``peft_config`` the KL reference is the adapter-free model.

    ``args.label_free_rewards`` adds INTUITOR's self-certainty, RENT's mean entropy, EMPO's semantic
    entropy and the EM rewards by name, each a reward function of its own, computed from the same
    scoring pass (the self-certainty from its final hidden states through the LM head: no second
    forward) and logged as ``rewards/<name>/mean``.

    The EM reward appears in trl's logs as ``rewards/em_token/mean`` (or ``em_sequence``). How the
    reward reuses trl's scoring forward, and which trl internals that relies on: see the module
    docstring. Supported trl versions: :data:`SUPPORTED_TRL`.

    Examples:
        One step of EM-RL-token on a tiny random model (``beta=0``: it has no path to reload a KL
        reference from; the ``Trainer`` prints the logs):

        >>> import tempfile
        >>> from datasets import Dataset
        >>> from em_hf import EMRLOOConfig, EMRLOOTrainer
        >>> from em_hf.utils.testing import tiny_llama_and_tokenizer
        >>> model, tokenizer = tiny_llama_and_tokenizer()
        >>> args = EMRLOOConfig(
        ...     output_dir=tempfile.mkdtemp(), em_reward="token", beta=0.0, max_steps=1,
        ...     per_device_train_batch_size=2, num_generations=2, max_completion_length=2,
        ...     use_cpu=True, report_to=[], disable_tqdm=True, save_strategy="no",
        ... )
        >>> prompts = Dataset.from_dict({"prompt": ["Compute 1 + 2 =", "Compute 3 + 4 ="]})
        >>> trainer = EMRLOOTrainer(model=model, args=args, train_dataset=prompts, processing_class=tokenizer)
        >>> result = trainer.train()
        {'train_runtime': ..., 'rewards/em_token/mean': ..., 'epoch': '0.5'}
        >>> result.global_step
        1

        With a real model, the paper's values: ``EMRLOOConfig.paper(em_reward="token",
        output_dir="em-rl")`` and, e.g., ``train_dataset=em_hf.data.arithmetic_dataset(512)``.
    """

    _tag_names: ClassVar[list[str]] = [*RLOOTrainer._tag_names, "em_hf", "em-rl"]
    _name = "EM-RL (RLOO)"

    def __init__(
        self,
        model: Any,
        reward_funcs: Any = None,
        args: EMRLOOConfig | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        reward_processing_classes: Any = None,
        callbacks: Any = None,
        optimizers: tuple[Any, Any] = (None, None),
        quantization_config: Any = None,
        peft_config: Any = None,
    ) -> None:
        check_trl_version()
        if args is None:
            model_name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = EMRLOOConfig(f"{model_name.split('/')[-1]}-EMRLOO")
        if not isinstance(args, EMRLOOConfig):
            raise TypeError(
                "`args` must be an em_hf.EMRLOOConfig (trl's RLOOConfig plus em_reward, em_reward_weight), "
                f"got {type(args).__name__}; build it with EMRLOOConfig(...) or EMRLOOConfig.paper(...)."
            )
        if args.em_reward is not None and args.em_reward not in EM_REWARDS:  # mutated after __post_init__
            raise ValueError(f"`args.em_reward` must be one of {EM_REWARDS} or None, got {args.em_reward!r}.")

        check_prompt_dataset(train_dataset, "train_dataset")
        if isinstance(eval_dataset, dict):
            for key, value in eval_dataset.items():
                check_prompt_dataset(value, f"eval_dataset[{key!r}]")
        else:
            check_prompt_dataset(eval_dataset, "eval_dataset")
        if not args.use_vllm:  # with vLLM they are SamplingParams fields
            check_generation_kwargs("generation_kwargs", args.generation_kwargs)

        if reward_funcs is None:
            user_funcs = []
        elif isinstance(reward_funcs, list):
            user_funcs = list(reward_funcs)
        else:
            user_funcs = [reward_funcs]
        label_free = dict(args.label_free_rewards or {})
        if args.em_reward is None and not user_funcs and not label_free:
            raise ValueError(
                "No reward: `args.em_reward` is None and `reward_funcs` and `args.label_free_rewards` are "
                "empty. Set em_reward='token' or 'sequence' (EM-RL), label_free_rewards (e.g. "
                "{'self_certainty': 1.0}), or pass reward_funcs (e.g. em_hf.rewards.self_consistency_reward "
                "for SC-RL)."
            )
        if (
            args.beta != 0.0
            and not isinstance(model, str)
            and peft_config is None
            and not is_peft_model(model)
            and not get_config_model_id(model.config)
        ):
            # trl rebuilds the KL reference model from model.config._name_or_path; an in-memory model
            # has none and trl would fail later with a Hub repo-id error.
            raise ValueError(
                f"`args.beta`={args.beta} needs a reference model, which trl reloads from "
                "`model.config._name_or_path`, but this model has none (built in memory). Save it with "
                "model.save_pretrained(path) and pass the path or the reloaded model, use a peft_config "
                "(the reference is the adapter-free model), or set beta=0."
            )
        user_weights = args.reward_weights
        if user_weights is not None and len(user_weights) != len(user_funcs):
            raise ValueError(
                f"`args.reward_weights` has {len(user_weights)} entries but {len(user_funcs)} reward "
                "functions were passed: give one weight per function in `reward_funcs` (the EM reward is "
                "weighted by `args.em_reward_weight`)."
            )

        self._em_kind: str | None = args.em_reward
        self._em_armed = False
        self._em_scores: _PolicyScores | None = None
        funcs = list(user_funcs)
        if reward_processing_classes is not None and not isinstance(reward_processing_classes, list):
            reward_processing_classes = [reward_processing_classes]
        self._label_free = label_free
        self._format_penalty = float(args.format_penalty)
        extra = [_EMReward(self, self._em_kind)] if self._em_kind is not None else []
        extra += [_LabelFreeReward(self, name) for name in label_free]
        funcs.extend(extra)
        if reward_processing_classes is not None:
            reward_processing_classes = [*reward_processing_classes, *([None] * len(extra))]

        # trl checks len(reward_weights) == len(reward_funcs) in __init__; the EM weight is appended
        # below, so hide the user's weights from it for the duration of the call.
        args.reward_weights = None
        # With use_vllm, trl builds its VLLMGeneration here; em_hf's subclass adds `vllm_engine_kwargs` and a
        # weight sync that works on vLLM's CPU backend (trl's stops there: see em_hf.trainers.vllm_rollouts).
        patch = _vllm_generation_patch(args) if args.use_vllm else contextlib.nullcontext()
        try:
            with patch:
                super().__init__(
                    model=model,
                    reward_funcs=funcs,
                    args=args,
                    train_dataset=train_dataset,
                    eval_dataset=eval_dataset,
                    processing_class=processing_class,
                    reward_processing_classes=reward_processing_classes,
                    callbacks=callbacks,
                    optimizers=optimizers,
                    quantization_config=quantization_config,
                    peft_config=peft_config,
                )
        finally:
            args.reward_weights = user_weights
        # trl pads on the left at run time; record it in the tokenizer so that `save_model` writes a
        # tokenizer that reloads with left padding (batched generate needs it).
        prepare_tokenizer(self.processing_class)
        check_pad_token_id(self.processing_class, self.accelerator.unwrap_model(self.model))
        weights = list(user_weights) if user_weights is not None else [1.0] * len(user_funcs)
        if self._em_kind is not None:
            weights.append(float(args.em_reward_weight))
        weights += list(label_free.values())
        self.reward_weights = torch.tensor(weights, dtype=torch.float32)
        if "self_certainty" in label_free:
            _check_plain_lm_head(self.model)

    # ---- The hook: capture the sampling policy's scores of the completions (trl's own forward). ----

    def train(self, *args: Any, **kwargs: Any) -> Any:
        """``trl.RLOOTrainer.train``, with the known third-party warnings of a training run on a CPU
        (torch's unpinned-memory note) filtered by message and module
        (:func:`em_hf.utils.quiet.training_warnings_filtered`); every other warning shows."""
        with training_warnings_filtered():
            return super().train(*args, **kwargs)

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        """trl's generate-and-score step, with the hook armed for its first policy scoring call."""
        self._em_armed = self._em_kind is not None or bool(set(self._label_free) & _PER_TOKEN_REWARDS)
        self._em_scores = None
        try:
            output = super()._generate_and_score_completions(inputs)
            self._log_collapse_signals(output)
            return output
        finally:
            self._em_armed = False
            self._em_scores = None

    def _log_collapse_signals(self, output: dict[str, Any]) -> None:
        """Log what :class:`~em_hf.trainers.collapse_guard.CollapseGuardCallback` reads beside trl's
        ``entropy`` and ``completions/mean_length``: distinct answers per prompt, repeated 4-gram share."""
        signals = completion_collapse_metrics(
            self.processing_class,
            output["prompt_ids"],
            output["prompt_mask"],
            output["completion_ids"],
            output["completion_mask"],
        )
        mode = "train" if self.model.training else "eval"
        for key, value in signals.items():
            local = torch.tensor([value], device=self.accelerator.device)
            self._metrics[mode][key].append(self.accelerator.gather(local).mean().item())

    def _get_per_token_logps_and_entropies(
        self,
        model: Any,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        logits_to_keep: int,
        batch_size: int | None = None,
        compute_entropy: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """trl's scoring forward; when armed and called on the policy, it also returns and keeps the
        entropies that trl's fused LM head computes in the same pass (no second forward)."""
        if not (self._em_armed and model is self.model):
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy, **kwargs
            )
        self._em_armed = False  # only the first call (the sampling policy), never the PEFT reference
        hidden: list[torch.Tensor] = []
        capture = (
            _capture_final_hidden_states(self.accelerator.unwrap_model(model), hidden)
            if "self_certainty" in self._label_free
            else contextlib.nullcontext()
        )
        with capture:
            logps, entropies, aux_loss = super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size, True, **kwargs
            )
        if entropies is None or logps.shape != entropies.shape or logps.shape[-1] != logits_to_keep:
            raise _contract_error(
                "_get_per_token_logps_and_entropies(compute_entropy=True) returned no entropies"
            )
        mask = attention_mask[:, -logits_to_keep:].detach()
        completion_ids = input_ids[:, -logits_to_keep:].detach()
        certainty = None
        if hidden:
            certainty = self._self_certainty(model, hidden, completion_ids, mask, logits_to_keep)
        self._em_scores = _PolicyScores(
            logps=logps.detach(),
            entropies=entropies.detach(),
            mask=mask,
            completion_ids=completion_ids,
            self_certainty=certainty,
        )
        return logps, (entropies if compute_entropy else None), aux_loss

    def _em_rewards(self, completion_ids: list[list[int]]) -> list[float | None]:
        """r_tok or r_seq of the local completions from the captured scores; None (trl: "unscorable")
        for a completion whose mask is empty (``mask_truncated_completions`` zeroes truncated ones)."""
        return self._per_token_rewards(
            "token_entropy" if self._em_kind == "token" else "sequence_logprob", completion_ids, None
        )

    def _label_free_rewards(
        self, name: str, prompts: list, completions: list, completion_ids: list[list[int]]
    ) -> list[float | None]:
        """One of ``args.label_free_rewards`` for the local completions: the per-token ones from the
        captured scores, ``semantic_entropy`` from the completions' answers (its mean group cluster
        entropy goes to the logs)."""
        if name == "semantic_entropy":
            rewards, entropies = semantic_entropy_rewards_and_entropies(
                prompts, completions, self.num_generations
            )
            mode = "train" if self.model.training else "eval"
            self._metrics[mode]["semantic_entropy/cluster_entropy"].append(
                sum(entropies) / max(len(entropies), 1)
            )
            return rewards
        has_answer = None
        if name == "mean_entropy" and self._format_penalty:
            has_answer = torch.tensor([extract_answer(completion_text(c)) is not None for c in completions])
        return self._per_token_rewards(name, completion_ids, has_answer)

    def _per_token_rewards(
        self, name: str, completion_ids: list[list[int]], has_answer: torch.Tensor | None
    ) -> list[float | None]:
        scores = self._em_scores
        if scores is None:
            raise _contract_error(
                "a per-token reward was requested but the sampling policy's scoring forward was not captured "
                "(expected a _get_per_token_logps_and_entropies call on self.model before the reward "
                "functions)"
            )
        if scores.logps.size(0) != len(completion_ids):
            raise _contract_error(
                f"the captured scores cover {scores.logps.size(0)} completions, the reward functions got "
                f"{len(completion_ids)}"
            )
        mask = scores.mask.bool()
        lengths = mask.sum(dim=1).tolist()
        for i, ids in enumerate(completion_ids):
            scored = scores.completion_ids[i, : len(ids)].tolist()
            if lengths[i] not in (0, len(ids)) or scored != list(ids):
                raise _contract_error(
                    f"completion {i}: the scored tokens/mask do not match the completion passed to the "
                    f"reward functions ({lengths[i]} masked-in tokens, {len(ids)} completion tokens)"
                )
        if name == "token_entropy":
            rewards = token_entropy_reward(scores.entropies, mask)
        elif name == "sequence_logprob":
            rewards = sequence_logprob_reward(scores.logps, mask)
        elif name == "mean_entropy":
            rewards = mean_entropy_reward(scores.entropies, mask, has_answer, self._format_penalty)
        else:
            rewards = self_certainty_reward(scores.self_certainty, mask)
        return [None if n == 0 else float(r) for r, n in zip(rewards.tolist(), lengths, strict=True)]

    def _self_certainty(
        self,
        model: Any,
        hidden: list[torch.Tensor],
        completion_ids: torch.Tensor,
        mask: torch.Tensor,
        logits_to_keep: int,
    ) -> torch.Tensor:
        """KL(U || pi(. | x, y_<t)) at the completion positions from the backbone's final hidden states
        of the scoring forward (no second forward): :func:`em_hf.ops.linear_token_entropy` over the LM
        head at the sampling temperature, the same fused pass that gives the entropy."""
        unwrapped = self.accelerator.unwrap_model(model)
        head = unwrapped.get_output_embeddings()
        states = torch.cat([h[:, -logits_to_keep - 1 : -1] for h in hidden], dim=0)
        states = states.to(device=head.weight.device, dtype=head.weight.dtype)
        labels = completion_ids.masked_fill(mask == 0, -100).to(head.weight.device)
        with torch.no_grad():
            stats = linear_token_entropy(
                states, head.weight, head.bias, self.temperature, labels=labels, self_certainty=True
            )
        return stats.self_certainty.masked_fill(mask == 0, 0.0).to(mask.device)


_PER_TOKEN_REWARDS = {"self_certainty", "mean_entropy", "token_entropy", "sequence_logprob"}


def _backbone(model: Any) -> Any:
    """The module whose output holds the final hidden states trl's fused LM head projects."""
    base = model.get_base_model() if is_peft_model(model) else model
    return base.base_model


@contextlib.contextmanager
def _capture_final_hidden_states(model: Any, into: list[torch.Tensor]):
    """Append the backbone's ``last_hidden_state`` of every forward inside the block to ``into``."""

    def hook(module, args, output):
        states = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
        into.append(states.detach())

    handle = _backbone(model).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _check_plain_lm_head(model: Any) -> None:
    """The self-certainty is computed from the final hidden states through the LM head weight and
    bias: a model whose logits are further scaled or soft-capped would need those steps too."""
    config = model.config.get_text_config()
    for name in (
        "final_logit_softcapping",
        "logit_scale",
        "output_multiplier",
        "lm_head_multiplier",
        "logits_scaling",
    ):
        if getattr(config, name, None) not in (None, 1.0):
            raise ValueError(
                "label_free_rewards 'self_certainty' projects the final hidden states through the LM head, "
                f"but this model's config sets `{name}`={getattr(config, name)!r}, which em_hf's LM-head "
                "statistics do not apply; use 'mean_entropy' or 'token_entropy' (trl's own entropies)."
            )
