r"""Rollouts from vLLM for the trainers: trl's ``VLLMGeneration`` with the two changes a CPU vLLM needs.

Reused from trl 1.16 (``trl.generation.vllm_generation.VLLMGeneration``, the class behind GRPO's and
RLOO's ``use_vllm=True``): engine start-up in both modes (colocate: ``vllm.LLM`` in the training process
with ``distributed_executor_backend="external_launcher"``; server: ``trl.generation.vllm_client.VLLMClient``
against ``trl vllm-serve`` / ``vllm serve``), the gathering and splitting of prompts across processes,
the ``SamplingParams`` built from temperature / top_p / top_k / repetition_penalty / max tokens, and the
weight iteration for sync (DeepSpeed ZeRO-3 gathering, FSDP, PEFT adapters merged then unmerged).

Changed here (:class:`VLLMRollouts`, a subclass):

1. ``engine_kwargs``: extra ``vllm.LLM`` arguments in colocate mode (trl passes a fixed set; a CPU
   engine wants ``dtype="float32"``, ``enforce_eager=True``). They are added to trl's ``LLM(...)``
   call; on a clash they win.
2. Weight sync on vLLM's CPU platform. trl loads each tensor with
   ``model_runner.model.load_weights([(name, param)])``; vLLM's CPU linear layers repack their weights
   into oneDNN / SGL kernels after loading and replace ``weight`` by an empty ``Parameter`` without a
   ``weight_loader``, so trl's sync stops with
   ``AttributeError: 'Parameter' object has no attribute 'weight_loader'``
   (vllm/model_executor/layers/linear.py, ``load_weights``). On CPU the weights are streamed through
   vLLM's in-place reload instead (``model_runner.reload_weights(weights_iterator=...,
   is_checkpoint_format=True)``: it restores the checkpoint layout, loads, and repacks), and the
   embedding-method layers are repacked after it (a tied LM head shares the embedding's ``Parameter``, which
   the reload visits once, so its packed GEMM weights would otherwise stay stale). On other platforms
   trl's own ``sync_weights`` runs unchanged.
"""

from __future__ import annotations

import functools
from typing import Any

from em_hf.generation.vllm._requirements import VLLM_INSTALL_HINT

__all__ = [
    "VLLM_MODES",
    "check_vllm_available",
    "check_vllm_mode",
    "make_vllm_rollouts",
]

VLLM_MODES = ("colocate", "server")


def check_vllm_available() -> None:
    """Raise ``ImportError`` (with how to install it) when vLLM cannot be imported."""
    from trl.import_utils import is_vllm_available

    if not is_vllm_available():
        raise ImportError(
            f"`use_vllm=True` needs vLLM. {VLLM_INSTALL_HINT} Or set `use_vllm=False` to generate with "
            "transformers."
        )


def check_vllm_mode(mode: str) -> None:
    if mode not in VLLM_MODES:
        raise ValueError(
            f"`vllm_mode` must be one of {VLLM_MODES}, got {mode!r}: 'colocate' runs a vLLM engine in the "
            "training process, 'server' sends the prompts to a `trl vllm-serve` / `vllm serve` server."
        )


@functools.cache
def _rollouts_class() -> type:
    from trl.generation import vllm_generation as trl_vllm

    class VLLMRollouts(trl_vllm.VLLMGeneration):
        """trl's ``VLLMGeneration`` plus ``engine_kwargs`` and a CPU weight sync (see the module doc)."""

        def __init__(self, *args: Any, engine_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> None:
            self.engine_kwargs = dict(engine_kwargs or {})
            super().__init__(*args, **kwargs)

        def _init_vllm(self) -> None:
            check_vllm_available()
            check_vllm_mode(self.mode)
            if self.mode == "server":
                import requests  # trl's VLLMClient raises requests' ConnectionError (not the builtin one)

                try:
                    return super()._init_vllm()
                except (ConnectionError, requests.exceptions.ConnectionError) as error:
                    raise ConnectionError(
                        f"{error} (vllm_mode='server': start it with `trl vllm-serve --model <path>` or "
                        "`vllm serve <path>`, and point `vllm_server_base_url` or `vllm_server_host`/"
                        "`vllm_server_port` at it; `vllm_server_timeout` is how long to wait.)"
                    ) from error
            if not self.engine_kwargs:
                return super()._init_vllm()
            trl_llm = trl_vllm.LLM
            extra = self.engine_kwargs

            def llm_with_engine_kwargs(*args: Any, **kwargs: Any):
                return trl_llm(*args, **{**kwargs, **extra})

            trl_vllm.LLM = llm_with_engine_kwargs
            try:
                return super()._init_vllm()
            finally:
                trl_vllm.LLM = trl_llm

        def sync_weights(self) -> None:
            from vllm.platforms import current_platform

            if not (self.mode == "colocate" and current_platform.is_cpu()):
                return super().sync_weights()
            from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

            runner = self.llm.llm_engine.model_executor.driver_worker.model_runner
            runner.reload_weights(weights_iterator=self._iter_named_params(), is_checkpoint_format=True)
            # A tied LM head shares the embedding's Parameter, so the reload (which walks each Parameter
            # once) does not repack it: its CPU GEMM would keep the old weights. Repack those layers.
            for module in runner.get_model().modules():
                if isinstance(getattr(module, "quant_method", None), UnquantizedEmbeddingMethod):
                    module.quant_method.process_weights_after_loading(module)
            self.llm.reset_prefix_cache()

    return VLLMRollouts


def __getattr__(name: str) -> Any:
    if name == "VLLMRollouts":
        return _rollouts_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_vllm_rollouts(**kwargs: Any):
    """A :class:`VLLMRollouts` (checks that vLLM is installed first); arguments as trl's ``VLLMGeneration``
    plus ``engine_kwargs``."""
    check_vllm_available()
    return _rollouts_class()(**kwargs)
