"""The third-party messages em_hf filters: exactly those (by message and module), and how often."""

from __future__ import annotations

import logging
import warnings

import pytest

from em_hf.utils.quiet import quiet_bitsandbytes_logs, training_warnings_filtered


@pytest.fixture
def records():
    """Every record that reaches the handlers of the bitsandbytes loggers (after their filters)."""
    caught: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = caught.append
    names = ("bitsandbytes.backends.cpu.ops", "bitsandbytes.autograd._functions")
    for name in names:
        logging.getLogger(name).addHandler(handler)
    yield caught
    for name in names:
        logging.getLogger(name).removeHandler(handler)


def test_gemm_4bit_message_is_dropped_and_other_bitsandbytes_messages_pass(records):
    quiet_bitsandbytes_logs()
    quiet_bitsandbytes_logs()  # idempotent: one filter each
    ops = logging.getLogger("bitsandbytes.backends.cpu.ops")
    assert len(ops.filters) == 1
    ops.warning(
        "Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure ...",
        "No module named 'kernels'",
    )
    ops.warning("Something else went wrong: %s", "x")
    assert [r.getMessage() for r in records] == ["Something else went wrong: x"]


def test_8bit_cast_message_shows_once(records):
    quiet_bitsandbytes_logs()
    functions = logging.getLogger("bitsandbytes.autograd._functions")
    (installed,) = functions.filters
    fresh = type(installed)(installed.prefix, once=True)  # the installed one may have shown its message
    functions.removeFilter(installed)
    functions.addFilter(fresh)
    try:
        for _ in range(5):
            functions.warning(
                "MatMul8bitLt: inputs will be cast from %s to float16 during quantization", "torch.float32"
            )
        functions.warning("another message")
    finally:
        functions.removeFilter(fresh)
        functions.addFilter(installed)
    assert [r.getMessage()[:12] for r in records] == ["MatMul8bitLt", "another mess"]


def _pin_memory_warning(module: str) -> None:
    warnings.warn_explicit(
        "'pin_memory' argument is set as true but no accelerator is found, then device pinned memory "
        "won't be used.",
        UserWarning,
        "dataloader.py",
        759,
        module=module,
    )


def test_pin_memory_warning_is_ignored_only_inside_the_context_and_only_from_torch():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with training_warnings_filtered():
            _pin_memory_warning("torch.utils.data.dataloader")  # filtered
            _pin_memory_warning("somebody.else")  # same text, another module: shown
            warnings.warn("an unrelated warning", UserWarning, stacklevel=1)
        _pin_memory_warning("torch.utils.data.dataloader")  # outside: shown again
    shown = [(str(w.message)[:12], w.filename) for w in caught]
    assert shown == [
        ("'pin_memory'", "dataloader.py"),
        ("an unrelated", __file__),
        ("'pin_memory'", "dataloader.py"),
    ]
