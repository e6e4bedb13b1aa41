"""The ``em-hf`` command line: one module per subcommand (``demo``, ``eval``, ``select``,
``preflight``, ``build-ops``), each with ``HELP`` (its line in ``em-hf --help``), ``DESCRIPTION``,
``add_arguments(parser)`` and ``run(args) -> exit code``; shared argument types and option groups in
:mod:`em_hf.cli.options`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from em_hf.cli import build_ops, demo, preflight, select
from em_hf.cli import eval as eval_command

__all__ = ["build_parser", "main"]

_SUBCOMMANDS = {
    "demo": demo,
    "eval": eval_command,
    "select": select,
    "preflight": preflight,
    "build-ops": build_ops,
}


def build_parser() -> argparse.ArgumentParser:
    """The ``em-hf`` parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="em-hf", description="Entropy minimization for LLM reasoning.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in _SUBCOMMANDS.items():
        module.add_arguments(sub.add_parser(name, help=module.HELP, description=module.DESCRIPTION))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and run the subcommand; returns its exit code."""
    args = build_parser().parse_args(argv)
    return _SUBCOMMANDS[args.command].run(args)
