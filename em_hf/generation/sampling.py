"""Sampling that does not depend on the batch: every row draws its tokens from its own random stream.

``model.generate(do_sample=True)`` draws all rows of a batch from the one global generator, so a row's
sample depends on which rows share its batch and where it sits: a resumed evaluation, whose pending
items form other batches, would sample other answers. :class:`SeededRowSampler` gives row i its own
``torch.Generator`` seeded with ``seeds[i]``; :func:`item_seed` derives such a seed from (seed,
benchmark, item id, trajectory), so an item's answer is the same in any batch and any run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from transformers import LogitsProcessor

__all__ = ["SeededRowSampler", "item_seed"]


def item_seed(*parts: object) -> int:
    """A 31-bit seed from the ``repr`` of ``parts`` (e.g. ``(seed, benchmark, item id, trajectory)``),
    the same in every process and Python version (SHA-256, not ``hash``). 31 bits: vLLM's requests take
    it too.

    Examples:
        >>> from em_hf.generation.sampling import item_seed
        >>> item_seed(0, "math500", "test/algebra/1.json", 0)  # seed, benchmark, item id, trajectory
        650415858
        >>> item_seed(0, "math500", "a", 0) != item_seed(1, "math500", "a", 0)
        True
    """
    digest = hashlib.sha256(repr(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class SeededRowSampler(LogitsProcessor):
    """Draw each row's next token from softmax(scores) with the row's own generator; returns scores
    that are 0 at the drawn token and -inf elsewhere, so that greedy decoding (``do_sample=False``)
    emits it.

    Put it LAST in ``logits_processor`` and run ``generate`` with ``do_sample=False``: the sampling
    warpers (temperature, top-k, top-p) then have to be in the list before it
    (:meth:`~em_hf.generation.decoding.DecodingMethod.sampling_warpers`), since ``generate`` adds its
    own warpers only when it samples. One instance per ``generate`` call.

    Parameters:
        seeds (`Sequence[int]`):
            One seed per row of the batch (e.g. :func:`item_seed` of each prompt's item).

    Examples:
        A row draws the same tokens whatever batch it is in:

        >>> import torch
        >>> from em_hf.generation.sampling import SeededRowSampler
        >>> scores = torch.zeros(3, 50)  # uniform over 50 tokens
        >>> together = SeededRowSampler([7, 8, 9])(None, scores).argmax(dim=-1)
        >>> alone = SeededRowSampler([9])(None, scores[:1]).argmax(dim=-1)
        >>> bool(together[2] == alone[0])
        True
    """

    def __init__(self, seeds: Sequence[int]) -> None:
        if len(seeds) == 0:
            raise ValueError("`seeds` is empty: give one seed per row.")
        self.seeds = [int(seed) for seed in seeds]
        self._generators: list[torch.Generator] | None = None

    def __repr__(self) -> str:
        return f"SeededRowSampler(rows={len(self.seeds)})"

    def __call__(self, input_ids: torch.LongTensor | None, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[0] != len(self.seeds):
            raise ValueError(f"SeededRowSampler has {len(self.seeds)} seeds for {scores.shape[0]} rows.")
        if self._generators is None:
            self._generators = [
                torch.Generator(device=scores.device).manual_seed(seed) for seed in self.seeds
            ]
        probs = torch.softmax(scores.float(), dim=-1)
        tokens = torch.cat(
            [torch.multinomial(row, 1, generator=g) for row, g in zip(probs, self._generators, strict=True)]
        )
        chosen = torch.full_like(scores, float("-inf"))
        return chosen.scatter_(1, tokens[:, None], 0.0)
