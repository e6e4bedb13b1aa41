"""A resumable evaluation run: benchmarks x decoding methods x seeds -> ``items.jsonl`` + reports.

Files in the output folder:

- ``config.json``: the settings results depend on (model, max new tokens, the engine that generated,
  ``hf`` or ``vllm``, each benchmark's prompt template; a ``config.json`` written before the engine was
  recorded counts as ``hf``, one written before the templates were recorded is not checked for them).
  A later run into the same folder must use the same settings (else a clear error; a benchmark new to
  the folder is added), and then skips every (benchmark, method, seed, item id) already in
  ``items.jsonl``: finished items are never recomputed, so an interrupted run resumes where it stopped.
  Sampling is seeded per item (:func:`~em_hf.generation.sampling.item_seed` of the seed, the benchmark
  and the item id), so the resumed items get the answers an uninterrupted run would have given.
- ``.em_hf_run.lock``: held while a run writes to the folder; a second run on the same folder fails
  at once (:class:`~em_hf.utils.files.FolderLockedError`) instead of writing duplicate records.
- ``items.jsonl``: one :class:`~em_hf.eval.methods.ItemResult` per line, appended as each chunk of
  items finishes.
- ``table.md``: the Table-3-shaped accuracy table and the detailed table; ``accuracy_vs_flops.png``.

Greedy-based methods are deterministic and run for the first seed only; sampled methods run once
per seed. Self-consistency on a code benchmark is skipped with a note and shown as ``–``.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from em_hf.eval.benchmarks import BenchmarkItem
from em_hf.eval.methods import run_items
from em_hf.eval.report import format_details, format_table, plot_accuracy_vs_flops, summarize
from em_hf.generation.batched import generate_completions
from em_hf.generation.decoding import DecodingMethod, parse_method
from em_hf.generation.prompts import render_prompt
from em_hf.utils.files import FolderLockedError, atomic_write_text, file_lock
from em_hf.utils.validation import check_int

__all__ = ["EvalRun", "check_resumable", "evaluate", "read_records", "split_specs"]

ITEMS_FILE = "items.jsonl"
CONFIG_FILE = "config.json"
LOCK_FILE = ".em_hf_run.lock"
DEFAULT_MAX_PROMPT_TOKENS = 32768  # prompt cap for a model whose config gives no context length
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
        skipped (`list[tuple[str, str, str]]`, *optional*, defaults to `[]`):
            (benchmark, item id, reason) of the items not answered (a prompt over ``max_prompt_tokens``).

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
    skipped: list[tuple[str, str, str]] = field(default_factory=list)


def check_resumable(out_dir: str | Path, settings: dict) -> None:
    """Raise ``ValueError`` when ``out_dir`` holds a run whose ``config.json`` differs from ``settings``
    (any subset of its keys but ``templates``: ``model``, ``max_new_tokens``, ``engine``, ...), so that a
    command line can refuse a mismatched resume before it loads the model. Nothing to check: returns.

    Examples:
        >>> import tempfile
        >>> from em_hf.eval.runner import check_resumable
        >>> check_resumable(tempfile.mkdtemp(), {"model": "default"})  # no run there yet
    """
    path = Path(out_dir) / CONFIG_FILE
    if not path.is_file():
        return
    previous = {**_CONFIG_DEFAULTS, **json.loads(path.read_text(encoding="utf-8"))}
    changed = {
        k: (previous.get(k), v) for k, v in settings.items() if k != "templates" and previous.get(k) != v
    }
    if changed:
        raise ValueError(
            f"{out_dir} holds a run with other settings {changed} (before, now); resuming would mix "
            "them. Use another output folder (--out), or delete that one."
        )


def _check_config(out_dir: Path, config: dict) -> None:
    """Compare ``config`` with the folder's ``config.json`` (module docstring); write it when new.

    ``templates`` (benchmark label -> prompt template) is compared label by label: a benchmark new to
    the folder is added to the file."""
    path = out_dir / CONFIG_FILE
    if not path.is_file():
        atomic_write_text(path, json.dumps(config, indent=2))
        return
    previous = {**_CONFIG_DEFAULTS, **json.loads(path.read_text(encoding="utf-8"))}
    changed = {
        k: (previous.get(k), v) for k, v in config.items() if k != "templates" and previous.get(k) != v
    }
    old_templates = previous.get("templates", {})
    templates = config.get("templates", {})
    for label, template in templates.items():
        if label in old_templates and old_templates[label] != template:
            changed[f"templates[{label!r}]"] = (old_templates[label], template)
    if changed:
        raise ValueError(
            f"{out_dir} holds a run with other settings {changed} (before, now); resuming would mix "
            "them. Use another output folder, or delete that one."
        )
    if "templates" in config and any(label not in old_templates for label in templates):
        atomic_write_text(
            path, json.dumps({**previous, "templates": {**old_templates, **templates}}, indent=2)
        )


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
    max_prompt_tokens: int | None = None,
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
            kept, not recomputed; other settings raise ``ValueError``. A folder another run is writing to
            raises :class:`~em_hf.utils.files.FolderLockedError`.
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
        max_prompt_tokens (`int`, *optional*):
            Items whose rendered prompt is longer are skipped, with a note giving the reason (they are
            listed in ``EvalRun.skipped`` and written nowhere, so a later run with a larger cap answers
            them). Default: the model's ``max_position_embeddings`` less ``max_new_tokens``, else
            :data:`DEFAULT_MAX_PROMPT_TOKENS`.

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
    cap = _prompt_token_cap(model, max_new_tokens, max_prompt_tokens)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with _run_folder_lock(out):
        num_parameters = model.num_parameters()
        engine = (
            "hf" if generator in (None, generate_completions) else str(getattr(generator, "engine", "custom"))
        )
        _check_config(
            out,
            {
                "model": model_name,
                "max_new_tokens": max_new_tokens,
                "num_parameters": num_parameters,
                "engine": engine,
                "templates": {label: items[0].template for label, items in benchmarks.items()},
            },
        )
        items_path = out / ITEMS_FILE
        done = {_key(r) for r in read_records(items_path)}
        not_applicable: list[tuple[str, str]] = []
        skipped: list[tuple[str, str, str]] = []
        work: list[tuple[str, DecodingMethod, int, list[BenchmarkItem]]] = []
        for label, all_items in benchmarks.items():
            too_long = _too_long_prompts(tokenizer, all_items, cap)
            skipped += [(label, item_id, reason) for item_id, reason in too_long.items()]
            items = [item for item in all_items if item.id not in too_long]
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
        for label, item_id, reason in skipped:
            print(f"note: {label} item {item_id} skipped: {reason}")
        _drop_torn_tail(items_path)
        start = time.perf_counter()
        bar = tqdm(total=sum(len(w[3]) for w in work), desc="eval", unit="item", disable=not progress)
        with items_path.open("a", encoding="utf-8") as sink:
            for label, method, seed, pending in work:
                chunk = (
                    max(1, batch_size // method.num_trajectories) if method.strategy == "sc" else batch_size
                )
                for begin in range(0, len(pending), chunk):
                    bar.set_postfix_str(f"{label} {method.name} seed {seed}")
                    results = run_items(
                        model,
                        tokenizer,
                        pending[begin : begin + chunk],
                        method,
                        seed=seed,  # each item's sampling derives from (seed, benchmark, item id)
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
        run = write_reports(out, not_applicable, plot=plot, seconds=time.perf_counter() - start)
    run.skipped = skipped
    return run


@contextlib.contextmanager
def _run_folder_lock(out: Path) -> Iterator[None]:
    """Hold the run folder's lock; another run holding it raises :class:`FolderLockedError` at once."""
    try:
        with file_lock(out / LOCK_FILE, blocking=False):
            yield
    except FolderLockedError as error:  # only file_lock raises it
        raise FolderLockedError(
            f"Another evaluation is writing to {out} ({error}); wait for it to finish, or use another "
            "output folder. Running both would write every pending item twice."
        ) from None


def _prompt_token_cap(model, max_new_tokens: int, max_prompt_tokens: int | None) -> int:
    """``max_prompt_tokens``, or the model's context (``max_position_embeddings``) less the new tokens,
    or :data:`DEFAULT_MAX_PROMPT_TOKENS` for a model that does not say."""
    if max_prompt_tokens is not None:
        return check_int("max_prompt_tokens", max_prompt_tokens)
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(context, int) and not isinstance(context, bool) and context > max_new_tokens:
        return context - max_new_tokens
    return DEFAULT_MAX_PROMPT_TOKENS


def _too_long_prompts(tokenizer, items: Sequence[BenchmarkItem], cap: int) -> dict[str, str]:
    """Item id -> why it is skipped, for the items whose rendered prompt exceeds ``cap`` tokens.

    A prompt longer than ``cap`` times the longest token (in characters) cannot fit, and is rejected
    without tokenizing it (a 50 MB question would take minutes); the others are rendered and counted."""
    longest_token = max((len(token) for token in tokenizer.get_vocab()), default=1)
    reasons = {}
    for item in items:
        messages = item.prompt if isinstance(item.prompt, list) else [{"content": item.prompt}]
        chars = sum(len(str(message.get("content", ""))) for message in messages)
        if chars > cap * longest_token:
            reasons[item.id] = (
                f"its prompt has {chars} characters, more than {cap} tokens can hold "
                f"(max_prompt_tokens={cap})"
            )
            continue
        length = len(render_prompt(tokenizer, item.prompt))
        if length > cap:
            reasons[item.id] = f"its prompt has {length} tokens, over max_prompt_tokens={cap}"
    return reasons


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
    atomic_write_text(table_path, f"{table}\n\n{details}\n")
    plot_path = plot_accuracy_vs_flops(summaries, out / "accuracy_vs_flops.png") if plot else None
    return EvalRun(records, summaries, list(not_applicable), table_path, plot_path, seconds)
