"""Decoding methods as data: generate() settings plus the logits processors a method adds.

A method is written on the command line as ``NAME[:key=value,...]``, e.g. ``greedy``, ``sample``,
``sample:t=0.1``, ``adaptive:alpha=0.5``, ``em-inf:t=0.1,n_steps=5``. ``t`` is the sampling
temperature (generate's temperature warper, applied AFTER the method's processors), ``top_p``
and ``top_k`` the usual filters (default: none, i.e. plain sampling); every other key goes to the
method's processor (:class:`~em_hf.EntropyMinLogitsProcessor` for ``em-inf``,
:class:`~em_hf.AdaptiveTemperatureLogitsWarper` for ``adaptive``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from transformers import LogitsProcessor

from em_hf.generation import AdaptiveTemperatureLogitsWarper, EntropyMinLogitsProcessor
from em_hf.generation.utils import check_number

__all__ = ["DecodingMethod", "parse_method"]

_PROCESSORS: dict[str, Callable[..., LogitsProcessor] | None] = {
    "greedy": None,
    "sample": None,
    "adaptive": AdaptiveTemperatureLogitsWarper,
    "em-inf": EntropyMinLogitsProcessor,
}
_SAMPLING_KEYS = {"t", "top_p", "top_k"}


@dataclass(frozen=True)
class DecodingMethod:
    """One decoding method: ``kind`` in greedy / sample / adaptive / em-inf, sampling settings and
    the keyword arguments of the method's logits processor."""

    kind: str
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    processor_kwargs: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    def __post_init__(self) -> None:
        if self.kind not in _PROCESSORS:
            raise ValueError(f"Unknown decoding method {self.kind!r}; choose from {sorted(_PROCESSORS)}.")
        if self.kind == "greedy" and self.processor_kwargs:
            raise ValueError("`greedy` takes no options.")
        if self.do_sample:
            check_number("t (sampling temperature)", self.temperature, low=0.0, low_open=True)
            check_number("top_p", self.top_p, low=0.0, high=1.0, low_open=True)
            if self.top_k < 0:
                raise ValueError(f"`top_k` must be >= 0 (0: no top-k filter), got {self.top_k}.")
        # Build once so that bad processor options fail here, at parse time.
        self.logits_processors()

    @property
    def name(self) -> str:
        return self.label or self.kind

    @property
    def do_sample(self) -> bool:
        return self.kind != "greedy"

    def logits_processors(self) -> list[LogitsProcessor]:
        """Fresh processor instances for one ``generate`` call."""
        factory = _PROCESSORS[self.kind]
        return [] if factory is None else [factory(**self.processor_kwargs)]

    def generation_kwargs(self) -> dict[str, Any]:
        """The ``generate``/``GenerationConfig`` settings of the method."""
        if not self.do_sample:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}


def _parse_value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_method(spec: str) -> DecodingMethod:
    """Parse ``NAME[:key=value,...]`` (see the module docstring) into a :class:`DecodingMethod`."""
    kind, _, options = spec.strip().partition(":")
    kind = kind.strip().lower().replace("_", "-")
    if kind not in _PROCESSORS:
        raise ValueError(f"Unknown decoding method {kind!r} in {spec!r}; choose from {sorted(_PROCESSORS)}.")
    sampling: dict[str, Any] = {}
    processor_kwargs: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in options.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"Option {item!r} of {spec!r} must be written key=value.")
        target = sampling if key in _SAMPLING_KEYS else processor_kwargs
        target[key.strip()] = _parse_value(value.strip())
    if kind == "greedy" and sampling:
        raise ValueError(f"`greedy` takes no sampling options, got {spec!r}.")
    try:
        return DecodingMethod(
            kind=kind,
            temperature=float(sampling.get("t", 1.0)),
            top_p=float(sampling.get("top_p", 1.0)),
            top_k=int(sampling.get("top_k", 0)),
            processor_kwargs=processor_kwargs,
            label=spec.strip(),
        )
    except TypeError as error:  # an unknown processor keyword
        raise ValueError(f"Bad option in decoding method {spec!r}: {error}") from error
