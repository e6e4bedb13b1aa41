"""Build-on-first-use loading of the compiled entropy kernels (``em_hf/ops/csrc``).

The C++ sources are compiled with ``torch.utils.cpp_extension.load`` the first time a kernel is
needed (about a minute on 2 cores) and cached by torch in ``$TORCH_EXTENSIONS_DIR`` (default
``~/.cache/torch_extensions``); later imports load the cached library in well under a second.
Build ahead of time with ``em-hf build-ops``.

The environment variable ``EM_HF_ENTROPY_BACKEND`` chooses the implementation:
``auto`` (default: the compiled kernels when they build, else the chunked PyTorch path with one
warning), ``torch`` (never compile), or ``cpp`` (the kernels or an error). The CPU kernels are
always built; the CUDA kernels too where torch is a CUDA build and the CUDA toolkit is found.
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
# Built only where torch is a CUDA build and the CUDA toolkit is found (see _with_cuda).
_CUDA_SOURCES = ("entropy_cuda.cpp", "entropy_cuda_kernels.cu")
_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

_lock = threading.Lock()
_state: dict[str, object] = {"loaded": False, "error": None, "warned": False, "cuda": False}


def _with_cuda() -> bool:
    from torch.utils import cpp_extension

    # CUDA_HOME is None when no toolkit is found; torch.version.cuda is None for a CPU build of torch.
    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None


def _requested() -> str:
    value = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if value not in _CHOICES:
        raise ValueError(f"{BACKEND_ENV}={value!r} is not one of {', '.join(_CHOICES)}.")
    return value


def build(verbose: bool = False) -> None:
    """Compile (or load from torch's extension cache) the kernels; raises on failure. The CUDA
    kernels are included when torch is a CUDA build and the CUDA toolkit is installed (their
    architectures follow ``TORCH_CUDA_ARCH_LIST``, else the visible GPU)."""
    with _lock:
        if _state["loaded"]:
            return
        from torch.utils import cpp_extension  # imported here: it is slow and only needed to build

        with_cuda = _with_cuda()
        names = _CPU_SOURCES + (_CUDA_SOURCES if with_cuda else ())
        cpp_extension.load(
            name="em_hf_entropy_cuda" if with_cuda else "em_hf_entropy_cpu",  # separate cache entries
            sources=[str(_CSRC / name) for name in names],
            extra_cflags=["-O3", "-march=native", "-ffp-contract=fast", "-fopenmp"],
            extra_cuda_cflags=["-O3", "-std=c++17"],
            extra_ldflags=["-fopenmp"],
            with_cuda=with_cuda,
            is_python_module=False,
            verbose=verbose,
        )
        from em_hf.ops._registration import register_python_parts

        register_python_parts()
        _state["cuda"] = with_cuda
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
    """Whether ``tensor`` (logits) goes to the compiled kernels: a float32/bf16/fp16 tensor on the
    CPU, or on a CUDA device when the CUDA kernels were built, while the kernels are available."""
    if tensor.dtype not in _KERNEL_DTYPES or tensor.device.type not in ("cpu", "cuda"):
        return False
    if not kernels_available():
        return False
    return tensor.device.type == "cpu" or bool(_state["cuda"])


def backend(device: str | torch.device = "cpu") -> str:
    """The implementation that ``em_hf.ops`` uses on ``device``: ``"cpp"`` (compiled CPU kernels),
    ``"cuda"`` (compiled CUDA kernels) or ``"torch"`` (chunked PyTorch)."""
    kind = torch.device(device).type
    if kind == "cpu" and kernels_available():
        return "cpp"
    if kind == "cuda" and kernels_available() and _state["cuda"]:
        return "cuda"
    return "torch"
