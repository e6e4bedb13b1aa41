"""Child process of the run-folder lock test: an evaluation of 8 arithmetic items into the folder given
as the first argument, starting at the ``time.time()`` given as the second, whose generation takes at
least 0.25 s per call (so that two runs started together overlap). Exit status 0 on success, 3 when
the folder is locked by another run (the message on stderr)."""

from __future__ import annotations

import sys
import time

from em_hf.eval import load_benchmark
from em_hf.eval.runner import evaluate
from em_hf.generation.batched import generate_completions
from em_hf.utils.files import FolderLockedError
from tests.helpers import make_tiny_llama, make_word_tokenizer


class SlowGenerator:
    engine = "hf"

    def __call__(self, *args, **kwargs):
        time.sleep(0.25)
        return generate_completions(*args, **kwargs)


def main() -> int:
    out, start_at = sys.argv[1], float(sys.argv[2])
    model, tokenizer = make_tiny_llama(), make_word_tokenizer()
    benchmarks = {"arithmetic": load_benchmark("arithmetic:n=8")}
    time.sleep(max(0.0, start_at - time.time()))
    try:
        evaluate(model, tokenizer, benchmarks, ["greedy", "sample"], out, max_new_tokens=3, batch_size=2,
                 progress=False, plot=False, generator=SlowGenerator())  # fmt: skip
    except FolderLockedError as error:
        print(error, file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
