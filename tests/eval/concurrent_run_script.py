"""Child process of the run-folder tests: an evaluation of 8 arithmetic items (greedy and sample, two
seeds, a near-uniform tiny model so that samples differ) into the folder given as the argument.
``--pause-after N``: after N generation calls, create ``paused`` in the folder and sleep until killed
(a crash at a known point, the folder's lock held). Exit status 0 on success, 3 when the folder is
locked by another run (the message on stderr)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from em_hf.eval import load_benchmark
from em_hf.eval.runner import EvalRun, evaluate
from em_hf.generation.batched import generate_completions
from em_hf.utils.files import FolderLockedError
from tests.helpers import make_tiny_llama, make_word_tokenizer


class PausingGenerator:
    engine = "hf"

    def __init__(self, out: Path, pause_after: int | None = None) -> None:
        self.out, self.pause_after, self.calls = out, pause_after, 0

    def __call__(self, *args, **kwargs):
        if self.pause_after is not None and self.calls == self.pause_after:
            (self.out / "paused").touch()
            while True:
                time.sleep(60)
        self.calls += 1
        return generate_completions(*args, **kwargs)


def run(out: Path, generator=None) -> EvalRun:
    """The evaluation both the child and the tests' uninterrupted reference run."""
    model, tokenizer = make_tiny_llama(sharpen=1.0), make_word_tokenizer()
    benchmarks = {"arithmetic": load_benchmark("arithmetic:n=8")}
    return evaluate(model, tokenizer, benchmarks, ["greedy", "sample"], out, seeds=[0, 1], max_new_tokens=3,
                    batch_size=3, progress=False, plot=False, generator=generator)  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--pause-after", type=int, default=None)
    args = parser.parse_args()
    try:
        run(args.out, PausingGenerator(args.out, args.pause_after))
    except FolderLockedError as error:
        print(error, file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
