"""The shared harness of the entropy benchmarks (``bench_*.py`` beside it); not a benchmark itself.

It holds what every section uses:

- the worker protocol: each measured case runs in a FRESH interpreter (the file that defines the
  worker function, run with ``--worker SPEC``), which prints one JSON line back (``BENCH_RESULT ...``);
- the THP runs: each worker runs with ``THP_MEM_ALLOC_ENABLE`` unset (THP "off": what a user gets by
  default) and/or set to 1 (THP "on": torch's CPU allocator asks for transparent huge pages);
- the roofline (read/write bandwidth, ``torch.exp`` throughput, measured in a child process);
- timing and memory helpers (best/median of repeats, RSS high-water mark of the timed calls);
- table and ratio formatting, the run's header;
- the common command line: ``--quick --threads --thp --repeats --json --worker-timeout``, plus the
  options of the sections a script runs (``--sections`` when it runs more than one).

A section is a :class:`Section`: its name, its options and the function that runs it (spawning its
workers through :meth:`Run.spawn`) and prints its tables. A script runs its sections with
``main([SECTION], __doc__)``. Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

RESULT_PREFIX = "BENCH_RESULT "
THP_ENV = "THP_MEM_ALLOC_ENABLE"
THP_SETTINGS = {"off": None, "on": "1"}  # off = unset: the default a user gets
THP_LABEL = {"off": "off (default)", "on": "on"}  # in tables
THP_INLINE = {"off": "THP off = default", "on": "THP on"}  # in sentences
MIB = 2**20

Worker = Callable[[dict[str, Any]], dict[str, Any]]
Result = dict[str, Any]


# ----------------------------------------------------------------------------------------------------------
# Measurement helpers (used in the workers)
# ----------------------------------------------------------------------------------------------------------


def _proc_status_mib(key: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # kB
    return float("nan")


def rss_mib() -> float:
    """Current resident set size of this process."""
    return _proc_status_mib("VmRSS")


def peak_rss_mib() -> float:
    """High-water mark of the RSS (since the start, or since the last :func:`reset_peak_rss`)."""
    return _proc_status_mib("VmHWM")


def max_rss_mib() -> float:
    """Max RSS of the whole process (getrusage; never reset)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False when the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def time_calls(call: Callable[[], Any], repeats: int, warmup: int = 1) -> tuple[list[float], Any]:
    """Seconds of each of ``repeats`` calls after ``warmup`` untimed ones; also the last call's result."""
    for _ in range(warmup):
        call()
    times, result = [], None
    for _ in range(repeats):
        result = None  # the previous result is freed before the next call, not during it
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
    return times, result


def measure_peak(call: Callable[[], Any], repeats: int) -> dict[str, Any]:
    """Time ``call`` (one warm-up) and measure the RSS peak of the timed calls over the RSS before them."""
    call()  # warm-up
    scoped = reset_peak_rss()  # first: the high-water mark restarts at the RSS read next
    baseline = rss_mib()
    times, result = time_calls(call, repeats, warmup=0)
    peak = peak_rss_mib()
    return {
        "times": times,
        "result": result,
        "baseline_mib": baseline,
        "extra_peak_mib": peak - baseline,
        "peak_scope": "timed calls" if scoped else "whole process",
        "max_rss_mib": max_rss_mib(),
    }


def make_logits(rows: int, vocab: int, dtype: torch.dtype, seed: int = 0, std: float = 3.0) -> torch.Tensor:
    """Random logits, fully written here (so the timed calls never fault them in), a block of rows at a
    time (so a bfloat16 tensor never has a full float32 copy raising the process's max RSS)."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.empty(rows, vocab, dtype=dtype)
    for block in logits.split(64):
        block.copy_(torch.randn(block.shape, generator=generator).mul_(std))
    return logits


# ----------------------------------------------------------------------------------------------------------
# Roofline
# ----------------------------------------------------------------------------------------------------------


def memory_bandwidth(mib: int, repeats: int = 5) -> tuple[float, float]:
    """(read, write) GB/s: ``x.sum()`` and ``x.fill_()`` over a pre-touched float32 buffer of ``mib`` MiB."""
    buffer = torch.ones(mib * MIB // 4)
    read_times, _ = time_calls(buffer.sum, repeats)
    write_times, _ = time_calls(lambda: buffer.fill_(2.0), repeats)
    nbytes = buffer.numel() * buffer.element_size()
    return nbytes / min(read_times) / 1e9, nbytes / min(write_times) / 1e9


def exp_throughput(elements: int, repeats: int = 5) -> float:
    """float32 exps per second: ``torch.exp(x, out=y)`` into a preallocated (touched) output."""
    source = torch.rand(elements)
    out = torch.empty_like(source).zero_()
    times, _ = time_calls(lambda: torch.exp(source, out=out), repeats)
    return elements / min(times)


def roofline_worker(spec: dict[str, Any]) -> dict[str, Any]:
    read_gbs, write_gbs = memory_bandwidth(spec["read_mib"])
    return {"read_gbs": read_gbs, "write_gbs": write_gbs, "exp_per_s": exp_throughput(spec["exp_elements"])}


def roofline_seconds(roof: dict[str, Any] | None, read: float, written: float, exps: float) -> float | None:
    """Lower bound on the time: max(memory traffic at the measured bandwidths, exps at the exp rate)."""
    if not roof:
        return None
    memory = read / (roof["read_gbs"] * 1e9) + written / (roof["write_gbs"] * 1e9)
    return max(memory, exps / roof["exp_per_s"])


# ----------------------------------------------------------------------------------------------------------
# Printing helpers
# ----------------------------------------------------------------------------------------------------------


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 2) -> None:
    """An aligned text table; the first ``left`` columns are left-aligned, the others right-aligned."""
    print(format_table(headers, rows, left), flush=True)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 2) -> str:
    """The text of :func:`print_table`, ending with an empty line."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for index, row in enumerate(cells):
        aligned = [
            c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append(("  " + "  ".join(aligned)).rstrip())
        if index == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def fmt(value: float | None, spec: str = ".3f") -> str:
    """``format(value, spec)``, or "-" for a missing value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def ratio_text(numerator: float | None, denominator: float | None) -> str:
    """``numerator / denominator`` as ``12.30x``, or ``n/a`` when either side is missing."""
    if numerator is None or not denominator:
        return "n/a"
    return f"{numerator / denominator:.2f}x"


def per_thp(values: dict[str, str]) -> str:
    """'12.30x (THP off = default), 4.10x (THP on)'."""
    return ", ".join(f"{text} ({THP_INLINE[thp]})" for thp, text in values.items())


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def system_thp() -> str:
    try:
        return Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()
    except OSError:
        return "unknown"


def package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


# ----------------------------------------------------------------------------------------------------------
# A run: its common settings, spawning workers, the roofline
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """The settings every section shares (the common options); ``--quick`` shrinks each section's sizes."""

    threads: int = 1
    thp: Sequence[str] = ("off", "on")
    quick: bool = False
    repeats: int | None = None  # --repeats: overrides the timed repeats of the sections that take it
    worker_timeout: float = 3600.0
    json_path: str | None = None

    def size(self, quick: Any, full: Any) -> Any:
        """``quick`` with ``--quick``, else ``full``."""
        return quick if self.quick else full

    def timed_repeats(self, quick: int, full: int) -> int:
        """``--repeats`` when given, else the section's default for quick or full runs."""
        return self.repeats or self.size(quick, full)

    def spawn(self, worker: Worker, spec: dict[str, Any], thp: str) -> Result | None:
        """Run ``worker(spec)`` in a fresh interpreter (the worker's own file with ``--worker``) with the
        THP setting; None (and the error's tail printed) when the worker fails."""
        env = dict(os.environ)
        env.pop(THP_ENV, None)
        if THP_SETTINGS[thp] is not None:
            env[THP_ENV] = THP_SETTINGS[thp]
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(self.threads)
        script = Path(sys.modules[worker.__module__].__file__ or "").resolve()
        payload = json.dumps({"task": worker.__name__, **spec, "threads": self.threads})
        command, timeout = [sys.executable, str(script), "--worker", payload], self.worker_timeout
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            print(f"    [worker timed out after {timeout:.0f} s: {spec}]", flush=True)
            return None
        for line in reversed(done.stdout.splitlines()):
            if line.startswith(RESULT_PREFIX):
                return json.loads(line[len(RESULT_PREFIX) :])
        tail = "\n      ".join((done.stdout + done.stderr).strip().splitlines()[-8:])
        print(f"    [worker failed (exit {done.returncode}): {spec}]\n      {tail}", flush=True)
        return None

    def spawn_each_thp(self, worker: Worker, spec: dict[str, Any]) -> dict[str, Result | None]:
        """One worker per THP setting: {thp: result or None}."""
        return {thp: self.spawn(worker, spec, thp) for thp in self.thp}

    def spawn_grid(
        self, worker: Worker, variants: Sequence[str], spec_of: Callable[[str], dict[str, Any]]
    ) -> dict[tuple[str, str], Result]:
        """One worker per variant and THP setting: {(variant, thp): result}, failed workers left out."""
        results = {}
        for variant in variants:
            for thp, result in self.spawn_each_thp(worker, spec_of(variant)).items():
                if result is not None:
                    results[(variant, thp)] = result
        return results

    def roofline(self, read_mib: int, exp_elements: int) -> dict[str, Result | None]:
        """Measure and print the roofline (one child per THP setting): {thp: result or None}."""
        spec = {"read_mib": read_mib, "exp_elements": exp_elements}
        roofline = self.spawn_each_thp(roofline_worker, spec)
        print(
            f"== roofline, {self.threads} thread(s): {read_mib} MiB pre-touched float32 "
            f"buffer, torch.exp on {exp_elements} floats"
        )
        rows = [
            [
                THP_LABEL[thp],
                fmt(r["read_gbs"], ".1f"),
                fmt(r["write_gbs"], ".1f"),
                fmt(r["exp_per_s"] / 1e9, ".2f"),
            ]
            for thp, r in roofline.items()
            if r
        ]
        headers = ["THP", "read GB/s (x.sum)", "write GB/s (x.fill_)", "Gexp/s (torch.exp out=)"]
        print_table(headers, rows, left=1)
        return roofline

    def print_header(self, sections: Sequence[str]) -> None:
        from em_hf.ops import backend

        versions = ", ".join(f"{name} {package_version(name)}" for name in ("transformers", "trl"))
        settings = " and ".join(THP_LABEL[t] for t in self.thp)
        print(
            "== em_hf entropy benchmark"
            + (" --quick: small shapes, NOT the issue's numbers" if self.quick else "")
        )
        print(f"  torch {torch.__version__}, {versions}")
        print(f"  em_hf backend: {backend()} (cpp = compiled CPU kernels; torch = chunked PyTorch fallback)")
        print(f"  CPU: {cpu_model()} ({os.cpu_count()} logical CPUs); worker threads: {self.threads}")
        print(f"  system THP (/sys/kernel/mm/transparent_hugepage/enabled): {system_thp()}")
        shell = os.environ.get(THP_ENV, "unset")
        print(f"  {THP_ENV} in this shell: {shell}; workers run with THP {settings}")
        print("  (THP off = the variable unset = what a user gets by default)")
        print(f"  sections: {', '.join(sections)}\n", flush=True)


def run_worker(spec_json: str) -> None:
    """Child side: run the ``*_worker`` function named by the spec (in the script run as ``__main__``)
    and print its JSON line."""
    spec = json.loads(spec_json)
    if not spec["task"].endswith("_worker"):
        raise SystemExit(f"not a worker: {spec['task']!r}")
    torch.set_num_threads(spec["threads"])
    result = getattr(sys.modules["__main__"], spec["task"])(spec)
    print(RESULT_PREFIX + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------------------------------------
# Sections and the command line
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """One benchmark section: ``prepare(run, args)`` checks its options (before any section runs) and
    returns its settings; ``run(run, settings)`` prints its tables and returns its results (for --json)."""

    name: str
    run: Callable[[Run, Any], dict[str, Any]]
    add_arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None
    prepare: Callable[[Run, argparse.Namespace], Any] = lambda run, args: args
    takes_repeats: bool = False  # whether --repeats sets its timed repeats


def parse_shapes(text: str, dims: int) -> list[tuple[int, ...]]:
    """'4096x49152,2048x151936' -> [(4096, 49152), (2048, 151936)], each with ``dims`` sizes."""
    shapes = [tuple(int(size) for size in item.lower().split("x")) for item in text.split(",")]
    if any(len(shape) != dims for shape in shapes):
        raise SystemExit(f"expected shapes of {dims} sizes joined by 'x', got {text!r}")
    return shapes


def parse_list(text: str, allowed: Sequence[str], what: str) -> list[str]:
    """'a,b' -> ['a', 'b'], every item one of ``allowed`` (else SystemExit naming the unknown ones)."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in items if item not in allowed]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (choose from {', '.join(allowed)})")
    return items


def build_parser(sections: Sequence[Section], description: str | None = None) -> argparse.ArgumentParser:
    """The common options, ``--sections`` when there are several, and each section's own options."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    names = [section.name for section in sections]
    if len(sections) > 1:
        parser.add_argument("--sections", default=",".join(names), help=f"comma list of {','.join(names)}")
    parser.add_argument("--quick", action="store_true", help="small shapes and repeats: checks that it runs")
    parser.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads in the workers")
    parser.add_argument(
        "--thp",
        default=None,
        help="THP_MEM_ALLOC_ENABLE: off (unset), on (=1); default off,on (--quick: off)",
    )
    timed = [section.name for section in sections if section.takes_repeats]
    if timed:
        parser.add_argument("--repeats", type=int, default=None, help=f"timed repeats ({', '.join(timed)})")
    for section in sections:
        section.add_arguments(parser)
    parser.add_argument("--worker-timeout", type=float, default=3600.0, help="seconds per worker process")
    parser.add_argument("--json", default=None, help="also write every result to this JSON file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser


def make_run(args: argparse.Namespace) -> Run:
    """The common settings from the parsed options."""
    thp = args.thp or ("off" if args.quick else "off,on")
    return Run(
        threads=args.threads,
        thp=parse_list(thp, tuple(THP_SETTINGS), "THP setting"),
        quick=args.quick,
        repeats=getattr(args, "repeats", None),
        worker_timeout=args.worker_timeout,
        json_path=args.json,
    )


def main(sections: Sequence[Section], description: str | None = None, argv: list[str] | None = None) -> None:
    """Parse the command line, then either be a worker (``--worker``) or run the chosen sections."""
    args = build_parser(sections, description).parse_args(argv)
    if args.worker:
        run_worker(args.worker)
        return
    if not sections:
        raise SystemExit("this is the harness: run one of the bench_*.py scripts beside it")
    by_name = {section.name: section for section in sections}
    chosen = parse_list(getattr(args, "sections", ",".join(by_name)), tuple(by_name), "section")
    run = make_run(args)
    settings = {name: by_name[name].prepare(run, args) for name in chosen}
    run.print_header(chosen)
    start = time.perf_counter()
    results = {name: by_name[name].run(run, settings[name]) for name in chosen}
    print(f"== done in {time.perf_counter() - start:.0f} s")
    if run.json_path:
        Path(run.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(run.json_path).write_text(json.dumps(results, indent=1, default=str))
        print(f"   results written to {run.json_path}")


if __name__ == "__main__":  # the roofline's workers run this file
    main([])
