"""Benchmark registry: loaders that turn the papers' evaluation sets into normalized items.

Every benchmark gives :class:`BenchmarkItem` records (id, chat prompt, reference answer or tests,
metadata). A loader reads, in this order:

1. a user-given ``path`` (the benchmark's file, or a folder holding it);
2. the shared benchmark folder: ``$EM_HF_BENCHMARKS`` when set, else the first ``shared/benchmarks``
   found beside or above the current directory or the package's checkout (a ``shared/benchmarks``
   folder next to a source checkout);
3. the Hugging Face Hub (``datasets.load_dataset(hub_id, ...)``; needs network, and its column names
   are mapped with the same tolerant field lookup).

Prompt templates (override with ``template=``, a string with ``{question}``): math and physics use
the papers' "Please reason step by step, and put your final answer within \\boxed{}." suffix; LeetCode
uses the DeepSeek-Coder prompt (``prompt_sft``: the problem and a ```python stub) followed by an
instruction to answer with one complete ```python block. A benchmark may be written
``NAME[:key=value,...]``: ``math500:level=1,type=Algebra`` keeps items whose metadata match,
``arithmetic:n=100,seed=1`` sizes the package's own arithmetic set.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from em_hf.utils.answers import extract_boxed

__all__ = [
    "BENCHMARKS",
    "BENCHMARKS_ENV",
    "CODE_TEMPLATE",
    "MATH_TEMPLATE",
    "MAX_NEW_TOKENS",
    "PHYSICS_TEMPLATE",
    "BenchmarkItem",
    "BenchmarkSpec",
    "default_max_new_tokens",
    "describe_source",
    "find_benchmarks_dir",
    "hub_reachable",
    "load_benchmark",
    "parse_benchmark",
]

BENCHMARKS_ENV = "EM_HF_BENCHMARKS"
MATH_TEMPLATE = "{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
PHYSICS_TEMPLATE = (
    "{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}. "
    "If there are several answers, put them in one \\boxed{{}} separated by commas; "
    "give numbers without units."
)
CODE_TEMPLATE = (
    "{question}\n\nWrite the complete solution (the whole `class Solution`) in a single ```python code block."
)
TASKS = ("math", "physics", "code", "arithmetic")
# Default new-token budget per task (``em-hf eval --max-new-tokens``): the papers' reasoning length for
# math, physics and code (4096-token sequences with prompts under 1024 tokens: Unreasonable
# Effectiveness of EM, appendix D), and the demo's 32 for one-line arithmetic answers.
MAX_NEW_TOKENS = {"math": 3072, "physics": 3072, "code": 3072, "arithmetic": 32}


@dataclass(frozen=True)
class BenchmarkItem:
    """One evaluation item.

    ``task`` picks the grader: ``math`` (:func:`~em_hf.eval.grading.grade_math` against
    ``reference``), ``physics`` (:func:`~em_hf.eval.grading.grade_physics` against ``references``),
    ``code`` (:func:`~em_hf.eval.sandbox.run_code` of the completion's code block with ``tests``),
    ``arithmetic`` (last integer equals ``reference``).

    Parameters:
        benchmark (`str`):
            The registered benchmark name (``math500``, ``arithmetic``, ...).
        id (`str`):
            The item's id, unique within the benchmark (it keys resumable runs).
        task (`str`):
            One of :data:`TASKS`: ``math``, ``physics``, ``code`` or ``arithmetic``; it picks the grader.
        question (`str`):
            The raw problem text.
        prompt (`list[dict[str, str]]`):
            The chat messages sent to the model (the question in the benchmark's prompt template).
        reference (`str`, *optional*):
            The reference final answer (math, arithmetic).
        references (`tuple[str, ...]`, *optional*, defaults to `()`):
            The reference answers (physics; several for multiple-answer items).
        tests (`str`, *optional*):
            Python test code run after the completion's code block (code).
        metadata (`dict[str, Any]`, *optional*, defaults to `{}`):
            The other fields of the row (level, type, difficulty, ...); ``NAME:key=value`` filters on them.
        template (`str`, *optional*):
            The prompt template the prompt was built with (a resumed run checks it did not change).

    Examples:
        >>> from em_hf.eval import load_benchmark
        >>> item = load_benchmark("arithmetic:n=2")[0]
        >>> item.question, item.reference, item.task
        ('Compute 13 + 14. Reply with just the number.', '27', 'arithmetic')
    """

    benchmark: str
    id: str
    task: str
    question: str
    prompt: list[dict[str, str]]
    reference: str | None = None
    references: tuple[str, ...] = ()
    tests: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    template: str | None = None


@dataclass(frozen=True)
class BenchmarkSpec:
    """A registered benchmark (an entry of ``benchmarks.json`` beside this module): its task, its file
    in the shared benchmark folder, its Hub source, the row keys its items are read from (each tried in
    order) and its default prompt template.

    Parameters:
        name (`str`):
            The name in ``NAME[:key=value]`` specs.
        task (`str`):
            ``"math"``, ``"physics"``, ``"code"`` or ``"arithmetic"``: picks the converter and the grader.
        filename (`str` or `None`):
            The file in the shared benchmark folder (None: generated, no file).
        hub (`tuple[str, str | None, str]` or `None`):
            ``(dataset id, config, split)`` for ``datasets.load_dataset`` when no file is found.
        fields (`dict[str, tuple[str, ...]]`):
            Row keys tried in order for ``question``, ``answer`` (math: empty = the last box of the
            gold solution), ``tests`` (code) and ``id``.
        template (`str`):
            The default prompt template (with ``{question}``).
        description (`str`):
            One line for ``em-hf eval --help`` and the docs.

    Examples:
        >>> from em_hf.eval.benchmarks import BENCHMARKS
        >>> spec = BENCHMARKS["math500"]
        >>> spec.task, spec.filename, spec.fields["answer"]
        ('math', 'math500.json', ('expected_answer', 'answer'))
    """

    name: str
    task: str
    filename: str | None
    hub: tuple[str, str | None, str] | None  # (dataset id, config, split)
    fields: dict[str, tuple[str, ...]]
    template: str
    description: str

    def to_item(self, row: dict[str, Any], index: int, template: str) -> BenchmarkItem:
        """The item of one raw row, by the spec's task."""
        return _CONVERTERS[self.task](self, row, index, template)


def _first(row: dict[str, Any], keys: Iterable[str], what: str, name: str) -> Any:
    keys = list(keys)
    for key in keys:
        if key in row and row[key] is not None:
            return row[key]
    empty = [key for key in keys if key in row]
    if empty:
        raise ValueError(f"its {what} field {empty[0]!r} is null; give the item a {what} or remove it.")
    raise ValueError(f"it has no {what} field (looked for {keys}); its keys are {sorted(map(str, row))}.")


def _messages(template: str, question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": template.format(question=question)}]


def _answer_text(value: Any) -> str:
    if isinstance(value, list):  # OlympiadBench: a one-element list
        value = ", ".join(str(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    if text.startswith("$") and text.endswith("$") and text.count("$") == 2:
        text = text.strip("$").strip()
    return text


def _item_id(row: dict[str, Any], index: int, keys: Iterable[str]) -> str:
    for key in keys:
        if row.get(key) is not None:
            return str(row[key])
    return str(index)


def _item(
    spec: BenchmarkSpec, row: dict[str, Any], index: int, template: str, **values: Any
) -> BenchmarkItem:
    question = str(_first(row, spec.fields["question"], "question", spec.name))
    return BenchmarkItem(
        benchmark=spec.name,
        id=_item_id(row, index, spec.fields["id"]),
        task=spec.task,
        question=question,
        prompt=_messages(template, question),
        template=template,
        **values,
    )


def _math_item(spec: BenchmarkSpec, row: dict[str, Any], index: int, template: str) -> BenchmarkItem:
    if spec.fields["answer"]:
        reference = _answer_text(_first(row, spec.fields["answer"], "answer", spec.name))
    else:  # Minerva: the answer is the last box of the gold solution
        solution = str(_first(row, ("solution",), "solution", spec.name))
        reference = extract_boxed(solution)
        if reference is None:
            raise ValueError("its solution has no \\boxed{} answer.")
    metadata = {
        k: v for k, v in row.items() if k in ("level", "type", "subject", "url", "subfield", "solution")
    }
    if isinstance(metadata.get("level"), str) and metadata["level"].startswith("Level "):
        metadata["level"] = int(metadata["level"].removeprefix("Level ").strip() or 0)
    return _item(spec, row, index, template, reference=reference, metadata=metadata)


def _physics_item(spec: BenchmarkSpec, row: dict[str, Any], index: int, template: str) -> BenchmarkItem:
    from em_hf.eval.grading import split_top_level

    answers = str(_first(row, spec.fields["answer"], "answer", spec.name))
    box = extract_boxed(answers) if "\\boxed" in answers else answers
    if box is None:
        raise ValueError(f"cannot read its answer {answers!r}.")
    references = tuple(split_top_level(box)) if row.get("is_multiple_answer") else (box,)
    metadata = {k: row[k] for k in ("answer_type", "unit", "topic", "level") if k in row}
    return _item(spec, row, index, template, reference=box, references=references, metadata=metadata)


def _code_item(spec: BenchmarkSpec, row: dict[str, Any], index: int, template: str) -> BenchmarkItem:
    tests = str(_first(row, spec.fields["tests"], "test", spec.name))
    meta = row.get("meta") or {}
    metadata = {"difficulty": meta.get("difficulty"), "title": row.get("title")}
    return _item(spec, row, index, template, tests=tests, metadata=metadata)


_CONVERTERS = {"math": _math_item, "physics": _physics_item, "code": _code_item}
_TEMPLATES = {
    "math": MATH_TEMPLATE,
    "physics": PHYSICS_TEMPLATE,
    "code": CODE_TEMPLATE,
    "plain": "{question}",
}


def _load_registry() -> dict[str, BenchmarkSpec]:
    entries = json.loads((Path(__file__).with_name("benchmarks.json")).read_text(encoding="utf-8"))
    return {
        entry["name"]: BenchmarkSpec(
            name=entry["name"],
            task=entry["task"],
            filename=entry["file"],
            hub=tuple(entry["hub"]) if entry["hub"] else None,
            fields={key: tuple(keys) for key, keys in entry["fields"].items()},
            template=_TEMPLATES[entry["template"]],
            description=entry["description"],
        )
        for entry in entries["benchmarks"]
    }


BENCHMARKS: dict[str, BenchmarkSpec] = _load_registry()


def _candidate_roots() -> list[Path]:
    roots = [Path.cwd(), Path(__file__).resolve().parents[2]]
    seen, ordered = set(), []
    for root in roots:
        for folder in (root, *root.parents):
            if folder not in seen:
                seen.add(folder)
                ordered.append(folder)
    return ordered


def find_benchmarks_dir() -> Path | None:
    """The shared benchmark folder: ``$EM_HF_BENCHMARKS`` (which must exist when set), else the first
    ``shared/benchmarks`` in the current directory, the package checkout, or a parent of either."""
    env = os.environ.get(BENCHMARKS_ENV)
    if env:
        folder = Path(env).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(
                f"${BENCHMARKS_ENV} is set to {env!r}, which is not a folder; point it at the folder "
                "holding math500.json, amc.jsonl, ... or unset it."
            )
        return folder
    for root in _candidate_roots():
        candidate = root / "shared" / "benchmarks"
        if candidate.is_dir():
            return candidate
    return None


def _read_rows(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of a benchmark file, and where each comes from (``file:line`` for JSON Lines, ``file row N``
    otherwise). Every row must be a JSON object; a malformed one raises ``ValueError`` naming the file and
    the line.

    JSON Lines are parsed here, line by line: ``datasets``' JSON builder names neither the file nor the
    line of a malformed one, and accepts a line that is not an object. Parquet goes through
    ``datasets.load_dataset("parquet", ...)``."""
    if path.suffix not in (".json", ".jsonl", ".parquet"):
        raise ValueError(f"{path}: unsupported file type {path.suffix!r} (use .json, .jsonl or .parquet).")
    if path.suffix == ".jsonl":
        rows, places = [], []
        with path.open(encoding="utf-8") as file:
            for number, line in enumerate(file, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(
                        f"{path}:{number}: not valid JSON ({error.msg}, column {error.colno})."
                    ) from None
                places.append(f"{path}:{number}")
                rows.append(_check_row(row, places[-1]))
        return rows, places
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{path}:{error.lineno}: not valid JSON ({error.msg}, column {error.colno})."
            ) from None
        if isinstance(data, dict):
            # pandas' column-oriented layout ({"problem": {"0": ..., "1": ...}, ...}, as MATH-500's file).
            import pandas

            data = pandas.DataFrame(data).to_dict("records")
        if not isinstance(data, list):
            raise ValueError(
                f"{path}: expected a list of objects or a column-oriented object, got {type(data).__name__}."
            )
        places = [f"{path} row {index + 1}" for index in range(len(data))]
        return [_check_row(row, place) for row, place in zip(data, places, strict=True)], places
    from datasets import load_dataset

    rows = [dict(row) for row in load_dataset("parquet", data_files=str(path), split="train")]
    return rows, [f"{path} row {index + 1}" for index in range(len(rows))]


def _check_row(row: Any, place: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise ValueError(
            f"{place}: expected a JSON object (one benchmark item), got {type(row).__name__} {row!r:.80}."
        )
    return row


def _rows(spec: BenchmarkSpec, path: str | os.PathLike | None) -> tuple[list[dict[str, Any]], list[str], str]:
    """The raw rows of a benchmark, where each comes from and the source (order in the module docstring)."""
    if path is not None:
        given = Path(path).expanduser()
        if given.is_dir():
            given = given / (spec.filename or "")
        if not given.is_file():
            raise FileNotFoundError(
                f"`path` for benchmark {spec.name!r} must be its file or a folder holding {spec.filename}; "
                f"{given} does not exist."
            )
        return (*_read_rows(given), str(given))
    folder = find_benchmarks_dir()
    if folder is not None and spec.filename and (folder / spec.filename).is_file():
        return (*_read_rows(folder / spec.filename), str(folder / spec.filename))
    looked = f"{spec.filename} was not found in ${BENCHMARKS_ENV} or a shared/benchmarks folder"
    if spec.hub is None:
        raise FileNotFoundError(f"{looked}. {describe_source(spec)}")
    if not hub_reachable():
        raise FileNotFoundError(
            f"{looked}, and the Hugging Face Hub is not reachable (offline, or HF_HUB_OFFLINE / "
            f"HF_DATASETS_OFFLINE is set). {describe_source(spec)}"
        )
    hub_id, config, split = spec.hub
    try:
        from datasets import load_dataset

        dataset = load_dataset(hub_id, config, split=split)
    except Exception as error:  # datasets raises many types for "no network" / "not found"
        raise FileNotFoundError(
            f"{looked}, and loading it from the Hugging Face Hub failed ({type(error).__name__}: {error}). "
            f"{describe_source(spec)}"
        ) from error
    rows = [dict(row) for row in dataset]
    return rows, [f"hf://{hub_id} row {index + 1}" for index in range(len(rows))], f"hf://{hub_id}"


def default_max_new_tokens(specs: Iterable[str]) -> int:
    """The new-token budget for a run over the benchmark specs ``specs``: the largest
    :data:`MAX_NEW_TOKENS` of their tasks (a run has one budget; short answers stop at EOS anyway).

    Examples:
        >>> from em_hf.eval.benchmarks import default_max_new_tokens
        >>> default_max_new_tokens(["arithmetic"]), default_max_new_tokens(["arithmetic", "math500:level=1"])
        (32, 3072)
    """
    tasks = [BENCHMARKS[parse_benchmark(spec)[0]].task for spec in specs]
    if not tasks:
        raise ValueError("`specs` is empty: give at least one benchmark.")
    return max(MAX_NEW_TOKENS[task] for task in tasks)


def describe_source(spec: BenchmarkSpec) -> str:
    """Where benchmark ``spec`` is read from, in order, and what its file must hold: for error messages
    and ``em-hf eval --help``.

    Parameters:
        spec (`BenchmarkSpec`):
            A registered benchmark (:data:`BENCHMARKS`).

    Examples:
        >>> from em_hf.eval.benchmarks import BENCHMARKS, describe_source
        >>> print(describe_source(BENCHMARKS["aime24"]))  # doctest: +ELLIPSIS
        Benchmark 'aime24' (AIME 2024 (30 problems)) is read from the file aime24.jsonl: ...
    """
    if spec.filename is None:
        return f"Benchmark {spec.name!r} ({spec.description}) is generated by the package; it has no file."
    last_box = "the last \\boxed{} of the gold solution"
    keys = "; ".join(
        f"{field} from {' or '.join(repr(key) for key in keys) or last_box}"
        for field, keys in spec.fields.items()
    )
    hub = (
        f", else from the Hugging Face Hub: datasets.load_dataset({spec.hub[0]!r}, {spec.hub[1]!r}, "
        f"split={spec.hub[2]!r}) (needs network)"
        if spec.hub
        else " (it has no Hugging Face Hub source)"
    )
    return (
        f"Benchmark {spec.name!r} ({spec.description}) is read from the file {spec.filename}: a given path "
        f"(CLI: --benchmark-dir FOLDER), else ${BENCHMARKS_ENV}/{spec.filename}, else "
        f"shared/benchmarks/{spec.filename} beside or above the current folder{hub}. File format: JSON "
        f"Lines (one object per line), a JSON list of objects, a pandas column-oriented JSON object, or "
        f"Parquet; each row gives {keys}."
    )


def hub_reachable(timeout_s: float = 2.0) -> bool:
    """Whether the Hugging Face Hub can be asked for a dataset: False when ``HF_HUB_OFFLINE`` or
    ``HF_DATASETS_OFFLINE`` is set, or when a TCP connection to the Hub's host does not open within
    ``timeout_s`` seconds (so an offline machine gets the error at once, without the download retries)."""
    import socket
    from urllib.parse import urlparse

    for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(variable, "").strip().lower() in ("1", "true", "yes", "on"):
            return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname or "huggingface.co", port), timeout=timeout_s):
            return True
    except OSError:
        return False


def parse_benchmark(spec: str) -> tuple[str, dict[str, str]]:
    """``NAME[:key=value,...]`` -> (name, options); the name must be registered."""
    name, _, options_text = spec.strip().partition(":")
    name = name.strip().lower()
    if name not in BENCHMARKS:
        raise ValueError(f"Unknown benchmark {name!r} in {spec!r}; choose from {sorted(BENCHMARKS)}.")
    options: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in options_text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"Option {part!r} of benchmark {spec!r} must be written key=value.")
        options[key.strip()] = value.strip()
    return name, options


def _arithmetic_items(options: dict[str, str], template: str) -> list[BenchmarkItem]:
    from em_hf.data.arithmetic import make_arithmetic_problems

    unknown = set(options) - {"n", "seed"}
    if unknown:
        raise ValueError(f"Benchmark 'arithmetic' takes options n= and seed=, got {sorted(unknown)}.")
    try:
        n, seed = int(options.get("n", 60)), int(options.get("seed", 0))
    except ValueError as error:
        raise ValueError(f"arithmetic options n= and seed= must be integers, got {options}.") from error
    return [
        BenchmarkItem(
            benchmark="arithmetic",
            id=p.id,
            task="arithmetic",
            question=p.prompt,
            prompt=_messages(template, p.prompt),
            reference=str(p.answer),
            template=template,
            metadata={"operands": sum(token.strip(".").isdigit() for token in p.question.split())},
        )
        for p in make_arithmetic_problems(n, seed=seed)
    ]


def load_benchmark(
    spec: str,
    path: str | os.PathLike | None = None,
    limit: int | None = None,
    template: str | None = None,
) -> list[BenchmarkItem]:
    """Items of a registered benchmark (``NAME[:key=value,...]``, module docstring), in file order,
    filtered by the options, then the first ``limit`` of them.

    Parameters:
        spec (`str`):
            ``NAME[:key=value,...]``: a registered name (:data:`BENCHMARKS`) and metadata filters, e.g.
            ``"math500:level=1"``; for ``arithmetic``, ``n`` and ``seed`` size the generated set.
        path (`str` or `os.PathLike`, *optional*):
            The benchmark's file or a folder holding it; defaults to the sources in the module docstring.
        limit (`int`, *optional*):
            Keep the first ``limit`` items (after filtering); `None` keeps all.
        template (`str`, *optional*):
            Overrides the prompt template: a string containing ``{question}``.

    Returns:
        `list[BenchmarkItem]`

    Examples:
        >>> from em_hf.eval.benchmarks import load_benchmark
        >>> items = load_benchmark("arithmetic:n=3")
        >>> [(item.id, item.reference) for item in items], items[0].task
        ([('arith-0-0', '27'), ('arith-0-1', '-24'), ('arith-0-2', '28')], 'arithmetic')
        >>> items[0].prompt
        [{'role': 'user', 'content': 'Compute 13 + 14. Reply with just the number.'}]
    """
    name, options = parse_benchmark(spec)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"`limit` must be an integer >= 1 or None, got {limit!r}.")
    benchmark = BENCHMARKS[name]
    template = benchmark.template if template is None else template
    if "{question}" not in template:
        raise ValueError(f"`template` must contain the placeholder {{question}}, got {template!r}.")
    if name == "arithmetic":
        items = _arithmetic_items(options, template)
    else:
        rows, places, source = _rows(benchmark, path)
        items = []
        for index, (row, place) in enumerate(zip(rows, places, strict=True)):
            try:
                items.append(benchmark.to_item(row, index, template))
            except ValueError as error:
                raise ValueError(f"{place}: {name} item {index}: {error}") from None
        if len({item.id for item in items}) < len(items):
            # Ids must key resumable runs; where the file repeats them (AMC), the row number is the id.
            items = [dataclasses.replace(item, id=str(index)) for index, item in enumerate(items)]
        for key, value in options.items():
            if not any(key in item.metadata for item in items):
                known = sorted({k for item in items for k in item.metadata if k != "solution"})
                raise ValueError(
                    f"Benchmark {name!r} items have no metadata {key!r} to filter on; known: {known}."
                )
            items = [item for item in items if str(item.metadata.get(key)).lower() == value.lower()]
        if not items:
            raise ValueError(f"Benchmark {spec!r} from {source} has no items matching {options}.")
    return items[:limit] if limit is not None else items
