"""EM-INF and adaptive temperature as batch-level vLLM logits processors.

"The Unreasonable Effectiveness of Entropy Minimization in LLM Reasoning", section 4 (EM-INF) and
Appendix B, Algorithm 1 (adaptive temperature). vLLM's V1 engine dropped per-request callable logits
processors; its custom processors are classes that see the whole batch of one decoding step. These
two keep, per batch row, the settings its request asked for and run the same functional forms as the
``transformers`` processors (:func:`em_hf.ops.em_inf`, :func:`em_hf.ops.adaptive_temperature`: the
fused CPU/CUDA kernels, rows independent) on the rows that asked, one call per distinct setting.

A request turns a processor on through its ``SamplingParams.extra_args``::

    SamplingParams(temperature=0.1, extra_args={"em_inf": {"n_steps": 3, "threshold": 0.3}})
    SamplingParams(extra_args={"adaptive_temperature": {"alpha": 0.5}})

The value is a mapping of (some of) the keyword arguments of the functional form (missing keys take
its defaults), ``True`` or ``{}`` for all defaults, or the mapping as a JSON string: the last form is
the one an OpenAI-compatible request to ``vllm serve`` can carry, since ``vllm_xargs`` values are
strings, numbers or lists (``"vllm_xargs": {"em_inf": "{\\"n_steps\\": 3}"}``). Requests without
the key are never touched, and a step without any such request does no work.

Supported vLLM interfaces (checked against vLLM 0.32):

* the V1 model runner's ``vllm.v1.sample.logits_processor.LogitsProcessor`` (constructor
  ``(vllm_config, device, is_pin_memory)``, ``update_state(BatchUpdate)`` with removed/added/moved
  rows, ``apply(logits)``, ``is_argmax_invariant``, ``validate_params``): the CPU build and any
  engine with ``VLLM_USE_V2_MODEL_RUNNER=0``. ``is_argmax_invariant()`` is ``False``, so vLLM applies
  the processors to the float32 raw logits, before penalties, temperature, min-p and top-k/top-p,
  for greedy requests too (the order of the paper and of ``generate``);
* the V2 model runner's ``vllm.v1.worker.gpu.sample.logits_processor.LogitsProcessor`` (constructor
  ``(vllm_config, req_states)``, ``add_request(slot, sampling_params)``, ``apply(logits, ctx)``),
  the default on GPUs with Triton, which also applies custom processors before temperature. vLLM
  loads entry-point plugins for whichever runner is active, so one class serves both.

Invalid settings are refused at request admission by ``validate_params`` with the messages of
:mod:`em_hf.utils.validation` (vLLM turns them into a ``VLLMValidationError``, HTTP 400 when
serving).
"""

from __future__ import annotations

import inspect
import json
import weakref
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch

from em_hf.generation.vllm._requirements import import_vllm
from em_hf.ops import adaptive_temperature, em_inf
from em_hf.ops.logit_optimization import (
    ADAPTIVE_TEMPERATURE_PARAMETERS,
    EM_INF_PARAMETERS,
    document_parameters,
)
from em_hf.utils.validation import check_adaptive_temperature_arguments, check_em_inf_arguments

import_vllm()  # a clear ImportError without vLLM, before the imports below

from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality  # noqa: E402
from vllm.v1.sample.logits_processor import LogitsProcessor as V1LogitsProcessor  # noqa: E402
from vllm.v1.worker.gpu.sample.logits_processor.interface import (  # noqa: E402
    LogitsProcessor as V2LogitsProcessor,
)

__all__ = ["AdaptiveTemperatureVLLMProcessor", "EntropyMinVLLMProcessor"]

Settings = tuple[tuple[str, Any], ...]

# (class, id(vllm_config)) -> the first instance an engine built. vLLM builds the entry-point plugins
# AND the classes passed in `logits_processors=[...]`, so with em_hf installed a class passed
# explicitly is built twice for the same engine: the second instance stays inert.
_ENGINE_INSTANCES: dict[tuple[type, int], weakref.ref] = {}


def _keyword_defaults(function: Callable) -> dict[str, Any]:
    return {
        name: parameter.default
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY and name != "return_tau"
    }


class _RowSettingsProcessor(V1LogitsProcessor, V2LogitsProcessor):
    """Shared machinery: per-row settings from ``extra_args``, grouped calls of one functional form."""

    extra_args_key: ClassVar[str]
    _function: ClassVar[Callable[..., torch.Tensor]]
    _check: ClassVar[Callable[..., tuple]]
    _defaults: ClassVar[dict[str, Any]]

    def __init__(self, vllm_config: Any = None, *runner_args: Any) -> None:
        # V1: (vllm_config, device, is_pin_memory); V2: (vllm_config, req_states). Nothing is needed
        # from either: the functional forms work on the logits' own device.
        self._rows: dict[int, Settings] = {}
        self._groups: list[tuple[dict[str, Any], list[int]]] | None = None
        self._vllm_config = vllm_config
        self._inert = False
        if vllm_config is not None:
            key = (type(self), id(vllm_config))
            first = _ENGINE_INSTANCES.get(key)
            first = first() if first is not None else None
            if first is not None and first._vllm_config is vllm_config:
                self._inert = True
            else:
                _ENGINE_INSTANCES[key] = weakref.ref(self)

    # --- requests -------------------------------------------------------------------------------
    @classmethod
    def request_settings(cls, sampling_params: Any) -> dict[str, Any] | None:
        """The checked settings a request asked for (all keyword arguments of the functional form),
        or ``None`` when its ``extra_args`` do not turn this processor on.

        Raises:
            `ValueError`: for a malformed value, an unknown key or an invalid setting.
        """
        extra_args = getattr(sampling_params, "extra_args", None) or {}
        value = extra_args.get(cls.extra_args_key) if isinstance(extra_args, Mapping) else None
        key = cls.extra_args_key
        if value is None or value is False or (type(value) in (int, float) and value == 0):
            return None
        if value is True or (type(value) in (int, float) and value == 1):
            value = {}
        elif isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"extra_args[{key!r}] must be a JSON object of settings, got {value!r} ({error})."
                ) from None
        if not isinstance(value, Mapping):
            raise ValueError(
                f"extra_args[{key!r}] must be a mapping of settings (or true, or a JSON object string), "
                f"got {value!r}."
            )
        unknown = sorted(set(value) - set(cls._defaults))
        if unknown:
            raise ValueError(
                f"extra_args[{key!r}] has unknown setting(s) {unknown}; the settings are "
                f"{sorted(cls._defaults)}."
            )
        settings = {**cls._defaults, **value}
        checked = cls._check(*(settings[name] for name in cls._defaults))
        return dict(zip(cls._defaults, checked, strict=True))

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        """vLLM's admission hook: raises ``ValueError`` for invalid settings, before the request runs."""
        cls.request_settings(sampling_params)

    def _settings_key(self, sampling_params: Any) -> Settings | None:
        settings = type(self).request_settings(sampling_params)
        return None if settings is None else tuple(settings.items())

    def is_argmax_invariant(self) -> bool:
        """``False``: EM-INF must see the raw logits, before temperature and top-k/top-p (and
        vLLM only applies processors declared argmax-invariant after the temperature)."""
        return False

    # --- V1 model runner: rows are persistent-batch indices ---------------------------------------
    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if not batch_update or self._inert:
            return
        rows = self._rows
        # vLLM's order: removed, added, moved; an added or moved row may replace an existing one.
        for index in batch_update.removed:
            rows.pop(index, None)
        for index, params, _prompt_ids, _output_ids in batch_update.added:
            settings = self._settings_key(params)
            if settings is None:
                rows.pop(index, None)
            else:
                rows[index] = settings
        for source, target, direction in batch_update.moved:
            moving, replaced = rows.pop(source, None), rows.pop(target, None)
            if moving is not None:
                rows[target] = moving
            if replaced is not None and direction == MoveDirectionality.SWAP:
                rows[source] = replaced
        self._groups = None

    # --- V2 model runner: rows map to request slots through ctx -------------------------------------
    def add_request(self, req_idx: int, sampling_params: Any) -> bool:
        if self._inert:
            return False
        settings = self._settings_key(sampling_params)
        if settings is None:
            self._rows.pop(req_idx, None)
        else:
            self._rows[req_idx] = settings
        return settings is not None

    # --- both ---------------------------------------------------------------------------------------
    def apply(self, logits: torch.Tensor, ctx: Any = None) -> torch.Tensor:
        """Replace the rows whose requests asked for this processor; other rows are not touched."""
        if not self._rows:
            return logits
        if ctx is None:
            if self._groups is None:
                self._groups = self._group(self._rows.items())
            groups = self._groups
        else:
            slots = set(ctx.idx_mapping_np.tolist())
            if slots.isdisjoint(self._rows):
                return logits
            row_slots = ctx.expanded_idx_mapping.tolist()
            active = ((row, self._rows[slot]) for row, slot in enumerate(row_slots) if slot in self._rows)
            groups = self._group(active)
        function = type(self)._function
        for settings, rows in groups:
            if len(rows) == logits.shape[0]:
                logits = function(logits, **settings)
            else:
                index = torch.tensor(rows, device=logits.device)
                logits[index] = function(logits[index], **settings)
        return logits

    @staticmethod
    def _group(rows) -> list[tuple[dict[str, Any], list[int]]]:
        groups: dict[Settings, list[int]] = {}
        for row, settings in rows:
            groups.setdefault(settings, []).append(row)
        return [(dict(settings), sorted(members)) for settings, members in groups.items()]

    def active_rows(self) -> dict[int, dict[str, Any]]:
        """The rows (V1: batch indices; V2: request slots) this processor acts on, with their settings."""
        return {row: dict(settings) for row, settings in sorted(self._rows.items())}


class EntropyMinVLLMProcessor(_RowSettingsProcessor):
    """EM-INF for vLLM: per request, a few gradient steps on the entropy of the next-token logits.

    "The Unreasonable Effectiveness of Entropy Minimization in LLM Reasoning", section 4. The batch
    version of :class:`em_hf.EntropyMinLogitsProcessor`: a request asks for it with
    ``SamplingParams(extra_args={"em_inf": settings})`` where ``settings`` holds any of the parameters
    below (missing ones take the defaults; ``True`` or ``{}`` for all defaults; a JSON object string
    also works, for ``vllm_xargs``). Its rows get :func:`em_hf.ops.em_inf` on vLLM's raw float32 logits,
    before temperature and top-p, so a row gives the same logits as ``generate`` with the transformers
    processor; rows of other requests are left bit for bit. Sample with a low temperature (0.1 in the
    paper); greedy decoding is unchanged. Pass the class itself (vLLM builds it in the engine):
    ``LLM(..., logits_processors=[EntropyMinVLLMProcessor])``; ``vllm serve`` loads it through this
    package's ``vllm.logits_processors`` entry point. Supported interfaces: the V1 and V2 model runners
    of vLLM 0.32 (see :mod:`em_hf.generation.vllm.processors`).

    Parameters:
        vllm_config (`vllm.config.VllmConfig`):
            The engine configuration (vLLM passes it; not used).
        *runner_args:
            `(device, is_pin_memory)` from the V1 model runner or `(req_states,)` from the V2 one
            (not used: the rows are processed on the logits' device).

    Per-request settings (``extra_args["em_inf"]``):
        {parameters}

    Examples:

    ```python
    >>> import torch
    >>> from vllm import SamplingParams
    >>> from vllm.v1.sample.logits_processor import BatchUpdate
    >>> from em_hf.generation.vllm import EntropyMinVLLMProcessor
    >>> processor = EntropyMinVLLMProcessor(None, torch.device("cpu"), False)
    >>> on, off = SamplingParams(extra_args={"em_inf": {"n_steps": 5}}), SamplingParams()
    >>> processor.update_state(BatchUpdate(batch_size=2, removed=[], moved=[],
    ...                                    added=[(0, off, [1], []), (1, on, [1], [])]))
    >>> processor.active_rows()
    {1: {'threshold': 0.3, 'n_steps': 5, 'lr': 0.1, 'kl_weight': 0.001, 'optimizer': 'adam'}}
    >>> logits = torch.tensor([[2.0, 1.0, 0.5, 0.0], [2.0, 1.0, 0.5, 0.0]])
    >>> out = processor.apply(logits.clone())
    >>> torch.equal(out[0], logits[0]), bool(out[1, 0] > logits[1, 0])
    (True, True)

    In an engine (the class, not an instance; vLLM spawns processes, so run this under
    ``if __name__ == "__main__":``):

    >>> from vllm import LLM  # doctest: +SKIP
    >>> llm = LLM(model="HuggingFaceTB/SmolLM2-135M-Instruct",  # doctest: +SKIP
    ...           logits_processors=[EntropyMinVLLMProcessor])
    >>> params = SamplingParams(temperature=0.1, max_tokens=64,  # doctest: +SKIP
    ...                         extra_args={"em_inf": {"threshold": 0.3, "n_steps": 3, "lr": 0.1}})
    >>> llm.generate(["What is 12 + 30?"], params)[0].outputs[0].text  # doctest: +SKIP

    ```
    """

    extra_args_key = "em_inf"
    _function = staticmethod(em_inf)
    _check = staticmethod(check_em_inf_arguments)
    _defaults = _keyword_defaults(em_inf)


class AdaptiveTemperatureVLLMProcessor(_RowSettingsProcessor):
    """Adaptive temperature for vLLM: per request, the logits divided by the tau that brings the
    entropy to a target (the EM-INF baseline).

    "The Unreasonable Effectiveness of Entropy Minimization in LLM Reasoning", Appendix B,
    Algorithm 1. The batch version of :class:`em_hf.AdaptiveTemperatureLogitsWarper`: a request asks
    for it with ``SamplingParams(extra_args={"adaptive_temperature": settings})`` (any of the
    parameters below; ``True`` or ``{}`` for the defaults; a JSON object string also works). Its rows
    get :func:`em_hf.ops.adaptive_temperature` on the raw logits, before vLLM's own temperature and
    top-p (dividing by tau > 0 never changes the argmax, but it must come before the sampling
    temperature, so the class declares itself not argmax-invariant); other rows are left bit for bit.
    ``LLM(..., logits_processors=[AdaptiveTemperatureVLLMProcessor])``, or ``vllm serve`` through the
    entry point. Supported interfaces: the V1 and V2 model runners of vLLM 0.32.

    Parameters:
        vllm_config (`vllm.config.VllmConfig`):
            The engine configuration (vLLM passes it; not used).
        *runner_args:
            `(device, is_pin_memory)` from the V1 model runner or `(req_states,)` from the V2 one.

    Per-request settings (``extra_args["adaptive_temperature"]``):
        {parameters}

    Examples:

    ```python
    One request with alpha 0.5 (settings may also be a JSON string, as ``vllm_xargs`` must send them):

    >>> import torch, vllm
    >>> from em_hf.generation.vllm import AdaptiveTemperatureVLLMProcessor as Processor
    >>> processor = Processor(None, torch.device("cpu"), False)
    >>> on = vllm.SamplingParams(extra_args={"adaptive_temperature": '{"alpha": 0.5, "tol": 0.01}'})
    >>> added = [(0, on, [1], [])]
    >>> processor.update_state(vllm.v1.sample.logits_processor.BatchUpdate(1, [], added, []))
    >>> processor.apply(torch.tensor([[1.0, 0.5, 0.0, -0.5]])).round(decimals=2)  # m + (z - m) / 0.312
    tensor([[ 1.0000, -0.6000, -2.2100, -3.8100]])
    >>> Processor.validate_params(vllm.SamplingParams(extra_args={"adaptive_temperature": {"alpha": 2}}))
    Traceback (most recent call last):
    ...
    ValueError: `alpha` must be a finite number in (0.0, 1.0], got 2.

    ```
    """

    extra_args_key = "adaptive_temperature"
    _function = staticmethod(adaptive_temperature)
    _check = staticmethod(check_adaptive_temperature_arguments)
    _defaults = _keyword_defaults(adaptive_temperature)


document_parameters(EntropyMinVLLMProcessor, EM_INF_PARAMETERS)
document_parameters(AdaptiveTemperatureVLLMProcessor, ADAPTIVE_TEMPERATURE_PARAMETERS)
