"""``em-hf eval``: benchmarks x decoding methods x seeds with graders, FLOPs, tables and a plot.

    em-hf eval --model default --benchmark math500:level=1 arithmetic --limit 40 \\
        --methods greedy,sample,sc:4,adaptive,em-inf --seeds 3 --out runs/eval

``--out`` defaults to a new ``runs/eval-<date>-<time>`` folder and ``--max-new-tokens`` to the
benchmarks' budget (:data:`em_hf.eval.benchmarks.MAX_NEW_TOKENS`: 32 for arithmetic, 3072 for math,
physics and code); both are printed.

Benchmarks and methods are space- or comma-separated specs (``NAME[:key=value,...]``; see
:mod:`em_hf.eval.benchmarks` and :mod:`em_hf.generation.decoding`). Results go to ``--out``
(:mod:`em_hf.eval.runner`); running the same command again resumes. ``--engine vllm`` generates
with a vLLM engine (:mod:`em_hf.generation.vllm.engine`) instead of ``model.generate``; grading and
accounting are the same, and the engine is recorded in ``config.json``.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time

from em_hf.cli import options

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run"]

HELP = (
    "evaluate decoding methods (greedy, sampling, self-consistency, refinement, adaptive, EM-INF) on the "
    "papers' benchmarks"
)
DESCRIPTION = (
    "Answer benchmark items with each decoding method, grade them (math-verify, the code sandbox, physics "
    "tolerance), and write items.jsonl, a Table-3-shaped markdown table and an accuracy-vs-FLOPs plot to "
    "--out. Re-running the same command resumes."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``em-hf eval``."""
    from em_hf.eval.benchmarks import BENCHMARKS
    from em_hf.generation.decoding import KINDS

    options.add_model_options(parser)
    parser.add_argument(
        "--benchmark",
        "--benchmarks",
        dest="benchmarks",
        nargs="+",
        required=True,
        help="benchmarks, NAME[:key=value,...] (metadata filters such as math500:level=1; "
        "arithmetic:n=,seed=), "
        f"space- or comma-separated; names: {', '.join(BENCHMARKS)}",
    )
    options.add_option(
        parser,
        "--methods",
        ["greedy", "sample", "adaptive", "em-inf"],
        f"decoding methods, NAME[:key=value,...], space- or comma-separated; names: {', '.join(KINDS)}; "
        "e.g. sc:4 em-inf:t=0.1,n_steps=5 refine:n=3",
        nargs="+",
    )
    parser.add_argument(
        "--limit",
        type=options.positive_int,
        default=None,
        help="first N items of each benchmark (default: all items)",
    )
    options.add_option(parser, "--seeds", 1, "seeds per sampled method", type=options.positive_int)
    parser.add_argument(
        "--out",
        default=None,
        help="output folder (created; an existing run there is resumed; default: runs/eval-<date>-<time>, "
        "printed at the start)",
    )
    options.add_generation_options(parser, max_new_tokens=None, batch_size=16)
    parser.add_argument(
        "--benchmark-dir",
        default=None,
        help="folder with the benchmark files (default: "
        "$EM_HF_BENCHMARKS, else shared/benchmarks beside/above the current folder, else the Hugging Face "
        "Hub; each benchmark's file name and format: the error when one is missing)",
    )
    parser.add_argument(
        "--template",
        default=None,
        help="prompt template with {question} for every benchmark (default: each benchmark's own)",
    )
    options.add_option(parser, "--code-timeout", 10.0, "seconds per program run", type=options.positive_float)
    parser.add_argument(
        "--unsafe-code-sandbox",
        action="store_true",
        help="run code items' programs without the bubblewrap sandbox (a separate process with resource "
        "limits, but your user's rights on files and network): only for code you trust, or where "
        "bubblewrap cannot run",
    )
    parser.add_argument("--no-plot", action="store_true", help="skip the matplotlib plot")
    parser.add_argument(
        "--engine",
        choices=("hf", "vllm"),
        default="hf",
        help="what generates: transformers' generate (hf) or a vLLM engine on the same weights (vllm; "
        "the transformers model is still loaded, for the mean token entropy and P); default: %(default)s",
    )
    parser.add_argument(
        "--vllm-max-model-len",
        type=options.positive_int,
        default=None,
        help="--engine vllm: the engine's max_model_len (prompt + new tokens; default: the model's)",
    )


def default_out_dir(now: datetime.datetime | None = None) -> str:
    """``runs/eval-YYYYmmdd-HHMMSS`` (local time ``now``, default: now), the folder ``--out`` defaults to."""
    now = datetime.datetime.now() if now is None else now
    return f"runs/eval-{now:%Y%m%d-%H%M%S}"


def _vllm_generator(args: argparse.Namespace, methods):
    """The vLLM engine of ``--engine vllm`` on the weights ``--model`` names (the default model: its
    safetensors cache), float32 for the default model as the transformers path loads it."""
    import os

    import torch

    from em_hf.generation.vllm.engine import VLLMGenerator, check_methods, load_vllm
    from em_hf.models import ensure_default_model_cache

    check_methods(methods)  # before the 1-2 minutes of engine start-up
    if args.load_in_8bit:
        raise ValueError("--load-in-8bit applies to --engine hf only (vLLM quantizes on its own).")
    default = str(args.model) == "default"
    path = str(ensure_default_model_cache()) if default else str(args.model)
    kwargs: dict = {"dtype": "float32" if default else "auto", "seed": 0}
    if not torch.cuda.is_available():
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM's CPU default is much larger
        kwargs["enforce_eager"] = True
    if args.vllm_max_model_len:
        kwargs["max_model_len"] = args.vllm_max_model_len
    return VLLMGenerator(load_vllm(path, **kwargs))


def _code_sandbox_ready(args: argparse.Namespace, benchmarks: dict) -> bool:
    """Choose the code sandbox's isolation; with code items and no ``--unsafe-code-sandbox``, check
    bubblewrap now (before the model loads) and print why it cannot run."""
    from em_hf.eval.sandbox import SandboxUnavailableError, check_sandbox, set_default_isolation

    if args.unsafe_code_sandbox:
        set_default_isolation("process")
        return True
    set_default_isolation("bwrap")
    if not any(item.task == "code" for items in benchmarks.values() for item in items):
        return True
    try:
        check_sandbox()
    except SandboxUnavailableError as error:
        print(f"em-hf eval: error: {error}", file=sys.stderr)
        return False
    return True


def run(args: argparse.Namespace) -> int:
    """Run ``em-hf eval`` from parsed arguments; prints the tables and where the files are."""
    import torch

    from em_hf.eval.benchmarks import default_max_new_tokens, load_benchmark
    from em_hf.eval.runner import check_resumable, evaluate, split_specs
    from em_hf.generation.decoding import parse_method
    from em_hf.models import load_model
    from em_hf.utils.files import FolderLockedError

    start = time.perf_counter()
    try:
        methods = [parse_method(spec) for spec in split_specs(args.methods)]
        benchmark_specs = split_specs(args.benchmarks)
        if args.max_new_tokens is None:
            args.max_new_tokens = default_max_new_tokens(benchmark_specs)
            print(
                f"--max-new-tokens {args.max_new_tokens} (the default for these benchmarks)", file=sys.stderr
            )
        if args.out is None:
            args.out = default_out_dir()
            print(f"--out {args.out} (the default: a new folder)", file=sys.stderr)
        # The settings known before the model loads; the rest is checked again by evaluate().
        check_resumable(
            args.out, {"model": str(args.model), "max_new_tokens": args.max_new_tokens, "engine": args.engine}
        )
        benchmarks = {
            spec: load_benchmark(spec, path=args.benchmark_dir, limit=args.limit, template=args.template)
            for spec in benchmark_specs
        }
    except (ValueError, FileNotFoundError) as error:
        print(f"em-hf eval: error: {error}", file=sys.stderr)
        return 2
    if not _code_sandbox_ready(args, benchmarks):
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    generator = None
    if args.engine == "vllm":
        try:
            generator = _vllm_generator(args, methods)
        except (ImportError, ValueError) as error:
            print(f"em-hf eval: error: {error}", file=sys.stderr)
            return 2
    model, tokenizer = load_model(args.model, load_in_8bit=args.load_in_8bit)
    print(f"Loaded {args.model} ({args.engine}) in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    try:
        run = evaluate(
            model,
            tokenizer,
            benchmarks,
            methods,
            out_dir=args.out,
            seeds=range(args.seeds),
            model_name=str(args.model),
            code_timeout_s=args.code_timeout,
            **options.generation_kwargs(args),
            plot=not args.no_plot,
            generator=generator,
        )
    except (ValueError, ImportError, FolderLockedError) as error:
        print(f"em-hf eval: error: {error}", file=sys.stderr)
        return 2
    assert run.table_path is not None
    print(run.table_path.read_text(encoding="utf-8"))
    print(
        f"{len(run.records)} item results in {args.out}/items.jsonl; table: {run.table_path}"
        + (f"; plot: {run.plot_path}" if run.plot_path else "")
        + f". Generation and grading {run.seconds:.0f} s, total {time.perf_counter() - start:.0f} s."
    )
    if generator is not None:
        print(
            f"vLLM generate {generator.generate_seconds:.0f} s, entropy recomputation "
            f"{generator.entropy_seconds:.0f} s."
        )
    return 0
