"""A resumable evaluation run: benchmarks x decoding methods x seeds -> ``items.jsonl`` + reports.

Files in the output folder:

- ``config.json``: the settings results depend on (model, max new tokens, the engine that generated,
  ``hf`` or ``vllm``; templates are part of the items; a ``config.json`` written before the engine was
  recorded counts as ``hf``). A later run into the same folder must use the same settings (else a
  clear error), and then skips every (benchmark, method, seed, item id) already in ``items.jsonl``:
  finished items are never recomputed, so an interrupted run resumes where it stopped.
- ``items.jsonl``: one :class:`~em_hf.eval.methods.ItemResult` per line, appended as each chunk of
  items finishes.
- ``table.md``: the Table-3-shaped accuracy table and the detailed table; ``accuracy_vs_flops.png``.

Greedy-based methods are deterministic and run for the first seed only; sampled methods run once
per seed. Self-consistency on a code benchmark is skipped with a note and shown as ``–``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from em_hf.eval.benchmarks import BenchmarkItem
from em_hf.eval.methods import run_items
from em_hf.eval.report import format_details, format_table, plot_accuracy_vs_flops, summarize
from em_hf.generation.decoding import DecodingMethod, parse_method

__all__ = ["EvalRun", "check_resumable", "evaluate", "read_records", "split_specs"]

ITEMS_FILE = "items.jsonl"
CONFIG_FILE = "config.json"
_CONFIG_DEFAULTS = {"engine": "hf"}  # keys added later, with the value older runs had


def split_specs(values: Sequence[str]) -> list[str]:
    """Comma lists of specs -> specs: ``["greedy,sc:4,em-inf:t=0.1,n_steps=5"]`` ->
    ``["greedy", "sc:4", "em-inf:t=0.1,n_steps=5"]``. A comma part that is an option (holds ``=``
    or is a number) belongs to the spec before it."""
    specs: list[str] = []
    for value in values:
        for part in (p.strip() for p in value.split(",")):
            if not part:
                continue
            if specs and ("=" in part.partition(":")[0] or part.isdigit()) and ":" in specs[-1]:
                specs[-1] = f"{specs[-1]},{part}"
            else:
                specs.append(part)
    return specs


def read_records(path: str | Path) -> list[dict]:
    """The records of an ``items.jsonl`` (a truncated last line, from an interrupted write, is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    with path.open(encoding="utf-8") as file:
        for line in file:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line without its newline (a write interrupted mid-record), so that appended records
    start on a line of their own."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as file:
            file.truncate(data.rfind(b"\n") + 1)


def _key(record: dict) -> tuple[str, str, int, str]:
    return (record["benchmark"], record["method"], int(record["seed"]), str(record["item_id"]))


@dataclass
class EvalRun:
    """What :func:`evaluate` returns.

    Parameters:
        records (`list[dict]`):
            All records of the folder's ``items.jsonl``, old and new.
        summaries (`list[MethodSummary]`):
            One per (benchmark, method) (:func:`~em_hf.eval.report.summarize`).
        not_applicable (`list[tuple[str, str]]`, *optional*, defaults to `[]`):
            The (benchmark, method) pairs skipped (self-consistency on code).
        table_path, plot_path (`Path`, *optional*):
            The ``table.md`` and the accuracy-vs-FLOPs plot written (`None` when not written).
        seconds (`float`, *optional*, defaults to `0.0`):
            Wall time of the call.

    Examples:
        ``evaluate(...)`` returns one; ``summaries`` are :class:`~em_hf.eval.report.MethodSummary` rows:

        >>> from em_hf.eval.runner import EvalRun
        >>> EvalRun(records=[], summaries=[], not_applicable=[]).seconds
        0.0
    """

    records: list[dict]
    summaries: list
    not_applicable: list[tuple[str, str]] = field(default_factory=list)
    table_path: Path | None = None
    plot_path: Path | None = None
    seconds: float = 0.0


def check_resumable(out_dir: str | Path, settings: dict) -> None:
    """Raise ``ValueError`` when ``out_dir`` holds a run whose ``config.json`` differs from ``settings``
    (any subset of its keys: ``model``, ``max_new_tokens``, ``engine``, ...), so that a command line can
    refuse a mismatched resume before it loads the model. Nothing to check: returns.

    Examples:
        >>> import tempfile
        >>> from em_hf.eval.runner import check_resumable
        >>> check_resumable(tempfile.mkdtemp(), {"model": "default"})  # no run there yet
    """
    path = Path(out_dir) / CONFIG_FILE
    if path.is_file():
        previous = json.loads(path.read_text(encoding="utf-8"))
        previous = {**_CONFIG_DEFAULTS, **previous}
        changed = {k: (previous.get(k), v) for k, v in settings.items() if previous.get(k) != v}
        if changed:
            raise ValueError(
                f"{out_dir} holds a run with other settings {changed} (before, now); resuming would mix "
                "them. Use another output folder (--out), or delete that one."
            )


def _check_config(out_dir: Path, config: dict) -> None:
    path = out_dir / CONFIG_FILE
    if path.is_file():
        check_resumable(out_dir, config)
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(config, indent=2), encoding="utf-8")


def evaluate(
    model,
    tokenizer,
    benchmarks: dict[str, Sequence[BenchmarkItem]],
    methods: Sequence[str | DecodingMethod],
    out_dir: str | Path,
    seeds: Sequence[int] = (0,),
    max_new_tokens: int = 256,
    batch_size: int = 16,
    model_name: str = "",
    code_timeout_s: float = 10.0,
    progress: bool = True,
    plot: bool = True,
    generator: Callable | None = None,
) -> EvalRun:
    """Run every method on every benchmark's items (module docstring), append the results to
    ``out_dir/items.jsonl``, and write the tables and the plot.

    ``benchmarks`` maps a benchmark label to its items (:func:`~em_hf.eval.benchmarks.load_benchmark`).
    Items are generated in chunks of ``batch_size`` prompts (self-consistency: ``batch_size // n``
    items, n trajectories each); each chunk is written as soon as it is graded.

    Parameters:
        model, tokenizer, max_new_tokens, batch_size, code_timeout_s:
            As in :func:`~em_hf.eval.methods.run_items`.
        benchmarks (`dict[str, Sequence[BenchmarkItem]]`):
            Benchmark label -> items.
        methods (`Sequence[str | DecodingMethod]`):
            Decoding methods, as specs (``"greedy"``, ``"em-inf:t=0.1"``, ...) or parsed.
        out_dir (`str` or `Path`):
            The run folder (``items.jsonl``, ``config.json``, ``table.md``, the plot). A folder holding a
            run with the same settings is resumed: finished (benchmark, method, seed, item) records are
            kept, not recomputed; other settings raise ``ValueError``.
        seeds (`Sequence[int]`, *optional*, defaults to `(0,)`):
            Generation seeds; every method runs once per seed.
        model_name (`str`, *optional*, defaults to `""`):
            Recorded in ``config.json`` (a resumed run must match it).
        progress (`bool`, *optional*, defaults to `True`):
            Show a progress bar.
        plot (`bool`, *optional*, defaults to `True`):
            Write the accuracy-vs-FLOPs plot (needs matplotlib).
        generator (`Callable`, *optional*):
            The generation engine, as in :func:`~em_hf.eval.methods.run_items` (default: ``model.generate``);
            e.g. :class:`~em_hf.generation.vllm.engine.VLLMGenerator` for vLLM. Its ``engine`` attribute
            (``"hf"`` for the default, ``"custom"`` for a callable without one) is recorded in
            ``config.json``, so a resumed run cannot mix engines.

    Returns:
        :class:`EvalRun`
    """
    if not benchmarks or any(len(items) == 0 for items in benchmarks.values()):
        raise ValueError("`benchmarks` must map each benchmark name to a non-empty list of items.")
    parsed = [m if isinstance(m, DecodingMethod) else parse_method(m) for m in methods]
    if not parsed:
        raise ValueError("`methods` is empty: give at least one decoding method.")
    if len({m.name for m in parsed}) < len(parsed):
        raise ValueError(f"`methods` has duplicates: {[m.name for m in parsed]}.")
    if not seeds:
        raise ValueError("`seeds` is empty: give at least one seed.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be an integer >= 1, got {batch_size!r}.")
    out = Path(out_dir)
    num_parameters = model.num_parameters()
    engine = "hf" if generator is None else str(getattr(generator, "engine", "custom"))
    _check_config(
        out,
        {
            "model": model_name,
            "max_new_tokens": max_new_tokens,
            "num_parameters": num_parameters,
            "engine": engine,
        },
    )
    items_path = out / ITEMS_FILE
    done = {_key(r) for r in read_records(items_path)}
    not_applicable: list[tuple[str, str]] = []
    work: list[tuple[str, DecodingMethod, int, list[BenchmarkItem]]] = []
    for label, items in benchmarks.items():
        for method in parsed:
            if method.strategy == "sc" and any(item.task == "code" for item in items):
                print(
                    f"note: {method.name} (self-consistency) does not apply to code benchmark {label}: "
                    "skipped"
                )
                not_applicable.append((label, method.name))
                continue
            for seed in list(seeds) if method.do_sample else list(seeds)[:1]:
                pending = [i for i in items if (label, method.name, int(seed), i.id) not in done]
                if pending:
                    work.append((label, method, int(seed), pending))
    _drop_torn_tail(items_path)
    start = time.perf_counter()
    bar = tqdm(total=sum(len(w[3]) for w in work), desc="eval", unit="item", disable=not progress)
    with items_path.open("a", encoding="utf-8") as sink:
        for label, method, seed, pending in work:
            chunk = max(1, batch_size // method.num_trajectories) if method.strategy == "sc" else batch_size
            for begin in range(0, len(pending), chunk):
                bar.set_postfix_str(f"{label} {method.name} seed {seed}")
                results = run_items(
                    model,
                    tokenizer,
                    pending[begin : begin + chunk],
                    method,
                    seed=seed * 1_000_003 + begin,
                    max_new_tokens=max_new_tokens,
                    batch_size=batch_size,
                    code_timeout_s=code_timeout_s,
                    num_parameters=num_parameters,
                    generator=generator,
                )
                for result in results:
                    record = result.to_dict()
                    record["benchmark"], record["seed"] = label, seed
                    sink.write(json.dumps(record) + "\n")
                sink.flush()
                bar.update(len(results))
    bar.close()
    return write_reports(out, not_applicable, plot=plot, seconds=time.perf_counter() - start)


def write_reports(
    out_dir: str | Path,
    not_applicable: Sequence[tuple[str, str]] = (),
    plot: bool = True,
    seconds: float = 0.0,
) -> EvalRun:
    """Summaries, ``table.md`` and the plot from the folder's ``items.jsonl``."""
    out = Path(out_dir)
    records = read_records(out / ITEMS_FILE)
    if not records:
        raise ValueError(f"{out / ITEMS_FILE} holds no results to report.")
    summaries = summarize(records)
    table = format_table(summaries, not_applicable)
    details = format_details(summaries)
    table_path = out / "table.md"
    table_path.write_text(f"{table}\n\n{details}\n", encoding="utf-8")
    plot_path = plot_accuracy_vs_flops(summaries, out / "accuracy_vs_flops.png") if plot else None
    return EvalRun(records, summaries, list(not_applicable), table_path, plot_path, seconds)
