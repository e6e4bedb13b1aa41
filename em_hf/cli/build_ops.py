"""``em-hf build-ops``: compile the C++ (and, with CUDA torch, CUDA) entropy kernels ahead of time."""

from __future__ import annotations

import argparse
import time

__all__ = ["add_parser", "run"]


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``build-ops`` on an ``add_subparsers`` object."""
    return sub.add_parser(
        "build-ops",
        help="compile the C++ entropy kernels ahead of time (otherwise done on first use)",
        description="Compile em_hf's C++ entropy kernels with torch.utils.cpp_extension into torch's "
        "extension cache and report the backend em_hf.ops will use.",
    )


def run(args: argparse.Namespace) -> int:
    """Build (or load from the cache) the kernels and print the active backend."""
    from em_hf.ops import backend, build

    start = time.perf_counter()
    build(verbose=True)
    print(f"em_hf kernels ready in {time.perf_counter() - start:.1f} s; backend: {backend()}")
    return 0
