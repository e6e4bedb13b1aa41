r"""Label-free confidence signals of sampled completions, from one scoring forward pass.

For a completion y of prompt x with logits z_t (vocabulary V) at its tokens t = 1..|y|, p_t = softmax(z_t):

- ``neg_entropy`` (RENT): -(1/|y|) sum_t H(p_t), H by :func:`em_hf.ops.token_entropy`;
- ``self_certainty`` (INTUITOR): (1/|y|) sum_t KL(U || p_t) = (1/|y|) sum_t [logsumexp(z_t) - mean_v(z_t)
  - log V], U uniform over the vocabulary (0 for a uniform p_t, larger when p_t is peaked);
- ``sequence_logprob`` (EM-RL-sequence's reward, Unreasonable Effectiveness of EM eq. 3): log pi(y | x) =
  sum_t log p_t(y_t), i.e. minus the sequence's negative log-likelihood;
- ``vote_share`` (TTRL / self-consistency): the share of the prompt's k samples whose final answer equals
  this completion's (computed by the caller from the answers, :func:`vote_shares`).

Every signal is oriented so that larger means more confident. The completion's text is re-tokenized after
the rendered prompt (:func:`~em_hf.generation.prompts.render_prompt`); a completion with no text is scored
on the EOS token alone. Logits are taken at temperature 1 (the model's own distribution), in float32.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from em_hf.generation.prompts import Prompt, left_pad, render_prompt
from em_hf.ops import token_entropy
from em_hf.utils.validation import check_int

__all__ = ["SIGNALS", "CompletionConfidence", "score_completions", "vote_shares"]

SIGNALS = ("neg_entropy", "self_certainty", "sequence_logprob", "vote_share")


@dataclass(frozen=True)
class CompletionConfidence:
    """The forward-pass signals of one completion (module docstring); larger is more confident.

    Parameters:
        neg_entropy (`float`):
            Minus the mean token entropy, nats.
        self_certainty (`float`):
            Mean over tokens of KL(uniform || p_t), nats.
        sequence_logprob (`float`):
            log pi(y | x), nats.
        num_tokens (`int`):
            Tokens scored.

    Examples:
        >>> from em_hf.eval.confidence import CompletionConfidence
        >>> CompletionConfidence(-0.5, 3.2, -4.0, 6).num_tokens
        6
    """

    neg_entropy: float
    self_certainty: float
    sequence_logprob: float
    num_tokens: int


def vote_shares(answers: Sequence[str | None]) -> list[float]:
    """For each of one prompt's k samples, the share of the k whose final answer equals its own (a sample
    with no answer gets ``1/k``: it agrees only with itself).

    Examples:
        >>> from em_hf.eval.confidence import vote_shares
        >>> vote_shares(["3", "3", "4", None])
        [0.5, 0.5, 0.25, 0.25]
    """
    if not answers:
        raise ValueError("`answers` is empty: give the answers of at least one sample.")
    counts = Counter(a for a in answers if a is not None)
    return [(counts[a] if a is not None else 1) / len(answers) for a in answers]


@torch.no_grad()
def score_completions(
    model,
    tokenizer,
    prompts: Sequence[Prompt],
    completions: Sequence[str],
    *,
    batch_size: int = 8,
) -> list[CompletionConfidence]:
    """Score each ``completions[i]`` as a continuation of ``prompts[i]`` in one forward pass per batch.

    Parameters:
        model (`PreTrainedModel`):
            A causal LM.
        tokenizer (`PreTrainedTokenizerBase`):
            Its tokenizer (with a pad token and, for empty completions, an EOS token).
        prompts (`Sequence[str | list[dict]]`):
            The prompts, rendered by :func:`~em_hf.generation.prompts.render_prompt`.
        completions (`Sequence[str]`):
            The completions' texts, one per prompt.
        batch_size (`int`, *optional*, defaults to `8`):
            Sequences per forward pass.

    Returns:
        `list[CompletionConfidence]`, in order.

    Examples:
        >>> from em_hf.eval.confidence import score_completions
        >>> from em_hf.utils.testing import tiny_llama_and_tokenizer
        >>> model, tokenizer = tiny_llama_and_tokenizer()
        >>> [s.num_tokens for s in score_completions(model, tokenizer, ["Compute 1 + 2 ="], ["3"])]
        [1]
    """
    if len(prompts) != len(completions):
        raise ValueError(
            f"`prompts` ({len(prompts)}) and `completions` ({len(completions)}) must have the same length."
        )
    check_int("batch_size", batch_size)
    device = next(model.parameters()).device
    scores: list[CompletionConfidence] = []
    for start in range(0, len(prompts), batch_size):
        rows, lengths = [], []
        chunk = zip(prompts[start : start + batch_size], completions[start : start + batch_size], strict=True)
        for prompt, text in chunk:
            tokens = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
            if not tokens:
                if tokenizer.eos_token_id is None:
                    raise ValueError(
                        "An empty completion is scored on EOS, but the tokenizer has no EOS token."
                    )
                tokens = [tokenizer.eos_token_id]
            rows.append(render_prompt(tokenizer, prompt) + list(tokens))
            lengths.append(len(tokens))
        input_ids, attention_mask = left_pad(rows, tokenizer.pad_token_id)
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
        keep = max(lengths)
        logits = (
            model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                logits_to_keep=keep + 1,
            )
            .logits[:, :-1]
            .float()
        )  # [B, keep, V]: position j predicts the token at -keep + j
        targets = input_ids[:, -keep:]
        log_z = torch.logsumexp(logits, dim=-1)
        certainty = log_z - logits.mean(dim=-1) - math.log(logits.shape[-1])
        logps = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - log_z
        entropy = token_entropy(logits)
        for row, n in enumerate(lengths):
            part = slice(keep - n, keep)
            scores.append(
                CompletionConfidence(
                    neg_entropy=-entropy[row, part].mean().item(),
                    self_certainty=certainty[row, part].mean().item(),
                    sequence_logprob=logps[row, part].sum().item(),
                    num_tokens=n,
                )
            )
    return scores
