"""Weight sync for vLLM engines on hosts without CUDA: through vLLM's in-place reload and a folder.

trl syncs a trainer's weights into vLLM with tensor-by-tensor ``load_weights`` (colocate) or over vLLM's
NCCL / CUDA-IPC weight-transfer engines (server). Neither works on vLLM's CPU platform: its linear
layers repack their weights into oneDNN / SGL kernels after loading (``load_weights`` then fails with
``'Parameter' object has no attribute 'weight_loader'``), and both transfer engines need CUDA. What
works is vLLM's in-place reload (``reload_weights``: restore the checkpoint layout, load, repack),
followed by a repack of the embedding-method layers, because a tied LM head shares the embedding's
``Parameter``, which the reload visits once (without the repack the head's packed GEMM weights stay
stale and the engine keeps sampling from the old head).

- Colocated engine: :func:`reload_in_place` streams the weights from the trainer's iterator.
- Server (``vllm serve`` in another process on the same host or a shared file system): the trainer
  writes the weights to a safetensors folder (:func:`write_weights`) and asks the server's workers to
  reload from it through ``POST /collective_rpc`` (vLLM's development endpoints,
  ``VLLM_SERVER_DEV_MODE=1``), which calls :class:`FolderWeightSync`, a worker extension the server
  loads with ``--worker-extension-cls em_hf.generation.vllm.weight_sync.FolderWeightSync``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "READY_METHOD",
    "RELOAD_METHOD",
    "WORKER_EXTENSION",
    "FolderWeightSync",
    "reload_in_place",
    "repack_embeddings",
    "write_weights",
]

WORKER_EXTENSION = "em_hf.generation.vllm.weight_sync.FolderWeightSync"
RELOAD_METHOD = "em_hf_reload_weights"
READY_METHOD = "em_hf_weight_sync_ready"
WEIGHTS_FILE = "model.safetensors"


def repack_embeddings(model: torch.nn.Module) -> None:
    """Re-run ``process_weights_after_loading`` of every unquantized embedding-method layer (the input
    embedding and a tied LM head), whose packed CPU GEMM weights an in-place reload leaves stale."""
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

    for module in model.modules():
        if isinstance(getattr(module, "quant_method", None), UnquantizedEmbeddingMethod):
            module.quant_method.process_weights_after_loading(module)


def reload_in_place(model_runner: Any, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Load ``weights`` (checkpoint names and layout, as ``model.named_parameters()`` of the
    ``transformers`` model gives them) into a colocated engine's model runner."""
    model_runner.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
    repack_embeddings(model_runner.get_model())


def write_weights(weights: Iterable[tuple[str, torch.Tensor]], folder: str | os.PathLike) -> Path:
    """Write ``weights`` to ``folder/model.safetensors`` (atomically: a reader never sees half a file);
    returns the folder. Tensors are detached, moved to the CPU and made contiguous."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.detach().to("cpu").contiguous() for name, tensor in weights}
    if not tensors:
        raise ValueError("`weights` is empty: there is nothing to send to the vLLM server.")
    partial = folder / f".{WEIGHTS_FILE}.{os.getpid()}.partial"
    save_file(tensors, str(partial))
    os.replace(partial, folder / WEIGHTS_FILE)
    return folder


class FolderWeightSync:
    """vLLM worker extension that reloads the model's weights from a folder the trainer wrote.

    Start the server with it (and vLLM's development endpoints, which expose ``/collective_rpc``)::

        VLLM_SERVER_DEV_MODE=1 python -m vllm.entrypoints.openai.api_server --model <path> \\
            --worker-extension-cls em_hf.generation.vllm.weight_sync.FolderWeightSync

    vLLM mixes this class into its worker class, so ``self`` is the worker.

    Parameters:
        (none: vLLM constructs the worker.)

    Examples:
        >>> from em_hf.generation.vllm.weight_sync import FolderWeightSync, RELOAD_METHOD
        >>> hasattr(FolderWeightSync, RELOAD_METHOD)
        True
    """

    def em_hf_weight_sync_ready(self) -> str:
        """Answers ``"ok"``: lets a trainer check that the server loaded this extension."""
        return "ok"

    def em_hf_reload_weights(self, weights_path: str) -> None:
        """Reload every weight from ``weights_path`` (a folder with safetensors in checkpoint layout)."""
        self.model_runner.reload_weights(weights_path=weights_path, is_checkpoint_format=True)
        repack_embeddings(self.model_runner.get_model())
