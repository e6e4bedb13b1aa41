r"""The EM-FT / one-shot EM loss on a batch in trl's layout.

A batch holds ``prompt_ids``/``prompt_mask`` ([B, P], left-padded), ``completion_ids``/``completion_mask``
([B, C], right-padded; the mask is 1 up to and including the first EOS, 0 after it). The model reads
``cat(prompt, completion)`` with position ids counted over the attention mask (as ``generate`` does for
left-padded prompts), and the distribution that produced completion token j sits at sequence index
``P + j - 1`` (the logits at position i predict token i + 1). With m the completion mask, T_H the entropy
temperature:

    H_bj = H(softmax(z_{b, P+j-1} / T_H))
    token_mean:    L = sum_bj m_bj (H_bj + beta KL_bj) / sum_bj m_bj     (One-shot EM, sec. 2.1)
    sequence_sum:  L = (1/B) sum_b sum_j m_bj (H_bj + beta KL_bj)        (H_tok; Unreasonable Effectiveness
                                                                          of EM, Table 1)
    KL_bj = exp(r - l) - (r - l) - 1,  l = log pi_theta(y_bj), r = log pi_ref(y_bj)   (k3, as trl's GRPO)

The hidden states of the completion positions are taken at the LM head's input and reduced by
:func:`em_hf.ops.linear_entropy_loss` (beta = 0: gradients formed chunk by chunk in the forward pass) or
:func:`em_hf.ops.linear_token_entropy` (beta > 0), so no [B, C, V] logits exist. Models whose head is not a
plain ``nn.Linear`` on ordinary tensors, or whose logits are post-processed (soft-capping, logit scales),
take the model's own logits and :func:`em_hf.ops.token_entropy` instead.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from em_hf.ops import linear_entropy_loss, linear_token_entropy, token_entropy

__all__ = [
    "BATCH_KEYS",
    "EntropyLossOutput",
    "check_completion_batch",
    "completion_positions_forward",
    "entropy_min_loss",
    "fused_head_unsupported_reason",
]

BATCH_KEYS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")
# Config fields that make the logits differ from `lm_head(hidden)` (same list trl's fused head reads).
_LOGIT_POSTPROCESSING_FIELDS = (
    "final_logit_softcapping",
    "logit_scale",
    "output_multiplier",
    "lm_head_multiplier",
    "logits_scaling",
)


@dataclass(frozen=True)
class EntropyLossOutput:
    """The loss and, detached, what the trainer logs.

    Parameters:
        loss (`torch.Tensor`):
            The scalar to backpropagate: entropy term (by ``loss_normalization``) + beta x KL.
        mean_entropy (`torch.Tensor`):
            Mean token entropy over the completion tokens (detached).
        num_tokens (`torch.Tensor`):
            Completion tokens in the batch.
        mean_kl (`torch.Tensor` or `None`):
            Mean KL to the reference over the completion tokens when ``beta > 0``, else None.

    Examples:
        >>> import torch
        >>> from em_hf.trainers.em_loss import EntropyLossOutput
        >>> out = EntropyLossOutput(torch.tensor(1.2), torch.tensor(1.2), torch.tensor(30), None)
        >>> float(out.loss), out.mean_kl is None
        (1.2000000476837158, True)
    """

    loss: torch.Tensor
    mean_entropy: torch.Tensor  # mean H over completion tokens
    num_tokens: torch.Tensor  # completion tokens in the batch
    mean_kl: torch.Tensor | None  # mean KL over completion tokens when beta > 0


def check_completion_batch(batch: Mapping[str, torch.Tensor]) -> None:
    """Raise a clear error when ``batch`` is not in trl's layout (see the module docstring)."""
    missing = [key for key in BATCH_KEYS if key not in batch]
    if missing:
        raise KeyError(
            f"The batch lacks {missing}; EntropyMinTrainer.compute_loss expects trl's layout "
            f"{list(BATCH_KEYS)} (prompt left-padded, completion right-padded, completion_mask 0 after "
            "the first EOS)."
        )
    for key in BATCH_KEYS:
        value = batch[key]
        if not isinstance(value, torch.Tensor) or value.dim() != 2:
            shape = getattr(value, "shape", type(value).__name__)
            raise ValueError(f"`{key}` must be a 2-D tensor [batch, length], got {shape}.")
        if value.dtype.is_floating_point:
            raise TypeError(f"`{key}` must be an integer tensor, got {value.dtype}.")
    if batch["prompt_ids"].shape != batch["prompt_mask"].shape:
        raise ValueError("`prompt_ids` and `prompt_mask` must have the same shape.")
    if batch["completion_ids"].shape != batch["completion_mask"].shape:
        raise ValueError("`completion_ids` and `completion_mask` must have the same shape.")
    if batch["prompt_ids"].shape[0] != batch["completion_ids"].shape[0]:
        raise ValueError("`prompt_ids` and `completion_ids` must have the same number of rows.")
    if batch["prompt_ids"].shape[1] == 0:
        raise ValueError("The prompts are empty: a completion token needs a prompt token before it.")
    if int(batch["completion_mask"].sum()) == 0:
        raise ValueError("`completion_mask` selects no token: there is no completion to take the entropy of.")


def fused_head_unsupported_reason(model: nn.Module) -> str | None:
    """Why the chunked LM-head path cannot be used for ``model`` (None when it can)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if type(head) is not nn.Linear:
        return f"the output embedding is {type(head).__name__}, not a plain torch.nn.Linear"
    weight = head.weight
    if hasattr(weight, "ds_id") or type(weight).__name__ == "DTensor":
        return "the LM head weight is sharded (DeepSpeed ZeRO-3 or FSDP)"
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in _LOGIT_POSTPROCESSING_FIELDS:
        if getattr(text_config, name, None) not in (None, 1, 1.0):
            return f"the model post-processes its logits (`config.{name}`)"
    return None


def _accepts_logits_to_keep(model: nn.Module) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def completion_positions_forward(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    head: nn.Linear | None,
) -> torch.Tensor:
    """Run ``model`` on ``cat(prompt, completion)`` and return, for every completion token j, the model's
    state at index ``P + j - 1``: the LM head's input ``[B, C, D]`` when ``head`` is given (the head itself
    is skipped), else the logits ``[B, C, V]``.

    ``model`` may be wrapped (DDP, PEFT): it is called as a whole, so wrappers see a normal forward.
    """
    prompt_ids, prompt_mask = batch["prompt_ids"], batch["prompt_mask"]
    completion_ids, completion_mask = batch["completion_ids"], batch["completion_mask"]
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    # Positions counted over real tokens: what generate() used for the left-padded prompts.
    position_ids = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
    num_completion = completion_ids.shape[1]
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
    kwargs["use_cache"] = False
    inner = model.module if hasattr(model, "module") else model
    if _accepts_logits_to_keep(inner) or _accepts_logits_to_keep(model):
        kwargs["logits_to_keep"] = num_completion + 1
    if head is None:
        logits = model(**kwargs).logits
        return logits[:, -(num_completion + 1) : -1]

    captured: dict[str, torch.Tensor] = {}

    def capture_and_skip(_module: nn.Module, args: tuple) -> tuple:
        captured["hidden"] = args[0]
        return (args[0][..., :0, :], *args[1:])  # the head then projects zero positions

    handle = head.register_forward_pre_hook(capture_and_skip)
    try:
        model(**kwargs)
    finally:
        handle.remove()
    if "hidden" not in captured:
        raise RuntimeError("The model's forward never called its output embedding; cannot take the entropy.")
    return captured["hidden"][:, -(num_completion + 1) : -1]


def _token_weights(mask: torch.Tensor, normalization: str, num_tokens: int) -> float:
    """The weight of each completion token: 1 / tokens (token_mean) or 1 / sequences (sequence_sum)."""
    if normalization == "token_mean":
        return 1.0 / num_tokens
    if normalization == "sequence_sum":
        return 1.0 / mask.shape[0]
    raise ValueError(f"Unknown loss normalization {normalization!r}; use 'token_mean' or 'sequence_sum'.")


def entropy_min_loss(
    states: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    head: nn.Linear | None,
    entropy_temperature: float,
    normalization: str = "token_mean",
    beta: float = 0.0,
    ref_logps: torch.Tensor | None = None,
    sampling_temperature: float = 1.0,
    chunk_size: int | None = None,
) -> EntropyLossOutput:
    """The loss of the module docstring from ``states`` = :func:`completion_positions_forward`'s output.

    ``ref_logps`` ([num completion tokens], in mask order) is needed when ``beta > 0``; policy and reference
    log-probs are taken at ``sampling_temperature`` (the distribution the tokens were sampled from).
    """
    mask = completion_mask.bool()
    num_tokens = int(mask.sum())
    weight = _token_weights(mask, normalization, num_tokens)
    rows = states[mask]  # [num_tokens, D or V]
    labels = completion_ids[mask]
    mean_kl = None
    if head is not None:
        # The entropy is computed in the head's dtype, outside autocast (the matmul is ours).
        rows = rows.to(head.weight.dtype)
        with torch.autocast(device_type=rows.device.type, enabled=False):
            if beta == 0.0:
                weights = torch.full((num_tokens,), weight, dtype=torch.float32, device=rows.device)
                loss = linear_entropy_loss(
                    rows, head.weight, weights, head.bias, entropy_temperature, chunk_size
                )
                mean_entropy = loss.detach().float() / (weight * num_tokens)
                return EntropyLossOutput(loss, mean_entropy, torch.tensor(num_tokens), None)
            if entropy_temperature == sampling_temperature:
                entropy, logps = linear_token_entropy(
                    rows, head.weight, head.bias, entropy_temperature, labels=labels, chunk_size=chunk_size
                )
            else:
                entropy = linear_token_entropy(
                    rows, head.weight, head.bias, entropy_temperature, chunk_size=chunk_size
                )
                _, logps = linear_token_entropy(
                    rows, head.weight, head.bias, sampling_temperature, labels=labels, chunk_size=chunk_size
                )
    else:
        entropy = token_entropy(rows, entropy_temperature)
        logps = None
        if beta > 0.0:
            logps = sequence_token_logps(rows, labels, sampling_temperature)
    per_token = entropy.float()
    if beta > 0.0:
        if ref_logps is None or ref_logps.shape != (num_tokens,):
            raise ValueError("`ref_logps` must hold one reference log-prob per completion token (beta > 0).")
        delta = ref_logps.float() - logps.float()
        kl = torch.exp(delta) - delta - 1.0
        per_token = per_token + beta * kl
        mean_kl = kl.detach().mean()
    loss = per_token.sum() * weight
    return EntropyLossOutput(loss, entropy.detach().float().mean(), torch.tensor(num_tokens), mean_kl)


def sequence_token_logps(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(z / T)[y] per row, with trl's memory-lean ``selective_log_softmax``."""
    from trl.trainer.utils import selective_log_softmax

    return selective_log_softmax(logits.float() / temperature, labels)


def reference_token_logps(
    states: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    head: nn.Linear | None,
    temperature: float,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """log pi_ref(y) at every completion token (mask order), from the reference model's states."""
    mask = completion_mask.bool()
    rows, labels = states[mask], completion_ids[mask]
    if head is None:
        return sequence_token_logps(rows, labels, temperature)
    rows = rows.to(head.weight.dtype)
    with torch.autocast(device_type=rows.device.type, enabled=False):
        _, logps = linear_token_entropy(
            rows, head.weight, head.bias, temperature, labels=labels, chunk_size=chunk_size
        )
    return logps
