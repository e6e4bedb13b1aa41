"""``em-hf build-ops``: compile the C++ (and, with CUDA torch, CUDA) entropy kernels ahead of time."""

from __future__ import annotations

import argparse
import time

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run"]

HELP = "compile the C++ entropy kernels ahead of time (otherwise done on first use)"
DESCRIPTION = "Compile the entropy kernels into ~/.cache/em_hf/kernels and print the backend em_hf.ops uses."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``build-ops`` takes no option."""


def run(args: argparse.Namespace) -> int:
    """Build (or load from the cache) the kernels and print the active backend."""
    from em_hf.ops import backend, build

    start = time.perf_counter()
    build(verbose=True)
    print(f"em_hf kernels ready in {time.perf_counter() - start:.1f} s; backend: {backend()}")
    return 0
