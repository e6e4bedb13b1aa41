"""Smoke checks of the benchmark harness (examples/benchmarks/_harness.py): the table formatting and
the command line of the section scripts. Nothing here runs a worker or times anything."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "examples" / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    """The harness and the section scripts, imported as modules (they import each other by name)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        names = ("_harness", "bench_token_entropy", "bench_lm_head_entropy", "bench_em_inf", "bench_entropy")
        yield {name: importlib.import_module(name) for name in names}
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_format_table_aligns_columns(bench):
    text = bench["_harness"].format_table(
        ["variant", "THP", "best s"], [["ours", "off", "0.5"], ["naive", "on", "12.25"]]
    )
    assert text.splitlines() == [
        "  variant  THP  best s",
        "  -------  ---  ------",
        "  ours     off     0.5",
        "  naive    on    12.25",
    ]
    assert text.endswith("\n")


def test_number_formatting(bench):
    harness = bench["_harness"]
    assert (
        harness.fmt(None) == "-"
        and harness.fmt(float("nan")) == "-"
        and harness.fmt(1.23456, ".2f") == "1.23"
    )
    assert harness.ratio_text(3.0, 1.5) == "2.00x" and harness.ratio_text(None, 1.0) == "n/a"
    assert harness.ratio_text(1.0, 0.0) == "n/a"
    assert harness.per_thp({"off": "2.00x", "on": "1.50x"}) == "2.00x (THP off = default), 1.50x (THP on)"


def test_parsing_helpers(bench):
    harness = bench["_harness"]
    assert harness.parse_shapes("4096x49152,2x3", 2) == [(4096, 49152), (2, 3)]
    assert harness.parse_list("off, on", ("off", "on"), "THP setting") == ["off", "on"]
    with pytest.raises(SystemExit, match="expected shapes of 3 sizes"):
        harness.parse_shapes("4096x49152", 3)
    with pytest.raises(SystemExit, match="unknown THP setting: maybe"):
        harness.parse_list("off,maybe", ("off", "on"), "THP setting")


def test_section_script_options(bench):
    harness, token = bench["_harness"], bench["bench_token_entropy"]
    args = harness.build_parser([token.SECTION]).parse_args(
        ["--quick", "--repeats", "2", "--shapes", "8x16", "--dtypes", "float32", "--json", "out.json"]
    )
    assert not hasattr(args, "sections")
    run = harness.make_run(args)
    assert (run.quick, run.thp, run.repeats, run.json_path, run.threads) == (True, ["off"], 2, "out.json", 1)
    settings = token.TokenSettings.from_args(run, args)
    assert [(c.rows, c.vocab, c.dtype, c.mode) for c in settings.cases] == [
        (8, 16, "float32", "fwd"),
        (8, 16, "float32", "fwd+bwd"),
    ]
    assert settings.repeats == 2 and settings.share_process
    full = harness.make_run(harness.build_parser([token.SECTION]).parse_args([]))
    assert full.thp == ["off", "on"] and not full.quick and full.size(1, 3) == 3


def test_all_sections_script_options(bench):
    harness = bench["_harness"]
    sections = [
        bench[name].SECTION for name in ("bench_token_entropy", "bench_lm_head_entropy", "bench_em_inf")
    ]
    assert [section.name for section in sections] == ["token", "lmhead", "eminf"]
    parser = harness.build_parser(sections)
    args = parser.parse_args(["--sections", "lmhead", "--lmhead-shape", "8x4x16", "--thp", "on"])
    assert (args.sections, args.lmhead_shape, args.trl_chunk_size) == ("lmhead", "8x4x16", 32768)
    spec = sections[1].prepare(bench["_harness"].make_run(args), args)
    assert spec == {
        "rows": 8,
        "hidden": 4,
        "vocab": 16,
        "repeats": 2,
        "chunk_size": None,
        "trl_chunk_size": 32768,
    }
    # EM-INF alone takes no --repeats (its repeats are its own); the token and lmhead scripts do.
    with pytest.raises(SystemExit):
        harness.build_parser([sections[2]]).parse_args(["--repeats", "2"])
