"""Build-on-first-use loading of the compiled entropy kernels (``em_hf/ops/csrc``).

The C++ sources are compiled with ``torch.utils.cpp_extension.load`` the first time a kernel is
needed (about a minute on 2 cores; one log line says so) into a cache of the user's, not of the
checkout: ``$EM_HF_CACHE/kernels`` (default ``~/.cache/em_hf/kernels``), one folder per instruction
set, source hash, torch version and compiler flags (:func:`build_directory`). The sources are copied
there before the build, so every checkout, virtual environment and command with the same sources
and torch (``make test``, ``em-hf build-ops``, a later script) loads the same library in well under
a second instead of compiling again. Build ahead of time with ``em-hf build-ops``.

The CPU sources are compiled with ``-march=native``, so the cached library runs only on CPUs with
the instruction set of the machine that built it. Its name therefore carries a short key of that
instruction set (:func:`isa_key`): machines that share a home directory but differ in their CPU
each build and load their own copy instead of crashing on an illegal instruction. It also carries
a key of the sources (:func:`source_key`): every checkout or install with the same kernel sources
shares one build, and a different version of the sources never loads another's library.

The environment variable ``EM_HF_ENTROPY_BACKEND`` chooses the implementation:
``auto`` (default: the compiled kernels when they build, else the chunked PyTorch path with one
warning), ``torch`` (never compile), or ``cpp`` (the kernels or an error). The CPU kernels are
always built; the CUDA kernels too where torch is a CUDA build and the CUDA toolkit is found.
"""

from __future__ import annotations

import hashlib
import os
import platform
import threading
import warnings
from pathlib import Path

import torch

from em_hf.utils.logging import get_logger

__all__ = [
    "BACKEND_ENV",
    "backend",
    "build",
    "build_directory",
    "extension_name",
    "isa_key",
    "kernel_cache_dir",
    "kernels_available",
    "source_key",
]

BACKEND_ENV = "EM_HF_ENTROPY_BACKEND"
_CHOICES = ("auto", "torch", "cpp")
_CSRC = Path(__file__).parent / "csrc"
_CPU_SOURCES = ("schemas.cpp", "entropy_cpu.cpp", "em_inf_cpu.cpp")
# Built only where torch is a CUDA build and the CUDA toolkit is found (see _with_cuda).
_CUDA_SOURCES = ("entropy_cuda.cpp", "entropy_cuda_kernels.cu")
_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_CFLAGS = ("-O3", "-march=native", "-ffp-contract=fast", "-fopenmp")
_CUDA_CFLAGS = ("-O3", "-std=c++17")
_LDFLAGS = ("-fopenmp",)
_CACHE_ENV = "EM_HF_CACHE"  # the package's cache root, shared with the default model's copy
_CPUINFO = Path("/proc/cpuinfo")
# The /proc/cpuinfo fields that list the instruction-set extensions (x86; ARM, RISC-V).
_FEATURE_FIELDS = ("flags", "features", "isa")

_lock = threading.Lock()
_state: dict[str, object] = {"loaded": False, "error": None, "warned": False, "cuda": False}
logger = get_logger(__name__)


def isa_key(cpuinfo: str | None = None, machine: str | None = None) -> str:
    """A short hash of what ``-march=native`` compiles for: the machine architecture and the CPU's
    feature flags (the ``flags``/``Features``/``isa`` line of ``/proc/cpuinfo``, sorted; where that
    file is absent, the processor name that :mod:`platform` reports). ``cpuinfo`` and ``machine``
    default to this host's; pass them to compute the key of another description."""
    machine = platform.machine() if machine is None else machine
    if cpuinfo is None:
        try:
            cpuinfo = _CPUINFO.read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    features = ""
    for line in cpuinfo.splitlines():
        field, _, value = line.partition(":")
        if field.strip().lower() in _FEATURE_FIELDS:
            features = " ".join(sorted(set(value.split())))
            break  # every core lists the same extensions; the first is enough
    if not features:
        features = "processor=" + (platform.processor() or "unknown")
    return hashlib.sha256(f"{machine}\n{features}".encode()).hexdigest()[:10]


def source_key(folder: Path | None = None) -> str:
    """A short hash of the kernel sources (every file of ``csrc/``, or of ``folder``, by name and
    content): checkouts or installs with the same sources share one compiled library, different
    sources never load each other's (their op schemas may differ)."""
    digest = hashlib.sha256()
    for path in sorted((_CSRC if folder is None else folder).iterdir()):
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:10]


def extension_name(with_cuda: bool = False) -> str:
    """The name under which torch builds and caches the kernels on this host: one per instruction set
    and version of the sources, and separate entries with and without the CUDA kernels."""
    return f"em_hf_entropy_{'cuda' if with_cuda else 'cpu'}_{isa_key()}_{source_key()}"


def kernel_cache_dir() -> Path:
    """The folder that holds every compiled build of the kernels: ``$EM_HF_CACHE/kernels`` (default
    ``~/.cache/em_hf/kernels``)."""
    root = os.environ.get(_CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "em_hf")
    return Path(root) / "kernels"


def build_directory(with_cuda: bool = False) -> Path:
    """The build folder of this host's kernels: :func:`kernel_cache_dir` / :func:`extension_name` (keyed
    by the instruction set and the sources) / the torch version and compiler flags. It holds a copy of
    the sources, so it depends on no checkout: every checkout of the same sources shares it."""
    flags = hashlib.sha256(repr((_CFLAGS, _CUDA_CFLAGS, _LDFLAGS)).encode()).hexdigest()[:6]
    return kernel_cache_dir() / extension_name(with_cuda) / f"torch-{torch.__version__}-{flags}"


def _source_files(with_cuda: bool) -> list[Path]:
    return [_CSRC / source for source in _CPU_SOURCES + (_CUDA_SOURCES if with_cuda else ())]


def _header_files() -> list[Path]:
    return sorted(path for path in _CSRC.iterdir() if path.suffix in (".h", ".cuh"))


def _copy_sources(folder: Path, with_cuda: bool) -> list[Path]:
    """Copy the sources and headers into ``folder/src`` (unchanged files are left alone, so their
    times stay and ninja does not rebuild) and return the copied sources."""
    target = folder / "src"
    target.mkdir(parents=True, exist_ok=True)
    for path in _source_files(with_cuda) + _header_files():
        copy = target / path.name
        data = path.read_bytes()
        if not copy.is_file() or copy.read_bytes() != data:
            copy.write_bytes(data)
    return [target / path.name for path in _source_files(with_cuda)]


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
    """Compile the C++ (and, where possible, CUDA) kernels of ``em_hf.ops``, or load them from
    torch's extension cache, and register the ops ``torch.ops.em_hf.*``.

    Called on first use by every op of ``em_hf.ops``; call it ahead of time (or run
    ``em-hf build-ops``) so that the first ``generate`` or training step does not wait for the
    compiler. A compilation (about a minute on 2 cores) is announced by one line on the ``em_hf``
    logger; a library built before for this CPU's instruction set, these sources and this torch (by
    any checkout: :func:`build_directory`) is loaded in under a second, without a word. The
    CUDA kernels are included when torch is a CUDA build and the CUDA toolkit is installed (their
    architectures follow ``TORCH_CUDA_ARCH_LIST``, else the visible GPU). Does nothing once the
    kernels are loaded.

    Parameters:
        verbose (`bool`, *optional*, defaults to `False`):
            Print the compiler's commands and output (``torch.utils.cpp_extension.load``'s
            ``verbose``).

    Raises:
        `RuntimeError` or `OSError`: the kernels could not be built (no compiler, missing headers);
        ``em_hf.ops`` then falls back to PyTorch unless ``EM_HF_ENTROPY_BACKEND=cpp``.

    Examples:

    ```python
    >>> import torch
    >>> from em_hf.ops import backend, build
    >>> build()  # compiles on the first call on a machine, then loads from the cache
    >>> backend("cpu"), hasattr(torch.ops.em_hf, "em_inf")
    ('cpp', True)

    ```
    """
    with _lock:
        if _state["loaded"]:
            return
        from torch.utils import cpp_extension  # imported here: it is slow and only needed to build

        with_cuda = _with_cuda()
        name = extension_name(with_cuda)
        folder = build_directory(with_cuda)
        library = folder / f"{name}.so"
        if library.is_file():
            torch.ops.load_library(str(library))
        else:
            logger.info(
                "building the em_hf C++%s kernels: about a minute, once per machine (cached in %s; "
                "`em-hf build-ops` does it ahead of time)",
                "/CUDA" if with_cuda else "",
                folder,
            )
            sources = _copy_sources(folder, with_cuda)
            cpp_extension.load(
                name=name,
                sources=[str(path) for path in sources],
                extra_cflags=list(_CFLAGS),
                extra_cuda_cflags=list(_CUDA_CFLAGS),
                extra_ldflags=list(_LDFLAGS),
                build_directory=str(folder),
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
    """The implementation that the ops of ``em_hf.ops`` use for tensors on ``device``.

    ``"cpp"`` (the compiled CPU kernels), ``"cuda"`` (the compiled CUDA kernels) or ``"torch"``
    (chunked PyTorch), following ``EM_HF_ENTROPY_BACKEND`` (``auto``, ``torch`` or ``cpp``). Builds
    the kernels on first call unless the variable is ``torch``. float64 tensors always take the
    PyTorch path, whatever this returns.

    Parameters:
        device (`str` or `torch.device`, *optional*, defaults to `"cpu"`):
            The device of the tensors in question.

    Examples:

    ```python
    >>> from em_hf.ops import backend
    >>> backend("cpu") in ("cpp", "torch")
    True
    >>> backend("meta")  # no kernels for this device
    'torch'

    ```
    """
    kind = torch.device(device).type
    if kind == "cpu" and kernels_available():
        return "cpp"
    if kind == "cuda" and kernels_available() and _state["cuda"]:
        return "cuda"
    return "torch"
