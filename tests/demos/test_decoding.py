"""`em-hf demo`: the method comparison on arithmetic, its table, and the command line."""

from __future__ import annotations

import math
import statistics

import pytest

import em_hf.eval.methods as harness_methods
from em_hf.cli import build_parser, main
from em_hf.data.arithmetic import make_arithmetic_problems
from em_hf.demos.decoding import DEFAULT_DEMO_METHODS, run_demo
from em_hf.eval.report import MethodSummary, format_seed_table
from em_hf.generation.batched import Completion
from em_hf.generation.decoding import parse_method
from tests.helpers import WORD_VOCAB_SIZE, make_tiny_llama, make_word_tokenizer

VOCAB = WORD_VOCAB_SIZE


def test_run_demo_on_a_tiny_model():
    methods = ["greedy", "sample", "em-inf"]
    summaries = run_demo(
        make_tiny_llama(sharpen=10.0),
        make_word_tokenizer(),
        methods=methods,
        n_items=4,
        seeds=(0, 1),
        max_new_tokens=4,
        batch_size=3,
        progress=False,
    )
    assert [s.method for s in summaries] == methods
    assert {s.method: s.n_seeds for s in summaries} == {"greedy": 1, "sample": 2, "em-inf": 2}
    for s in summaries:
        assert s.n_items == 4
        assert 0.0 <= s.accuracy <= 1.0
        assert s.accuracy_std >= 0.0
        assert 1.0 <= s.tokens <= 4.0
        assert 0.0 <= s.mean_entropy <= math.log(VOCAB) + 1e-6
        assert s.tokens_per_s > 0
    assert summaries[0].accuracy_std == 0.0  # one greedy run


def test_run_demo_aggregates_over_seeds(monkeypatch):
    """Accuracy is the mean over seeds of the fraction correct, with the standard deviation over seeds;
    entropy and length are means over all completions; greedy runs once."""
    problems = make_arithmetic_problems(4, seed=0)
    calls = []

    def fake_generate(model, tokenizer, prompts, method, *, seed, **kwargs):
        calls.append((method.name, seed))
        assert prompts == [p.messages for p in problems]
        right = {0: 4, 1: 1, 2: 2}[seed]  # items answered correctly for this seed
        texts = [f"= {p.answer}" if i < right else f"= {p.answer + 1}" for i, p in enumerate(problems)]
        completions = [
            Completion(text=t, num_tokens=seed + 2, mean_entropy=0.5 * seed, seconds=0.5) for t in texts
        ]
        return completions, 2.0

    monkeypatch.setattr(harness_methods, "generate_completions", fake_generate)
    sample, greedy = run_demo(
        make_tiny_llama(),
        None,
        methods=["sample:t=0.5", parse_method("greedy")],
        n_items=4,
        seeds=(0, 1, 2),
        progress=False,
    )
    assert calls == [("sample:t=0.5", 0), ("sample:t=0.5", 1), ("sample:t=0.5", 2), ("greedy", 0)]
    assert sample.method == "sample:t=0.5"
    assert sample.accuracy == pytest.approx(statistics.fmean([1.0, 0.25, 0.5]))
    assert sample.accuracy_std == pytest.approx(statistics.stdev([1.0, 0.25, 0.5]))
    assert sample.mean_entropy == pytest.approx(0.5)
    assert sample.tokens == pytest.approx(3.0)
    assert sample.tokens_per_s == pytest.approx(4 * (2 + 3 + 4) / 6.0)
    assert (greedy.n_seeds, greedy.accuracy, greedy.accuracy_std) == (1, 1.0, 0.0)


def test_run_demo_argument_errors():
    with pytest.raises(ValueError, match="`seeds` is empty"):
        run_demo(None, None, seeds=())
    with pytest.raises(ValueError, match="`methods` is empty"):
        run_demo(None, None, methods=[])
    with pytest.raises(ValueError, match="Unknown decoding method 'beam'"):
        run_demo(None, None, methods=["beam"])


def test_format_table():
    summaries = [
        MethodSummary(
            "arithmetic", "greedy", 40, 1, 0.375, 0.2, 0.5, 5.25, 0.1, 1e9, 0.12345, None, 0.0, 100.0
        ),
        MethodSummary("arithmetic", "em-inf:t=0.1", 40, 3, 0.5, 0.4, 0.6, 6.0, 0.1, 1e9, 0.5, 0.7, 0.1, 80.0),
    ]
    lines = format_seed_table(summaries).splitlines()
    assert len(lines) == 2 + len(summaries)
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[0] == "method"
    assert header[1].startswith("accuracy")
    assert set(lines[1]) <= set("|-")
    assert lines[2].startswith("| greedy |")
    assert "37.5% ± 0.0" in lines[2]
    assert "40 x 1" in lines[2]
    assert "0.123" in lines[2]
    assert lines[3].startswith("| em-inf:t=0.1 |")
    assert "50.0% ± 10.0" in lines[3]
    assert "40 x 3" in lines[3]
    for line in lines:  # every row has the header's columns
        assert line.count("|") == lines[0].count("|")


def test_cli_parses_methods():
    args = build_parser().parse_args(["demo", "--methods", "sample", "em-inf:t=0.1,n_steps=5"])
    assert args.command == "demo"
    assert args.methods == ["sample", "em-inf:t=0.1,n_steps=5"]


def test_cli_defaults():
    args = build_parser().parse_args(["demo"])
    assert args.model == "default"
    assert not args.load_in_8bit
    assert list(args.methods) == list(DEFAULT_DEMO_METHODS)
    assert (args.items, args.seeds, args.max_new_tokens, args.batch_size) == (60, 3, 32, 64)
    assert (args.one_shot_steps, args.one_shot_samples, args.one_shot_max_tokens) == (10, 16, 48)
    for method in args.methods:  # the defaults parse
        parse_method(method)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--methods", "beam"], "Unknown decoding method 'beam'"),
        (["demo", "--methods", "sample", "em-inf:foo=1"], "Bad option in decoding method 'em-inf:foo=1'"),
        (["demo", "--methods", "greedy:t=0.5"], "`greedy` takes no sampling options"),
        (["demo", "--items", "0"], "must be an integer >= 1, got 0"),
        (["demo", "--seeds", "-1"], "must be an integer >= 1"),
        (["demo", "--items", "many"], "--items"),
        (["demo", "--one-shot-steps", "-1"], "must be an integer >= 0, got -1"),
        (["select", "--k", "0"], "must be an integer >= 1, got 0"),
        ([], "command"),
    ],
)
def test_cli_rejects_bad_arguments(capsys, argv, message):
    with pytest.raises(SystemExit) as excinfo:
        build_parser().parse_args(argv)
    assert excinfo.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_demo_end_to_end(tmp_path, capsys):
    folder = tmp_path / "tiny"
    make_tiny_llama(sharpen=10.0).save_pretrained(folder)
    make_word_tokenizer().save_pretrained(folder)
    code = main(
        [
            "demo",
            "--model",
            str(folder),
            "--methods",
            "greedy",
            "sample:t=0.5",
            "--items",
            "3",
            "--seeds",
            "2",
            "--max-new-tokens",
            "3",
            "--one-shot-steps",
            "0",
            "--no-progress",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| method |")
    assert rows[1].startswith("| greedy |")
    assert " 3 x 1 " in rows[1]
    assert rows[2].startswith("| sample:t=0.5 |")
    assert " 3 x 2 " in rows[2]
    assert len(rows) == 3
    assert "3 arithmetic problems" in out


def test_cli_build_ops_reports_the_backend(capsys, monkeypatch):
    monkeypatch.setenv("EM_HF_ENTROPY_BACKEND", "auto")
    assert main(["build-ops"]) == 0
    assert "backend: cpp" in capsys.readouterr().out
