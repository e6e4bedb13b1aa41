"""Third-party messages that em_hf's own calls trigger and that tell an em_hf user nothing, filtered
where em_hf triggers them, each by its exact message and the module that emits it (nothing else):

- bitsandbytes' ``Failed to load CPU gemm_4bit_forward from kernels-community: ...`` (logged when
  bitsandbytes is imported on a CPU with AVX512-BF16, as ``import trl`` does; em_hf never runs 4-bit
  kernels): dropped.
- bitsandbytes' ``MatMul8bitLt: inputs will be cast from ... to float16 during quantization`` (logged
  by every 8-bit matmul of a float32 model, hundreds of times per ``generate``): shown once per process.
- torch's ``'pin_memory' argument is set as true but no accelerator is found`` (a ``UserWarning`` of
  every DataLoader iterator that transformers' Trainer builds on a machine without a GPU; pinning is
  then skipped, which is what a CPU run wants): ignored inside :func:`training_warnings_filtered`.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["quiet_bitsandbytes_logs", "training_warnings_filtered"]

_GEMM_4BIT_LOGGER = "bitsandbytes.backends.cpu.ops"
_GEMM_4BIT_MESSAGE = "Failed to load CPU gemm_4bit_forward from kernels-community"
_CAST_LOGGER = "bitsandbytes.autograd._functions"
_CAST_MESSAGE = "MatMul8bitLt: inputs will be cast from"
# (message regex, category, module regex) of the warnings warnings.filterwarnings ignores in training.
TRAINING_WARNINGS = (
    (
        r"'pin_memory' argument is set as true but no accelerator is found",
        UserWarning,
        r"torch\.utils\.data\.dataloader",
    ),
)
_lock = threading.Lock()
_installed = False


class _Filter(logging.Filter):
    """Drops the records whose format string starts with ``prefix``; with ``once``, all but the first."""

    def __init__(self, prefix: str, once: bool) -> None:
        super().__init__()
        self.prefix, self.once, self.seen = prefix, once, False

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.prefix):
            return True
        if self.once and not self.seen:
            self.seen = True
            return True
        return False


def quiet_bitsandbytes_logs() -> None:
    """Install the two bitsandbytes log filters of the module docstring (idempotent). Works before
    bitsandbytes is imported: the filters sit on its module loggers, which ``logging`` creates on demand.

    Examples:
        >>> import logging
        >>> from em_hf.utils.quiet import quiet_bitsandbytes_logs
        >>> quiet_bitsandbytes_logs()
        >>> logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
        >>> message = "Failed to load CPU gemm_4bit_forward from kernels-community: %s."
        >>> bool(logger.filter(logger.makeRecord(logger.name, logging.WARNING, "", 0, message, ("x",), None)))
        False
        >>> bool(logger.filter(logger.makeRecord(logger.name, logging.WARNING, "", 0, "other", (), None)))
        True
    """
    global _installed
    with _lock:
        if _installed:
            return
        logging.getLogger(_GEMM_4BIT_LOGGER).addFilter(_Filter(_GEMM_4BIT_MESSAGE, once=False))
        logging.getLogger(_CAST_LOGGER).addFilter(_Filter(_CAST_MESSAGE, once=True))
        _installed = True


@contextmanager
def training_warnings_filtered() -> Iterator[None]:
    """A context in which the training warnings of the module docstring (:data:`TRAINING_WARNINGS`)
    are ignored; every other warning shows as before. The trainers wrap ``train()`` in it.

    Examples:
        >>> import warnings
        >>> from em_hf.utils.quiet import training_warnings_filtered
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     with training_warnings_filtered():
        ...         warnings.warn_explicit(
        ...             "'pin_memory' argument is set as true but no accelerator is found, then ...",
        ...             UserWarning, "dataloader.py", 1, module="torch.utils.data.dataloader",
        ...         )
        ...         warnings.warn("something else", UserWarning)
        >>> [str(w.message) for w in caught]
        ['something else']
    """
    with warnings.catch_warnings():
        for message, category, module in TRAINING_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category, module=module)
        yield
