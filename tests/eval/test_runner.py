"""A resumable run end to end on a tiny random model: files, resume (finished items are skipped),
settings checks, spec splitting, and the `em-hf eval` command on a saved tiny model."""

from __future__ import annotations

import json

import pytest

from em_hf.cli import main
from em_hf.eval import load_benchmark
from em_hf.eval import runner as runner_module
from em_hf.eval.runner import evaluate, read_records, split_specs
from tests.helpers import make_tiny_llama, make_word_tokenizer

METHODS = ["greedy", "sc:2", "em-inf:t=0.5,n_steps=2"]


def _run(model, tokenizer, out, **kwargs):
    defaults = dict(seeds=[0, 1], max_new_tokens=4, batch_size=4, progress=False)
    defaults.update(kwargs)
    return evaluate(
        model, tokenizer, {"arithmetic": load_benchmark("arithmetic:n=6")}, METHODS, out, **defaults
    )


def test_run_writes_items_table_and_plot(sharp_llama, word_tokenizer, tmp_path):
    run = _run(sharp_llama, word_tokenizer, tmp_path)
    # greedy once (deterministic), the two sampled methods once per seed
    assert len(run.records) == 6 * (1 + 2 + 2)
    keys = {(r["method"], r["seed"], r["item_id"]) for r in run.records}
    assert len(keys) == len(run.records)
    assert {r["seed"] for r in run.records if r["method"] == "greedy"} == {0}
    assert run.table_path.read_text().startswith("| method | arithmetic |")
    assert run.plot_path.is_file()
    assert json.loads((tmp_path / "config.json").read_text())["max_new_tokens"] == 4
    assert [s.method for s in run.summaries] == METHODS


def test_resume_skips_finished_items(sharp_llama, word_tokenizer, tmp_path, monkeypatch):
    first = _run(sharp_llama, word_tokenizer, tmp_path)
    path = tmp_path / "items.jsonl"
    lines = path.read_text().splitlines()
    kept = lines[:7] + lines[10:]  # "interrupt": lose three results, and leave a torn last line
    path.write_text("\n".join(kept) + "\n" + lines[7][:20])
    calls = []
    original = runner_module.run_items

    def counting(model, tokenizer, items, method, **kwargs):
        calls.append((method.name, [i.id for i in items]))
        return original(model, tokenizer, items, method, **kwargs)

    monkeypatch.setattr(runner_module, "run_items", counting)
    second = _run(sharp_llama, word_tokenizer, tmp_path)
    assert sum(len(ids) for _, ids in calls) == 3  # only the lost items were generated
    assert len(second.records) == len(first.records)
    by_key = {(r["method"], r["seed"], r["item_id"]): r for r in second.records}
    for record in first.records:
        if record["method"] == "greedy":  # deterministic: identical after resuming
            assert (
                by_key[(record["method"], record["seed"], record["item_id"])]["completion"]
                == record["completion"]
            )
    calls.clear()
    _run(sharp_llama, word_tokenizer, tmp_path)
    assert calls == []  # all done: nothing generated


def test_changed_settings_refuse_to_resume(sharp_llama, word_tokenizer, tmp_path):
    _run(sharp_llama, word_tokenizer, tmp_path, seeds=[0])
    with pytest.raises(ValueError, match=r"other settings.*max_new_tokens"):
        _run(sharp_llama, word_tokenizer, tmp_path, seeds=[0], max_new_tokens=5)


def test_bad_arguments(sharp_llama, word_tokenizer, tmp_path):
    with pytest.raises(ValueError, match="duplicates"):
        evaluate(
            sharp_llama,
            word_tokenizer,
            {"a": load_benchmark("arithmetic:n=2")},
            ["greedy", "greedy"],
            tmp_path,
        )
    with pytest.raises(ValueError, match="non-empty"):
        evaluate(sharp_llama, word_tokenizer, {"a": []}, ["greedy"], tmp_path)
    with pytest.raises(ValueError, match="`seeds`"):
        evaluate(
            sharp_llama,
            word_tokenizer,
            {"a": load_benchmark("arithmetic:n=2")},
            ["greedy"],
            tmp_path,
            seeds=[],
        )


def test_read_records_of_a_missing_file(tmp_path):
    assert read_records(tmp_path / "none.jsonl") == []


def test_split_specs():
    assert split_specs(["greedy,sample,sc:4,adaptive,em-inf"]) == [
        "greedy",
        "sample",
        "sc:4",
        "adaptive",
        "em-inf",
    ]
    assert split_specs(["em-inf:t=0.1,n_steps=5,greedy", "sc:n=4,t=0.5"]) == [
        "em-inf:t=0.1,n_steps=5",
        "greedy",
        "sc:n=4,t=0.5",
    ]
    assert split_specs(["math500:level=1,type=Algebra,arithmetic:n=5"]) == [
        "math500:level=1,type=Algebra",
        "arithmetic:n=5",
    ]


@pytest.fixture
def saved_tiny_model(tmp_path):
    folder = tmp_path / "tiny"
    make_tiny_llama().save_pretrained(folder)
    make_word_tokenizer().save_pretrained(folder)
    return folder


def test_cli_end_to_end(saved_tiny_model, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "eval",
        "--model",
        str(saved_tiny_model),
        "--benchmark",
        "arithmetic:n=4",
        "--methods",
        "greedy,sc:2",
        "sample",
        "--seeds",
        "2",
        "--max-new-tokens",
        "3",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| method | arithmetic:n=4 |" in printed and "| sc:2 |" in printed and "AUROC" in printed
    assert len(read_records(out / "items.jsonl")) == 4 * (1 + 2 + 2)
    assert (out / "accuracy_vs_flops.png").is_file()
    assert main(argv) == 0  # resumed: nothing to do, same table
    assert len(read_records(out / "items.jsonl")) == 20


def test_cli_reports_bad_specs(tmp_path, capsys):
    assert main(["eval", "--benchmark", "gsm8k", "--out", str(tmp_path)]) == 2
    assert "Unknown benchmark 'gsm8k'" in capsys.readouterr().err
    assert main(["eval", "--benchmark", "arithmetic", "--methods", "greedy-sc", "--out", str(tmp_path)]) == 2
    assert "identical trajectories" in capsys.readouterr().err


def test_cli_defaults_out_to_a_new_printed_folder_and_max_new_tokens_to_the_benchmark(
    saved_tiny_model, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    argv = ["eval", "--model", str(saved_tiny_model), "--benchmark", "arithmetic:n=2", "--methods", "greedy"]
    assert main([*argv, "--no-progress", "--no-plot"]) == 0
    err = capsys.readouterr().err
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("eval-")
    assert f"--out runs/{runs[0].name}" in err
    assert "--max-new-tokens 32" in err  # arithmetic's budget
    config = json.loads((runs[0] / "config.json").read_text())
    assert config["max_new_tokens"] == 32


def test_cli_refuses_a_mismatched_resume_before_loading_the_model(
    saved_tiny_model, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "run"
    argv = ["eval", "--model", str(saved_tiny_model), "--benchmark", "arithmetic:n=2", "--methods", "greedy"]
    assert main([*argv, "--max-new-tokens", "3", "--out", str(out), "--no-progress", "--no-plot"]) == 0
    capsys.readouterr()

    def no_loading(*args, **kwargs):
        raise AssertionError("the model must not be loaded before the settings check")

    monkeypatch.setattr("em_hf.models.load_model", no_loading)
    assert main([*argv, "--max-new-tokens", "4", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "max_new_tokens" in err and "(3, 4)" in err


def test_every_option_of_every_subcommand_shows_its_default(capsys):
    import argparse

    from em_hf.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            if not action.option_strings or action.nargs == 0 or action.required:
                continue  # positionals, flags (store_true, --help) and required options
            if "default" not in (action.help or ""):
                missing.append(f"{name} {action.option_strings[0]}")
    assert not missing, f"options whose --help shows no default: {missing}"
