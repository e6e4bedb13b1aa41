"""Decoding methods as data: generate() settings, the logits processors a method adds, and how many
trajectories it draws and how it combines them.

A method is written on the command line as ``NAME[:key=value,...]``, e.g. ``greedy``, ``sample``,
``sample:t=0.1``, ``adaptive:alpha=0.5``, ``em-inf:t=0.1,n_steps=5``, ``sc:n=4`` (or ``sc:4``),
``em-inf-sc:4,t=0.5``, ``refine:n=3``. ``t`` is the sampling temperature (generate's temperature
warper, applied AFTER the method's processors), ``top_p`` and ``top_k`` the usual filters (default:
none, i.e. plain sampling); ``n`` the number of trajectories (self-consistency) or rounds (iterative
refinement); every other key goes to the method's processor
(:class:`~em_hf.EntropyMinLogitsProcessor` for ``em-inf``, :class:`~em_hf.AdaptiveTemperatureLogitsWarper`
for ``adaptive``).

Names: a BASE decoding (``greedy``, ``sample``, ``adaptive``, ``em-inf``), optionally followed by a
STRATEGY suffix (Unreasonable Effectiveness of EM, sec. 4 and appendix C.1):

- ``-sc``: self-consistency, ``n`` sampled trajectories per prompt (default 4), majority vote over their
  extracted final answers. ``sc`` alone means ``sample-sc``; ``greedy-sc`` is rejected (n identical
  trajectories).
- ``-refine``: iterative refinement, ``n`` rounds (default 3): each round after the first sees its
  previous answer and an instruction to check and improve it. ``refine`` alone means ``sample-refine``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from transformers import LogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from em_hf.generation import AdaptiveTemperatureLogitsWarper, EntropyMinLogitsProcessor
from em_hf.utils.validation import check_number

__all__ = ["KINDS", "DecodingMethod", "parse_method"]

_PROCESSORS: dict[str, Callable[..., LogitsProcessor] | None] = {
    "greedy": None,
    "sample": None,
    "adaptive": AdaptiveTemperatureLogitsWarper,
    "em-inf": EntropyMinLogitsProcessor,
}
_SAMPLING_KEYS = {"t", "top_p", "top_k"}
STRATEGIES = {"single": 1, "sc": 4, "refine": 3}  # strategy -> default n
KINDS = (
    *_PROCESSORS,
    "sc",
    *(f"{base}-sc" for base in _PROCESSORS if base != "greedy"),
    "refine",
    *(f"{base}-refine" for base in _PROCESSORS),
)


def _split_kind(kind: str) -> tuple[str, str]:
    """``"em-inf-sc"`` -> (``"em-inf"``, ``"sc"``); ``"sc"`` -> (``"sample"``, ``"sc"``)."""
    for strategy in ("sc", "refine"):
        if kind == strategy:
            return "sample", strategy
        if kind.endswith(f"-{strategy}"):
            return kind[: -len(strategy) - 1], strategy
    return kind, "single"


@dataclass(frozen=True)
class DecodingMethod:
    """One decoding method: ``kind``, sampling settings, the keyword arguments of the method's logits
    processor, and ``n``. Usually built from its command-line form by :func:`parse_method`.

    Parameters:
        kind (`str`):
            One of :data:`KINDS`: a base decoding (``greedy``, ``sample``, ``adaptive``, ``em-inf``),
            optionally with a ``-sc`` or ``-refine`` strategy suffix (module docstring).
        temperature (`float`, *optional*, defaults to `1.0`):
            Sampling temperature (``t``), applied by ``generate`` after the method's processors.
        top_p (`float`, *optional*, defaults to `1.0`):
            Nucleus sampling mass; 1.0 disables it.
        top_k (`int`, *optional*, defaults to `0`):
            Top-k filter; 0 disables it.
        processor_kwargs (`dict[str, Any]`, *optional*, defaults to `{}`):
            Keyword arguments of the method's processor (:class:`~em_hf.EntropyMinLogitsProcessor` for
            ``em-inf``, :class:`~em_hf.AdaptiveTemperatureLogitsWarper` for ``adaptive``); checked here.
        label (`str`, *optional*, defaults to `""`):
            The display name (:attr:`name`); :func:`parse_method` sets the spec it parsed.
        n (`int`, *optional*, defaults to `0`):
            Trajectories for ``-sc``, rounds for ``-refine``; 0 means the strategy's default (4 and 3),
            single-trajectory methods take 0 or 1.

    Examples:
        >>> from em_hf.generation.decoding import DecodingMethod
        >>> method = DecodingMethod("adaptive-sc", temperature=0.5, processor_kwargs={"alpha": 0.5})
        >>> method.base, method.strategy, method.num_trajectories
        ('adaptive', 'sc', 4)
        >>> method.logits_processors()
        [AdaptiveTemperatureLogitsWarper(alpha=0.5, ...)]
    """

    kind: str
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    processor_kwargs: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    n: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            if self.kind == "greedy-sc":
                raise ValueError(
                    "Self-consistency with greedy decoding draws n identical trajectories; use `sc` "
                    "(sampling), `em-inf-sc` or `adaptive-sc`."
                )
            raise ValueError(f"Unknown decoding method {self.kind!r}; choose from {sorted(KINDS)}.")
        if self.base == "greedy" and self.processor_kwargs:
            raise ValueError(f"`{self.kind}` takes no options.")
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 0:
            raise ValueError(f"`n` must be an integer >= 1, got {self.n!r}.")
        if self.strategy == "single" and self.n > 1:
            raise ValueError(
                f"`n` applies to self-consistency (`{self.kind}-sc`) and refinement (`{self.kind}-refine`), "
                f"not to `{self.kind}`."
            )
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
    def base(self) -> str:
        """The per-step decoding: ``greedy``, ``sample``, ``adaptive`` or ``em-inf``."""
        return _split_kind(self.kind)[0]

    @property
    def strategy(self) -> str:
        """``single``, ``sc`` (self-consistency) or ``refine`` (iterative refinement)."""
        return _split_kind(self.kind)[1]

    @property
    def num_trajectories(self) -> int:
        """Trajectories (``-sc``) or rounds (``-refine``) per item: ``n``, or the strategy's default."""
        return self.n or STRATEGIES[self.strategy]

    @property
    def do_sample(self) -> bool:
        return self.base != "greedy"

    def logits_processors(self) -> list[LogitsProcessor]:
        """Fresh processor instances for one ``generate`` call."""
        factory = _PROCESSORS[self.base]
        return [] if factory is None else [factory(**self.processor_kwargs)]

    def sampling_warpers(self) -> list[LogitsProcessor]:
        """The warpers ``generate`` would add for :meth:`generation_kwargs` (temperature, top-k, top-p, in
        its order), for a caller that samples by itself
        (:class:`~em_hf.generation.sampling.SeededRowSampler`); none for greedy methods."""
        if not self.do_sample:
            return []
        warpers: list[LogitsProcessor] = []
        if self.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(self.temperature))
        if self.top_k:
            warpers.append(TopKLogitsWarper(top_k=self.top_k))
        if self.top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p=self.top_p))
        return warpers

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
    """Parse ``NAME[:key=value,...]`` (see the module docstring) into a :class:`DecodingMethod`.

    For ``-sc``/``-refine`` methods the first option may be a bare integer, read as ``n``
    (``sc:4`` = ``sc:n=4``).

    Parameters:
        spec (`str`):
            The method, e.g. ``"greedy"``, ``"sample:t=0.1"``, ``"em-inf-sc:4,t=0.5,n_steps=5"``. Keys
            ``t``, ``top_p``, ``top_k`` and ``n`` are the method's; every other key goes to its processor.

    Returns:
        `DecodingMethod`; ``ValueError`` for an unknown name or option.

    Examples:
        >>> from em_hf.generation.decoding import parse_method
        >>> method = parse_method("em-inf-sc:4,t=0.5,n_steps=5")
        >>> method.base, method.strategy, method.num_trajectories
        ('em-inf', 'sc', 4)
        >>> method.generation_kwargs()
        {'do_sample': True, 'temperature': 0.5, 'top_p': 1.0, 'top_k': 0}
        >>> method.logits_processors()
        [EntropyMinLogitsProcessor(threshold=0.3, n_steps=5, lr=0.1, kl_weight=0.001, optimizer='adam')]
        >>> parse_method("greedy").generation_kwargs()
        {'do_sample': False}
    """
    kind, _, options = spec.strip().partition(":")
    kind = kind.strip().lower().replace("_", "-")
    if kind not in KINDS and kind != "greedy-sc":
        raise ValueError(f"Unknown decoding method {kind!r} in {spec!r}; choose from {sorted(KINDS)}.")
    strategy = _split_kind(kind)[1]
    sampling: dict[str, Any] = {}
    processor_kwargs: dict[str, Any] = {}
    n = 0
    for position, item in enumerate(filter(None, (part.strip() for part in options.split(",")))):
        key, sep, value = item.partition("=")
        if not sep and position == 0 and strategy != "single" and item.isdigit():
            key, value = "n", item
        elif not sep:
            raise ValueError(f"Option {item!r} of {spec!r} must be written key=value.")
        key, value = key.strip(), value.strip()
        if key == "n":
            if strategy == "single":
                raise ValueError(
                    f"`n` in {spec!r}: only self-consistency (`{kind}-sc`) and refinement (`{kind}-refine`) "
                    "take a number of trajectories."
                )
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"`n` in {spec!r} must be an integer >= 1, got {value!r}.")
            n = int(value)
            continue
        target = sampling if key in _SAMPLING_KEYS else processor_kwargs
        target[key] = _parse_value(value)
    if _split_kind(kind)[0] == "greedy" and sampling:
        raise ValueError(f"`{kind}` takes no sampling options, got {spec!r}.")
    try:
        return DecodingMethod(
            kind=kind,
            temperature=float(sampling.get("t", 1.0)),
            top_p=float(sampling.get("top_p", 1.0)),
            top_k=int(sampling.get("top_k", 0)),
            processor_kwargs=processor_kwargs,
            label=spec.strip(),
            n=n,
        )
    except TypeError as error:  # an unknown processor keyword
        raise ValueError(f"Bad option in decoding method {spec!r}: {error}") from error
