"""Argument types and option groups shared by the ``em-hf`` subcommands (argparse ``type=`` callables
wrap :mod:`em_hf.utils.validation`, so the command line and the Python API accept the same values)."""

from __future__ import annotations

import argparse

from em_hf.utils.validation import check_int, check_number

__all__ = [
    "add_generation_options",
    "add_model_options",
    "decoding_method",
    "generation_kwargs",
    "non_negative_int",
    "positive_float",
    "positive_int",
]


def _parse(text: str, convert, check) -> object:
    try:
        return check(convert(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).replace("`value` ", "")) from error


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _parse(text, int, lambda v: check_int("value", v))


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    return _parse(text, int, lambda v: check_int("value", v, minimum=0))


def positive_float(text: str) -> float:
    """A finite number > 0."""
    return _parse(text, float, lambda v: check_number("value", v, low=0.0, low_open=True))


def decoding_method(text: str) -> str:
    """A decoding-method spec ``NAME[:key=value,...]`` (:func:`em_hf.generation.decoding.parse_method`)."""
    from em_hf.generation.decoding import parse_method

    try:
        parse_method(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error
    return text.strip()


def add_option(parser: argparse._ActionsContainer, flag: str, default: object, help: str, **kwargs) -> None:
    """``parser.add_argument(flag, default=default, ...)`` with `` (default: <default>)`` after ``help``."""
    parser.add_argument(flag, default=default, help=f"{help} (default: %(default)s)", **kwargs)


def add_model_options(parser: argparse.ArgumentParser, *, quantize: bool = True) -> None:
    """``--model`` (``default`` = the embedded SmolLM2-135M-Instruct) and ``--load-in-8bit``."""
    parser.add_argument(
        "--model", default="default", help="'default' or a model id/folder (default: %(default)s)"
    )
    if quantize:
        parser.add_argument(
            "--load-in-8bit", action="store_true", help="quantize the model to 8-bit (bitsandbytes)"
        )


def add_generation_options(
    parser: argparse.ArgumentParser, *, max_new_tokens: int | None, batch_size: int, threads: bool = True
) -> None:
    """``--max-new-tokens``, ``--batch-size``, ``--no-progress`` and (optionally) ``--threads``.
    ``max_new_tokens=None``: the command picks the budget from its benchmarks (``em-hf eval``)."""
    parser.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=max_new_tokens,
        help="new tokens per answer (default: %(default)s)"
        if max_new_tokens is not None
        else "new tokens per answer (default: per benchmark: 32 for arithmetic, 3072 for math, physics "
        "and code; the largest of the run's benchmarks)",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=batch_size,
        help="prompts per generate call (default: %(default)s)",
    )
    if threads:
        parser.add_argument(
            "--threads",
            type=positive_int,
            default=None,
            help="torch CPU threads (default: torch's, one per physical core)",
        )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def generation_kwargs(args: argparse.Namespace) -> dict[str, object]:
    """The keyword arguments of the options :func:`add_generation_options` added, as the Python API
    names them: ``max_new_tokens``, ``batch_size``, ``progress``."""
    return {
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "progress": not args.no_progress,
    }
