"""Build-on-first-use loading of the compiled entropy kernels (``em_hf/ops/csrc``).

The C++ sources are compiled with ``torch.utils.cpp_extension.load`` the first time a kernel is
needed (about a minute on 2 cores) and cached by torch in ``$TORCH_EXTENSIONS_DIR`` (default
``~/.cache/torch_extensions``); later imports load the cached library in well under a second.
Build ahead of time with ``em-hf build-ops``.

The environment variable ``EM_HF_ENTROPY_BACKEND`` chooses the implementation:
``auto`` (default: the compiled kernels when they build, else the chunked PyTorch path with one
warning), ``torch`` (never compile), or ``cpp`` (the kernels or an error).
"""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path

import torch

__all__ = ["BACKEND_ENV", "backend", "build", "kernels_available"]

BACKEND_ENV = "EM_HF_ENTROPY_BACKEND"
_CHOICES = ("auto", "torch", "cpp")
_CSRC = Path(__file__).parent / "csrc"
_CPU_SOURCES = ("entropy_cpu.cpp", "em_inf_cpu.cpp")
_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

_lock = threading.Lock()
_state: dict[str, object] = {"loaded": False, "error": None, "warned": False}


def _requested() -> str:
    value = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if value not in _CHOICES:
        raise ValueError(f"{BACKEND_ENV}={value!r} is not one of {', '.join(_CHOICES)}.")
    return value


def build(verbose: bool = False) -> None:
    """Compile (or load from torch's extension cache) the CPU kernels; raises on failure."""
    with _lock:
        if _state["loaded"]:
            return
        from torch.utils import cpp_extension  # imported here: it is slow and only needed to build

        cpp_extension.load(
            name="em_hf_entropy_cpu",
            sources=[str(_CSRC / name) for name in _CPU_SOURCES],
            extra_cflags=["-O3", "-march=native", "-ffp-contract=fast", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            is_python_module=False,
            verbose=verbose,
        )
        _state["loaded"] = True


def kernels_available() -> bool:
    """True when the compiled kernels are (or can now be) loaded, following ``EM_HF_ENTROPY_BACKEND``."""
    requested = _requested()
    if requested == "torch":
        return False
    if _state["loaded"]:
        return True
    if _state["error"] is None:
        try:
            build()
        except Exception as error:  # no compiler, missing headers, ...
            _state["error"] = error
    if _state["error"] is not None:
        if requested == "cpp":
            raise RuntimeError(
                f"{BACKEND_ENV}=cpp but the em_hf kernels failed to build: {_state['error']}"
            ) from _state["error"]
        if not _state["warned"]:
            _state["warned"] = True
            warnings.warn(
                f"em_hf: the compiled entropy kernels are unavailable ({type(_state['error']).__name__}: "
                f"{_state['error']}); using the chunked PyTorch implementation. Set {BACKEND_ENV}=torch to "
                "silence this warning.",
                RuntimeWarning,
                stacklevel=3,
            )
        return False
    return True


def use_kernels(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` (2-D logits) goes to the compiled kernels: a CPU float32/bf16/fp16 tensor
    while the kernels are available."""
    return tensor.device.type == "cpu" and tensor.dtype in _KERNEL_DTYPES and kernels_available()


def backend(device: str | torch.device = "cpu") -> str:
    """The implementation that ``em_hf.ops`` uses on ``device``: ``"cpp"`` (compiled CPU kernels)
    or ``"torch"`` (chunked PyTorch). CUDA tensors use ``"torch"`` until the CUDA kernels are
    built for this installation."""
    if torch.device(device).type == "cpu" and kernels_available():
        return "cpp"
    return "torch"
