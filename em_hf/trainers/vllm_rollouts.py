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
2. Weight sync without CUDA (:mod:`em_hf.generation.vllm.weight_sync` says why trl's cannot run
   there). Colocated engine on vLLM's CPU platform: the weights are streamed through vLLM's in-place
   reload and the embedding layers repacked. Server mode from a trainer without CUDA (trl's
   ``VLLMClient.init_communicator`` refuses: "Weight synchronization runs on vLLM's NCCL
   weight-transfer engine, which needs a CUDA device"): the weights are written to
   ``weight_sync_dir`` (``EntropyMinConfig.vllm_weight_sync_dir``, a folder the server can read) and
   the server reloads them through ``POST /collective_rpc`` into its ``FolderWeightSync`` worker
   extension (start it with ``VLLM_SERVER_DEV_MODE=1`` and ``--worker-extension-cls
   em_hf.generation.vllm.weight_sync.FolderWeightSync``). With CUDA, trl's own sync runs unchanged.
"""

from __future__ import annotations

import functools
import tempfile
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

        def __init__(
            self,
            *args: Any,
            engine_kwargs: dict[str, Any] | None = None,
            weight_sync_dir: str | None = None,
            **kwargs: Any,
        ) -> None:
            self.engine_kwargs = dict(engine_kwargs or {})
            self.weight_sync_dir = weight_sync_dir or tempfile.mkdtemp(prefix="em_hf_vllm_weights_")
            super().__init__(*args, **kwargs)

        def _init_vllm(self) -> None:
            check_vllm_available()
            check_vllm_mode(self.mode)
            if self.mode == "server":
                import requests  # trl's VLLMClient raises requests' ConnectionError (not the builtin one)

                try:
                    if self._server_sync_through_folder():
                        return self._connect_folder_sync()
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

        def _server_sync_through_folder(self) -> bool:
            """Server mode from a trainer without CUDA: vLLM's weight-transfer engines need CUDA, so the
            weights go through a folder and the server's :class:`FolderWeightSync` extension."""
            return self.accelerator.device.type != "cuda"

        def _connect_folder_sync(self) -> None:
            from trl.generation.vllm_client import VLLMClient

            from em_hf.generation.vllm.weight_sync import READY_METHOD, WORKER_EXTENSION

            if not self.accelerator.is_main_process:
                return
            base_url = self.server_base_url or f"http://{self.server_host}:{self.server_port}"
            self.vllm_client = VLLMClient(
                base_url=base_url, group_port=self.group_port, connection_timeout=self.server_timeout
            )
            response = self.vllm_client.session.post(
                f"{self.vllm_client.base_url}/collective_rpc", json={"method": READY_METHOD}
            )
            if response.status_code != 200 or "ok" not in response.text:
                raise RuntimeError(
                    f"The vLLM server at {base_url} cannot take weights from a trainer without CUDA "
                    f"(POST /collective_rpc answered {response.status_code}: {response.text[:200]!r}). "
                    "Start it with `VLLM_SERVER_DEV_MODE=1` and "
                    f"`--worker-extension-cls {WORKER_EXTENSION}`; it reloads the weights the trainer "
                    "writes to `vllm_weight_sync_dir` (a folder both can read)."
                )

        def sync_weights(self) -> None:
            from vllm.platforms import current_platform

            from em_hf.generation.vllm.weight_sync import RELOAD_METHOD, reload_in_place, write_weights

            if self.mode == "server" and self._server_sync_through_folder():
                weights = self._iter_named_params()
                if not self.accelerator.is_main_process:
                    for _ in weights:  # take part in the gather collectives
                        pass
                    return
                folder = write_weights(weights, self.weight_sync_dir)
                client = self.vllm_client
                response = client.session.post(
                    f"{client.base_url}/collective_rpc",
                    json={"method": RELOAD_METHOD, "kwargs": {"weights_path": str(folder)}},
                )
                if response.status_code != 200:
                    raise RuntimeError(
                        f"The vLLM server did not reload the weights from {folder} "
                        f"({response.status_code}: {response.text[:500]}); it must be able to read that "
                        "folder."
                    )
                client.reset_prefix_cache()
                return
            if not (self.mode == "colocate" and current_platform.is_cpu()):
                return super().sync_weights()
            reload_in_place(
                self.llm.llm_engine.model_executor.driver_worker.model_runner, self._iter_named_params()
            )
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
