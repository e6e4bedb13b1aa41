"""The package logger, in the manner of ``transformers.utils.logging``.

``get_logger(__name__)`` returns a child of the ``em_hf`` logger. Unless the application configures
logging itself, em_hf prints INFO and above to stderr (one line per message, prefixed ``em_hf:``);
set the level with ``EM_HF_VERBOSITY=debug|info|warning|error`` or :func:`set_verbosity`.
"""

from __future__ import annotations

import logging
import os
import threading

__all__ = ["get_logger", "set_verbosity"]

_ROOT = "em_hf"
_VERBOSITY_ENV = "EM_HF_VERBOSITY"
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_lock = threading.Lock()
_configured = False


def _configure_root() -> None:
    global _configured
    with _lock:
        if _configured:
            return
        root = logging.getLogger(_ROOT)
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("em_hf: %(message)s"))
        root.addHandler(handler)
        root.propagate = False
        name = os.environ.get(_VERBOSITY_ENV, "info").strip().lower()
        if name not in _LEVELS:
            raise ValueError(f"{_VERBOSITY_ENV}={name!r} is not one of {', '.join(_LEVELS)}.")
        root.setLevel(_LEVELS[name])
        _configured = True


def get_logger(name: str = _ROOT) -> logging.Logger:
    """The logger ``name`` (a module's ``__name__`` inside em_hf), under the configured ``em_hf`` root."""
    _configure_root()
    return logging.getLogger(name)


def set_verbosity(level: int | str) -> None:
    """Set the level of every em_hf logger: a ``logging`` level or one of debug/info/warning/error."""
    _configure_root()
    if isinstance(level, str):
        if level.lower() not in _LEVELS:
            choices = ", ".join(_LEVELS)
            raise ValueError(f"`level` must be one of {choices} or a logging level, got {level!r}.")
        level = _LEVELS[level.lower()]
    logging.getLogger(_ROOT).setLevel(level)
