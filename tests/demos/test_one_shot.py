"""The one-shot EM stage of `em-hf demo` on a tiny model: selection, training, before/after."""

from __future__ import annotations

import pytest

from em_hf.cli import main
from em_hf.data.arithmetic import make_arithmetic_problems
from em_hf.demos.one_shot import format_one_shot_report, run_one_shot_demo, select_one_shot_prompt
from tests.helpers import make_tiny_llama, make_word_tokenizer


def test_candidates_exclude_the_evaluation_items():
    ranked = select_one_shot_prompt(
        make_tiny_llama(sharpen=4.0),
        make_word_tokenizer(),
        num_candidates=6,
        k=2,
        exclude_items=40,
        max_new_tokens=2,
        progress=False,
    )
    evaluation = {p.prompt for p in make_arithmetic_problems(40, seed=0)}
    assert len(ranked) == 6
    assert all(row.prompt[-1]["content"] not in evaluation for row in ranked)
    assert [r.variance for r in ranked] == sorted((r.variance for r in ranked), reverse=True)


def test_run_one_shot_demo_trains_and_reports():
    model = make_tiny_llama(sharpen=4.0)
    before_weights = model.lm_head.weight.detach().clone()
    result = run_one_shot_demo(
        model,
        make_word_tokenizer(),
        steps=2,
        samples_per_step=4,
        micro_batch=2,
        max_completion_length=4,
        num_candidates=3,
        k=2,
        eval_items=3,
        eval_methods=("greedy", "sample:t=0.5"),
        seeds=(0, 1),
        eval_every=1,
        max_new_tokens=3,
        batch_size=8,
        progress=False,
    )
    assert result.selected == result.candidates[0]
    assert [s.method for s in result.before] == [s.method for s in result.after] == ["greedy", "sample:t=0.5"]
    assert [s.n_seeds for s in result.after] == [1, 2]
    assert [r.step for r in result.during] == [1, 2]
    assert [e["step"] for e in result.train_log] == [1, 2]
    assert not model.lm_head.weight.detach().equal(before_weights)  # trained in place
    assert result.peak_rss_mib > 0 and result.train_seconds > 0
    report = format_one_shot_report(result)
    assert "| greedy |" in report and "| sample:t=0.5 |" in report
    assert report.count("\n| 1 |") == 1 and report.count("\n| 2 |") == 1
    with pytest.raises(ValueError, match="multiple of `micro_batch`"):
        run_one_shot_demo(model, make_word_tokenizer(), samples_per_step=5, micro_batch=2)


def test_cli_demo_with_the_training_stage(tmp_path, capsys):
    folder = tmp_path / "tiny"
    make_tiny_llama(sharpen=4.0).save_pretrained(folder)
    make_word_tokenizer().save_pretrained(folder)
    argv = ["demo", "--model", str(folder), "--methods", "greedy", "--items", "3", "--seeds", "1"]
    argv += ["--max-new-tokens", "3", "--one-shot-steps", "1", "--one-shot-samples", "2"]
    assert main([*argv, "--one-shot-max-tokens", "3", "--one-shot-eval-every", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "One-shot EM on" in out
    assert "| method | accuracy before | accuracy after |" in out
    assert "| step | loss (entropy at T=0.5) |" in out
